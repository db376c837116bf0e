"""LoRA: low-rank updates on the linear layers of a frozen base, in peft's adapter format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from adapterkit.strategy import ModelParts

from ._peft import LoraOptions, load_lora_state_dict, lora_state_dict, peft_config_file, wrap_lora

if TYPE_CHECKING:
    import torch
    from torch import nn


class Lora:
    """peft LoRA on every linear layer except the head (or on `target_modules`).

    A new head (classification) trains in full through peft's `modules_to_save` and is saved with
    the adapter. The adapter directory is a valid peft adapter: `adapter_model.safetensors` in
    peft's key format plus `adapter_config.json`, loadable with `PeftModel.from_pretrained`.
    """

    name: ClassVar[str] = "lora"
    description: ClassVar[str] = (
        "LoRA (peft): low-rank updates on all linear layers except the head; a new head trains "
        "whole. Saves a peft-compatible adapter."
    )
    Options: ClassVar[type] = LoraOptions

    def load_kwargs(self, options: LoraOptions, parts: ModelParts) -> dict[str, Any]:
        return {}

    def apply(self, model: nn.Module, options: LoraOptions, parts: ModelParts) -> nn.Module:
        return wrap_lora(model, options, parts)

    def adapter_state_dict(self, model: nn.Module, options: LoraOptions) -> dict[str, torch.Tensor]:
        return lora_state_dict(model)

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: LoraOptions
    ) -> None:
        load_lora_state_dict(model, tensors)

    def extra_files(self, model: nn.Module, options: LoraOptions) -> dict[str, bytes]:
        return peft_config_file(model)
