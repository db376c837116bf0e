"""QLoRA: LoRA on a base whose linear layers are stored as NF4 4-bit (bitsandbytes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast

from pydantic import Field

from adapterkit.errors import AdapterError, ModelError
from adapterkit.strategy import ModelParts, is_4bit

from ._peft import (
    LoraOptions,
    load_lora_state_dict,
    lora_state_dict,
    peft_config_file,
    wrap_lora,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

_CPU_PACKING = "support_avx512bf16_for_cpu"
"""The `Linear4bit` attribute that switches its in-place CPU repacking on (bitsandbytes 0.50)."""


def disable_cpu_4bit_packing(model: nn.Module) -> int:
    """Keep bitsandbytes' CPU inference repacking off every 4-bit layer; returns how many.

    On CPUs with AVX512-BF16, `Linear4bit.forward` in eval mode rewrites the weight in place into
    a packed layout for a bf16 inference kernel. That path (bitsandbytes 0.50) (1) crashes for
    layers whose input size is not a multiple of the 64-weight quantization block, (2) breaks
    training after an evaluation pass (the next training forward runs the inference kernel and
    fails on the bias, or loses gradients), and (3) evaluates in other precision than training.
    Training and evaluation then use one code path; CPU inference is somewhat slower.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, _CPU_PACKING):
            # setattr: torch types Module.__setattr__'s value as Tensor | Module only
            setattr(module, _CPU_PACKING, False)
            count += 1
    return count


@dataclass
class QloraOptions(LoraOptions):
    """LoRA's options, and the dtype the 4-bit layers compute in."""

    compute_dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"],
        Field(
            description="dtype the 4-bit layers compute in; auto: the base's dtype (bfloat16 "
            "when the run trains in bf16, float32 when it trains in fp32)"
        ),
    ] = "auto"


def set_4bit_compute_dtype(model: nn.Module, dtype: torch.dtype) -> int:
    """Make every 4-bit layer compute in `dtype` (bitsandbytes' `compute_dtype`); returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, _CPU_PACKING):
            setattr(module, "compute_dtype", dtype)  # noqa: B010 -- see disable_cpu_4bit_packing
            setattr(module, "compute_type_is_set", True)  # noqa: B010
            count += 1
    return count


def _plain_linear(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A float32 `nn.Linear` holding `weight` and `layer`'s bias, frozen, on `weight`'s device."""
    import torch
    from torch import nn

    bias = getattr(layer, "bias", None)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias.float())
    return out.requires_grad_(False)


def dequantized(layer: Any) -> torch.Tensor:
    """A 4-bit linear layer's weight as the float32 values it computes with (bitsandbytes'
    `dequantize_4bit` of its NF4 blocks)."""
    import bitsandbytes.functional as bnb_functional

    weight = layer.weight
    return bnb_functional.dequantize_4bit(weight.data, weight.quant_state).float()


def _lora_merged(layer: Any) -> torch.Tensor:
    """The dequantized base weight of a peft LoRA layer over a 4-bit linear plus its active
    adapters' updates (DoRA through peft's own variant), as float32."""
    weight = dequantized(layer.get_base_layer())
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if adapter in layer.lora_variant:
            weight = layer.lora_variant[adapter].merge_safe(layer, adapter, weight).float()
        else:
            weight = weight + layer.get_delta_weight(adapter).float()
    return weight


def _four_bit_layer(module: Any) -> str | None:
    """ "lora" for a peft LoRA layer over a 4-bit linear, "plain" for a 4-bit linear, else None."""
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        base: Any = module.get_base_layer()
        return "lora" if is_4bit(base.weight) else None
    weight = getattr(module, "weight", None)
    return "plain" if weight is not None and is_4bit(weight) else None


def dequantize_and_merge(model: nn.Module) -> int:
    """Replace every 4-bit linear layer of `model` by a float32 `nn.Linear`: a LoRA layer over
    one holds the dequantized weight plus the LoRA update, any other the dequantized weight.
    Returns how many layers were replaced; an update that is not finite is an AdapterError."""
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(done + ".") for done in replaced):
            continue  # inside a layer already replaced (a LoRA layer's base layer)
        kind = _four_bit_layer(module)
        if kind is None:
            continue
        layer: Any = module
        if kind == "lora" and any(layer.lora_bias.values()):
            raise AdapterError(f"{name}: merging a LoRA bias into a 4-bit layer is not supported")
        base = layer.get_base_layer() if kind == "lora" else layer
        weight = _lora_merged(layer) if kind == "lora" else dequantized(layer)
        if not bool(weight.isfinite().all()):
            raise AdapterError(f"{name}: the merged weight is not finite; the adapter is broken")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _plain_linear(base, weight))
        replaced.append(name)
    return len(replaced)


class Qlora:
    """LoRA over an NF4 (4-bit, double-quantized) base model.

    `load_kwargs` asks `from_pretrained` to quantize every linear layer except the head modules, so
    a new classifier is never quantized (it trains whole, as in `lora`). `apply` runs peft's
    `prepare_model_for_kbit_training` without gradient checkpointing (that is the trainer's call):
    it freezes the base and casts non-4-bit half-precision weights (norms, embeddings) to float32.
    Then the same LoRA wrapping as `lora`, so the saved adapter is a peft adapter too; reload it on
    a base loaded with the same `load_kwargs`.

    `compute_dtype` defaults to `auto`: the dtype the rest of the base loaded in, so the compute
    dtype the run's precision chose (bf16 on a GPU or a CPU with AVX-512 BF16 or AMX, float32
    elsewhere), read before peft casts the non-4-bit weights to float32.
    """

    name: ClassVar[str] = "qlora"
    quantized_base: ClassVar[bool] = True
    description: ClassVar[str] = (
        "QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes; CPU works too); the head is never "
        "quantized. Least memory; saves a peft-compatible adapter."
    )
    Options: ClassVar[type] = QloraOptions

    def load_kwargs(self, options: QloraOptions, parts: ModelParts) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                # auto: float32 until `apply` sees the dtype the base loaded in
                bnb_4bit_compute_dtype=getattr(
                    torch, options.compute_dtype.replace("auto", "float32")
                ),
                llm_int8_skip_modules=list(parts.head),
            )
        }

    def apply(self, model: nn.Module, options: QloraOptions, parts: ModelParts) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        if not getattr(model, "is_loaded_in_4bit", False):
            raise ModelError(
                "strategy qlora needs the model loaded in 4 bits, with the strategy's load_kwargs "
                "passed to from_pretrained (a GGUF file cannot be quantized while loading: "
                "convert it to a safetensors directory first), or use strategy=lora"
            )
        # the dtype the non-4-bit weights loaded in, before peft casts them to float32
        base_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        disable_cpu_4bit_packing(model)
        if options.compute_dtype == "auto":
            set_4bit_compute_dtype(model, base_dtype)
        return wrap_lora(model, options, parts)

    def plan_apply(self, model: nn.Module, options: QloraOptions, parts: ModelParts) -> nn.Module:
        """On a meta-device model (never 4-bit), the trainable set is LoRA's on the same base:
        `prepare_model_for_kbit_training` only freezes and casts, so the wrapping `apply` ends with
        is applied directly."""
        return wrap_lora(model, options, parts)

    def adapter_state_dict(
        self, model: nn.Module, options: QloraOptions
    ) -> dict[str, torch.Tensor]:
        return lora_state_dict(model)

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: QloraOptions
    ) -> None:
        load_lora_state_dict(model, tensors)

    def extra_files(self, model: nn.Module, options: QloraOptions) -> dict[str, bytes]:
        return peft_config_file(model)

    def merge(self, model: nn.Module, options: QloraOptions) -> nn.Module:
        """The LoRA update merged into the *dequantized* NF4 weights, as float32 linear layers:
        the merged model computes what base + adapter computed. peft's own 4-bit merge would
        quantize the sum again, and merging into the original weights instead adds the
        quantization error (peft#2502); `adapterkit merge --base original` does that on purpose,
        building the unquantized base through `plan_apply`, where this finds no 4-bit layer."""
        dequantize_and_merge(model)
        return cast(Any, model).merge_and_unload(safe_merge=True)
