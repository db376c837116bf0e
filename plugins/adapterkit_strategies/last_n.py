"""The last N transformer blocks (plus the final norm, and the head when asked) train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from adapterkit.errors import RecipeError
from adapterkit.strategy import (
    ModelParts,
    final_norm,
    find_blocks,
    freeze,
    load_trainable_tensors,
    submodule,
    trainable_state_dict,
    unfreeze,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class LastNOptions:
    n: Annotated[int, Field(ge=1, description="how many of the last blocks train")] = 2
    train_head: Annotated[
        bool | None,
        Field(description="train the head too; default: only when the task adds a new head"),
    ] = None


class LastN:
    """Train the last `n` transformer blocks, the norm after them, and optionally the head.

    Blocks are found generically (`find_blocks`: the longest list of same-class modules), so this
    works for Llama, BERT, GPT-2 and others without naming their attributes. The final norm trains
    with the blocks because it rescales exactly their output. The head follows `train_head`; by
    default it trains only when the task adds a new one (which would otherwise stay random). With
    tied embeddings a trained LM head moves the input embeddings too (see `head`).
    """

    name: ClassVar[str] = "last_n"
    description: ClassVar[str] = (
        "The last n transformer blocks and the final norm train (the head too when new, or when "
        "train_head=true); everything before them is frozen."
    )
    Options: ClassVar[type] = LastNOptions

    def load_kwargs(self, options: LastNOptions, parts: ModelParts) -> dict[str, Any]:
        return {}

    def apply(self, model: nn.Module, options: LastNOptions, parts: ModelParts) -> nn.Module:
        blocks_name, blocks = find_blocks(model)
        if options.n > len(blocks):
            raise RecipeError(
                source="strategy.options.n",
                problems=[
                    f"strategy.options.n: {options.n} is more than the {len(blocks)} blocks of "
                    f"this model ({blocks_name}); use n <= {len(blocks)}, or strategy=full"
                ],
            )
        freeze(model)
        for block in blocks[-options.n :]:
            unfreeze(block)
        norm = final_norm(model, blocks_name)
        if norm is not None:
            unfreeze(norm)
        train_head = parts.new_head if options.train_head is None else options.train_head
        if train_head:
            for name in parts.head:
                unfreeze(submodule(model, name))
        return model

    def adapter_state_dict(
        self, model: nn.Module, options: LastNOptions
    ) -> dict[str, torch.Tensor]:
        return trainable_state_dict(model)

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: LastNOptions
    ) -> None:
        load_trainable_tensors(model, tensors)
