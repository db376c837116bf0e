"""IA3 for adapterkit: learned vectors rescale a frozen model's keys, values and feed-forward inputs.

(IA)^3, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al., 2022), through
peft. Far fewer weights train than with LoRA (SmolLM2-135M: 57,600, 0.04%). The adapter directory
is a peft adapter too: `peft.PeftModel.from_pretrained(base, run_dir)` loads it.

Written against adapterkit's public API only (adapterkit.strategy, adapterkit.errors, hookimpl),
as any third-party plugin would be. peft and torch are imported inside the methods, so
`adapterkit strategies` stays instant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from adapterkit import hookimpl
from adapterkit.errors import AdapterError, RecipeError
from adapterkit.strategy import ModelParts

if TYPE_CHECKING:
    import torch
    from torch import nn

__version__ = "0.1.0"
PEFT_CONFIG_FILE = "adapter_config.json"


@dataclass
class Ia3Options:
    target_modules: Annotated[
        list[str] | None,
        Field(
            description="module names (or name suffixes) whose activations are rescaled; default: "
            "peft's choice for the architecture (Llama: k_proj, v_proj, down_proj)"
        ),
    ] = None
    feedforward_modules: Annotated[
        list[str] | None,
        Field(
            description="those of target_modules that are feed-forward layers (their input is "
            "rescaled, not their output); default: peft's choice, none with target_modules"
        ),
    ] = None


def _head_pattern(head: tuple[str, ...]) -> str | None:
    """A regex peft matches against module names: each head module and everything under it."""
    if not head:
        return None
    return "(?:" + "|".join(re.escape(h) for h in head) + r")(?:\..+)?"


def ia3_config(options: Ia3Options, parts: ModelParts) -> Any:
    """peft's IA3Config: the head is never rescaled; a new head (a classifier) trains whole."""
    from peft import IA3Config

    feedforward = options.feedforward_modules
    if feedforward is None and options.target_modules is not None:
        feedforward = []  # peft's default would name modules the user's targets may lack
    return IA3Config(
        target_modules=options.target_modules,
        feedforward_modules=feedforward,
        exclude_modules=_head_pattern(parts.head),
        modules_to_save=list(parts.head) if parts.new_head else None,
    )


class Ia3:
    """peft IA3 on a frozen base; a new task head trains whole (peft's `modules_to_save`)."""

    name: ClassVar[str] = "ia3"
    description: ClassVar[str] = (
        "IA3 (peft): learned vectors rescale the keys, values and feed-forward activations of a "
        "frozen base; a new head trains whole. Saves a peft-compatible adapter."
    )
    Options: ClassVar[type] = Ia3Options

    def load_kwargs(self, options: Ia3Options, parts: ModelParts) -> dict[str, Any]:
        return {}

    def apply(self, model: nn.Module, options: Ia3Options, parts: ModelParts) -> nn.Module:
        from peft import get_peft_model

        try:
            return get_peft_model(model, ia3_config(options, parts))
        except ValueError as exc:  # e.g. an architecture peft has no default targets for
            raise RecipeError(
                "strategy.options",
                [f"strategy.options: IA3 cannot adapt {type(model).__name__}: {exc}; "
                 "set strategy.options.target_modules (and feedforward_modules)"],
            ) from exc  # fmt: skip

    def adapter_state_dict(self, model: nn.Module, options: Ia3Options) -> dict[str, torch.Tensor]:
        """peft's own key format; the tensors share storage with the trainable parameters."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model, save_embedding_layers=False)

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: Ia3Options
    ) -> None:
        """Load tensors saved by `adapter_state_dict`; names and shapes must match exactly."""
        from peft import set_peft_model_state_dict

        expected = self.adapter_state_dict(model, options)
        missing, stray = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        shapes = [
            f"{k}: {tuple(tensors[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in tensors and tensors[k].shape != v.shape
        ]
        if missing or stray or shapes:
            raise AdapterError(
                "IA3 adapter does not fit this model and options "
                f"(missing: {missing[:5]}; unexpected: {stray[:5]}; shapes: {shapes[:5]}); "
                "check strategy.options (target_modules) and the base model"
            )
        set_peft_model_state_dict(model, tensors)

    def extra_files(self, model: nn.Module, options: Ia3Options) -> dict[str, bytes]:
        """`adapter_config.json` as `PeftModel.save_pretrained` writes it (sets as sorted lists)."""
        peft_model: Any = model  # a peft.PeftModel, as `apply` returned it
        config = peft_model.peft_config["default"].to_dict()
        for key, value in config.items():
            if isinstance(value, set):
                config[key] = sorted(value)
        config["inference_mode"] = True
        return {PEFT_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode()}


@hookimpl
def register_strategies(register: Callable[[type[Any]], None]) -> None:
    register(Ia3)
