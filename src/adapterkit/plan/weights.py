"""Weights and trainable parameters for the memory plan, from a model built on the meta device.

A meta-device model has every parameter's shape and dtype but no storage, so an 8B model costs
nothing to build. Strategies are applied to it exactly as to a real model (peft's LoRA injection
works on meta tensors), so the trainable set is the real one, not a formula.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.strategy import ModelParts

if TYPE_CHECKING:
    from torch import nn

NF4_BLOCK = 64
"""bitsandbytes `quantize_4bit` default block size: one absmax per 64 weights."""
NF4_DQ_BLOCK = 256
"""Double quantization quantizes the absmax values blockwise, 256 per block
(`quantize_blockwise(absmax - offset, blocksize=256)` in bitsandbytes.functional.quantize_4bit)."""
NF4_CODE_BYTES = 16 * 4
"""The NF4 code book kept in each layer's QuantState: 16 float32 values."""
NF4_OFFSET_BYTES = 4
"""The mean of the absmax values subtracted before double quantization: one float32 per layer."""
DQ_CODE_BYTES = 256 * 4
"""The 8-bit dynamic code book of the second-level state: 256 float32 values per layer."""


def load_config(config_or_source: Any) -> Any:
    """A transformers config from a config object, a config.json, a directory or a short name."""
    from transformers import AutoConfig, PretrainedConfig

    from adapterkit.storage import sources

    if isinstance(config_or_source, PretrainedConfig):
        return config_or_source
    path = Path(str(config_or_source)).expanduser()
    if path.is_file() and path.suffix == ".json":
        sources.set_offline()
        return AutoConfig.from_pretrained(str(path.parent) if path.name == "config.json" else path)
    source = sources.resolve(str(config_or_source))
    return sources.load_config(source)


_AUTO = {
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
}


def build_meta_model(config: Any, task_name: str, num_labels: int = 2) -> nn.Module:
    """The task's model class built from `config` on the meta device, in float32 (no weights)."""
    import copy

    import torch
    import transformers

    if task_name not in _AUTO:
        raise ValueError(f"no model class known for task {task_name!r}; known: {sorted(_AUTO)}")
    cfg = copy.deepcopy(config)
    if task_name != "causal_lm":
        cfg.num_labels = max(1, num_labels)
    with torch.device("meta"):
        return getattr(transformers, _AUTO[task_name]).from_config(cfg, dtype=torch.float32)


def model_parts(model: nn.Module, task_name: str) -> ModelParts:
    """The head as the task finds it (causal_lm.model_parts / _labelled.head_parts), on `model`."""
    if task_name == "causal_lm":
        head = model.get_output_embeddings()
        name = next(n for n, m in model.named_modules() if m is head and n)
        return ModelParts(head=(name,), new_head=False)
    base = getattr(model, model.base_model_prefix, None)
    names = [
        n for n, c in model.named_children() if c is not base and any(True for _ in c.parameters())
    ]
    pooler = getattr(base, "pooler", None)
    if pooler is not None and any(True for _ in pooler.parameters()):
        names.append(f"{model.base_model_prefix}.pooler")
    return ModelParts(head=tuple(names), new_head=True)


def strategy_model(model: nn.Module, strategy: Any, options: Any, parts: ModelParts) -> nn.Module:
    """`cls().apply` on the meta model. QLoRA's apply wants a 4-bit model; its trainable set is
    LoRA's on the same base (prepare_model_for_kbit_training only freezes and casts), so the
    LoRA wrapping it ends with is applied directly."""
    if getattr(strategy, "name", "") == "qlora":
        from adapterkit_strategies._peft import wrap_lora

        return wrap_lora(model, options, parts)
    return strategy.apply(model, options, parts)


def trainable_tensors(model: nn.Module) -> list[tuple[str, int]]:
    """(name, numel) of each trainable tensor, each storage once, as the trainer's AdamW sees it."""
    from adapterkit.strategy import trainable_named_parameters

    return [(n, p.numel()) for n, p in trainable_named_parameters(model)]


def nf4_bytes(numel: int) -> dict[str, int]:
    """Storage of one NF4 double-quantized weight of `numel` values (bitsandbytes 0.4x-0.50).

    packed: two 4-bit values a byte (`(numel + 1) // 2` uint8); absmax: one per 64-weight block,
    stored as uint8 after double quantization; second level: one float32 absmax per 256 blocks, the
    256-entry float32 dynamic code book, the float32 offset; and the 16-entry NF4 code book.
    """
    blocks = math.ceil(numel / NF4_BLOCK)
    return {
        "nf4 packed": (numel + 1) // 2,
        "quant absmax/double-quant": blocks
        + math.ceil(blocks / NF4_DQ_BLOCK) * 4
        + DQ_CODE_BYTES
        + NF4_OFFSET_BYTES
        + NF4_CODE_BYTES,
    }


def quantized_linears(model: nn.Module, head: tuple[str, ...]) -> set[str]:
    """Names of the linear weights transformers' bitsandbytes integration turns into NF4: every
    nn.Linear except the skipped head modules (`llm_int8_skip_modules`) and the output embeddings."""
    from torch import nn

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out_emb = inner.get_output_embeddings()
    names = set()
    for name, mod in inner.named_modules():
        if not isinstance(mod, nn.Linear) or mod is out_emb or "lora_" in name:
            continue
        if any(name == h or name.startswith(h + ".") for h in head):
            continue
        if "modules_to_save" in name or "original_module" in name:
            continue
        names.add(name.removesuffix(".base_layer") + ".weight")
    return names


def _checkpoint_itemsize(config: Any) -> int:
    """Bytes an element of the checkpoint takes, from the config's `dtype` (`torch_dtype` in older
    configs); 4 (float32) when the config does not say."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 4


def weight_bytes(model: nn.Module, quantized: bool, head: tuple[str, ...]) -> dict[str, Any]:
    """Bytes of every parameter (tied ones once) and the logical parameter count.

    With `quantized`, the linear weights `quantized_linears` names are NF4 (`nf4_bytes`); the rest
    (embeddings, norms, biases, head, LoRA matrices) stay at their dtype. peft's trainable copy of
    a new head (`modules_to_save`) is a second tensor and counts too.
    """
    quant = quantized_linears(model, head) if quantized else set()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    detail: dict[str, int] = {}
    total_params = 0
    source = 0  # the quantized weights' bytes at the checkpoint's dtype (config; float32 if none)
    read_bytes = _checkpoint_itemsize(getattr(inner, "config", None))
    seen: set[int] = set()
    for name, p in inner.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total_params += p.numel()
        if name.replace(".base_layer", "") in quant:
            source += p.numel() * read_bytes
            for k, v in nf4_bytes(p.numel()).items():
                detail[k] = detail.get(k, 0) + v
        else:
            key = "kept fp32 (head, norms, embeddings, biases, adapters)" if quantized else "fp32"
            if p.dtype.itemsize != 4:
                key = f"kept {p.dtype}".replace("torch.", "")
            detail[key] = detail.get(key, 0) + p.numel() * p.dtype.itemsize
    return {
        "total": sum(detail.values()),
        "detail": detail,
        "logical_params": total_params,
        "quantized_source_bytes": source,
    }
