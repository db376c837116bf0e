"""LayerNorm tuning (Zhao et al., 2023): freeze everything but the normalisation layers' weights.

Written against adapterkit's public API only, exactly as a third party would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from adapterkit import hookimpl
from adapterkit.strategy import (
    ModelParts,
    freeze,
    load_trainable_tensors,
    trainable_state_dict,
    unfreeze,
)


@dataclass
class NormsOptions:
    train_head: Annotated[bool, Field(description="also train the task head")] = False


class Norms:
    name = "norms"
    description = "Train only the normalisation layers (LayerNorm/RMSNorm) weights."
    Options = NormsOptions

    def load_kwargs(self, options: NormsOptions, parts: ModelParts) -> dict[str, Any]:
        return {}

    def apply(self, model: Any, options: NormsOptions, parts: ModelParts) -> Any:
        freeze(model)
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                unfreeze(module)
        if options.train_head or parts.new_head:
            for name in parts.head:
                unfreeze(model.get_submodule(name))
        return model

    def adapter_state_dict(self, model: Any, options: NormsOptions) -> dict[str, Any]:
        return trainable_state_dict(model)

    def load_adapter_state_dict(self, model: Any, tensors: dict, options: NormsOptions) -> None:
        # Refuses a missing tensor as well as a stray one: a partial load would leave some norms
        # at their base weights unnoticed (adapterkit.testing.check_strategy checks this).
        load_trainable_tensors(model, tensors)


@hookimpl
def register_strategies(register: Any) -> None:
    register(Norms)
