"""Full fine-tuning: every parameter of the model trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from adapterkit.strategy import (
    ModelParts,
    load_trainable_tensors,
    trainable_state_dict,
    unfreeze,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class FullOptions:
    """Full fine-tuning has no options of its own (learning rate etc. belong to `train`)."""


class Full:
    """Train every parameter; the adapter is the whole model (each tied tensor once).

    The baseline the other strategies are measured against: most memory (weights, gradients and
    two AdamW moments for every parameter), no approximation.
    """

    name: ClassVar[str] = "full"
    description: ClassVar[str] = (
        "Full fine-tuning: every parameter trains; the adapter holds the whole model "
        "(tied embeddings once). Most memory, no approximation."
    )
    Options: ClassVar[type] = FullOptions

    def load_kwargs(self, options: FullOptions, parts: ModelParts) -> dict[str, Any]:
        return {}

    def apply(self, model: nn.Module, options: FullOptions, parts: ModelParts) -> nn.Module:
        unfreeze(model)
        return model

    def adapter_state_dict(self, model: nn.Module, options: FullOptions) -> dict[str, torch.Tensor]:
        return trainable_state_dict(model)

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: FullOptions
    ) -> None:
        load_trainable_tensors(model, tensors)
