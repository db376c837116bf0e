"""LoRA through peft, shared by the `lora` and `qlora` strategies (QLoRA is LoRA on a 4-bit base).

Everything a LoRA adapter is made of lives here once: the options, the peft config, the wrapping,
peft's own state-dict format, and the `adapter_config.json` that lets plain
`peft.PeftModel.from_pretrained(base, adapter_dir)` load what adapterkit saved.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from adapterkit.errors import AdapterError
from adapterkit.strategy import ModelParts

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from torch import nn

PEFT_CONFIG_FILE = "adapter_config.json"


@dataclass
class LoraOptions:
    """The LoRA options; QLoRA's Options extend these fields (data only, no behaviour)."""

    r: Annotated[int, Field(ge=1, description="LoRA rank (size of the low-rank update)")] = 8
    alpha: Annotated[
        float, Field(gt=0, description="LoRA scaling numerator: the update is scaled by alpha/r")
    ] = 16.0
    dropout: Annotated[
        float, Field(ge=0, lt=1, description="dropout on the LoRA input during training")
    ] = 0.05
    target_modules: Annotated[
        list[str] | None,
        Field(
            description="module names (or name suffixes) to adapt; default: every linear layer "
            "except the head"
        ),
    ] = None
    use_rslora: Annotated[
        bool, Field(description="rank-stabilised scaling alpha/sqrt(r) instead of alpha/r")
    ] = False
    use_dora: Annotated[
        bool, Field(description="DoRA: also learn a magnitude vector per adapted layer")
    ] = False


def _head_pattern(head: tuple[str, ...]) -> str | None:
    """A regex peft matches (fullmatch) against module names: each head module and its children.

    A plain list would only match names ending in a head name, missing e.g. `bert.pooler.dense`
    under a head `bert.pooler`.
    """
    if not head:
        return None
    return "(?:" + "|".join(re.escape(h) for h in head) + r")(?:\..+)?"


def lora_config(options: LoraOptions, parts: ModelParts) -> LoraConfig:
    """The peft LoraConfig for `options`: LoRA never adapts a head module; a new head trains whole.

    `target_modules=None` means peft's "all-linear", which already leaves out a causal LM's output
    layer; the head is excluded explicitly as well so a new classifier (which peft only recognises
    for some task types) is trained as a whole through `modules_to_save` rather than adapted.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        # peft annotates lora_alpha as int, but computes scaling = alpha / r from any number
        lora_alpha=options.alpha,  # pyright: ignore[reportArgumentType]
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules) if options.target_modules else "all-linear",
        exclude_modules=_head_pattern(parts.head),
        modules_to_save=list(parts.head) if parts.new_head else None,
        use_rslora=options.use_rslora,
        use_dora=options.use_dora,
    )


def wrap_lora(model: nn.Module, options: LoraOptions, parts: ModelParts) -> nn.Module:
    """Inject LoRA layers; returns the PeftModel whose only trainable tensors are the adapter's.

    peft freezes the base and leaves `requires_grad` on the LoRA matrices (and DoRA magnitudes) and
    on the trainable copy of each `modules_to_save` head.
    """
    from peft import get_peft_model

    from ._fused_lora import install

    wrapped = get_peft_model(model, lora_config(options, parts))
    install(wrapped)  # training steps take one fused Function per LoRA linear (see its module)
    return wrapped


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """peft's own adapter format (`adapter_model.safetensors` keys), sharing storage with the
    trainable parameters.

    `save_embedding_layers=False`: embeddings are never LoRA targets here, and peft's "auto" would
    look the base model up on the Hub to see whether the vocabulary was resized.
    """
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, save_embedding_layers=False)


def load_lora_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load peft-format `tensors` into a model wrapped by `wrap_lora` with the same options.

    The names and shapes must match the adapter this model would save exactly; a partial load
    would leave LoRA matrices at their initialisation and go unnoticed.
    """
    from peft import set_peft_model_state_dict

    expected = lora_state_dict(model)
    missing, stray = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad_shape = [
        f"{k}: {tuple(tensors[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or stray or bad_shape:
        raise AdapterError(
            "LoRA adapter does not fit this model and options "
            f"(missing: {missing[:5]}; unexpected: {stray[:5]}; shapes: {bad_shape[:5]}); "
            "check strategy.options (r, target_modules) and the base model"
        )
    result = set_peft_model_state_dict(model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise AdapterError(f"peft did not use adapter tensors: {unexpected[:5]}")


def peft_config_file(model: nn.Module) -> dict[str, bytes]:
    """`adapter_config.json` exactly as `PeftModel.save_pretrained` writes it.

    Sets become sorted lists (JSON has no sets; sorted so equal configs give equal files), and
    `inference_mode` is true, as peft saves it.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"expected the PeftModel wrap_lora returns, got {type(model).__name__}")
    config = model.peft_config["default"].to_dict()
    for key, value in config.items():
        if isinstance(value, set):
            config[key] = sorted(value)
    config["inference_mode"] = True
    return {PEFT_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode()}
