"""Frozen backbone, trained head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from adapterkit.strategy import (
    ModelParts,
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
class HeadOptions:
    """The head is chosen by the task (`parts.head`), so there is nothing to set here."""


class Head:
    """Freeze the backbone and train only the task's head modules (`parts.head`).

    Tied input/output embeddings (SmolLM2, many small LMs): the head of a causal LM *is* the input
    embedding matrix. We train the shared matrix rather than untying it: untying would add a second
    vocab x hidden matrix (49152 x 576 for SmolLM2, 28M weights plus their AdamW state) and the
    reloaded model would then differ from the base on the input side in a way nobody asked for. So
    with tied embeddings this strategy also moves the input embeddings, and the adapter stores that
    one tensor once, under its first name (`model.embed_tokens.weight` for Llama).
    """

    name: ClassVar[str] = "head"
    description: ClassVar[str] = (
        "Frozen backbone; only the task head trains (an LM head, or a new classifier). With tied "
        "input/output embeddings the shared matrix trains, stored once (not untied)."
    )
    Options: ClassVar[type] = HeadOptions

    def load_kwargs(self, options: HeadOptions, parts: ModelParts) -> dict[str, Any]:
        return {}

    def apply(self, model: nn.Module, options: HeadOptions, parts: ModelParts) -> nn.Module:
        freeze(model)
        for name in parts.head:
            unfreeze(submodule(model, name))
        return model

    def adapter_state_dict(self, model: nn.Module, options: HeadOptions) -> dict[str, torch.Tensor]:
        return trainable_state_dict(model)

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: HeadOptions
    ) -> None:
        load_trainable_tensors(model, tensors)
