"""Weights and trainable parameters for the memory plan, from a model built on the meta device.

A meta-device model has every parameter's shape and dtype but no storage, so an 8B model costs
nothing to build. The task builds it (`Task.meta_model`) and the strategy applies itself to it
(`Strategy.plan_apply`) exactly as to a real model (peft's LoRA injection works on meta tensors),
so the trainable set is the real one, not a formula, for any plugin.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from adapterkit.storage.sources import ModelSource

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


@contextlib.contextmanager
def planning_source(config_or_source: Any) -> Iterator[tuple[Any, ModelSource]]:
    """(config, ModelSource) from a config object, a config.json, a directory or a short name.

    The tasks find their head from a ModelSource (`Task.model_parts`), so a bare config object is
    written to a temporary directory for the plan's duration (a config is a few KiB).
    """
    from transformers import AutoConfig, PretrainedConfig

    from adapterkit.storage import sources

    if isinstance(config_or_source, PretrainedConfig):
        with tempfile.TemporaryDirectory(prefix="adapterkit-plan-") as tmp:
            config_or_source.save_pretrained(tmp)
            yield config_or_source, sources.ModelSource("config", Path(tmp), None)
        return
    path = Path(str(config_or_source)).expanduser()
    if path.is_file() and path.suffix == ".json":
        sources.set_offline()
        config = AutoConfig.from_pretrained(
            str(path.parent) if path.name == "config.json" else path
        )
        if path.name == "config.json":
            yield config, sources.ModelSource(str(path), path.parent, None)
            return
        with tempfile.TemporaryDirectory(prefix="adapterkit-plan-") as tmp:
            config.save_pretrained(tmp)
            yield config, sources.ModelSource(str(path), Path(tmp), None)
        return
    source = sources.resolve(str(config_or_source))
    yield sources.load_config(source), source


def base_model(model: nn.Module) -> PreTrainedModel:
    """The task's transformers model under a strategy's wrapper (peft's `get_base_model()`).

    `Task.meta_model` builds a transformers model class; the planner reads its members (the input
    and output embeddings, `config`), so it is typed as one.
    """
    unwrap = getattr(model, "get_base_model", None)
    return cast("PreTrainedModel", unwrap() if unwrap is not None else model)


def trainable_tensors(model: nn.Module) -> list[tuple[str, int, int]]:
    """(name, numel, bytes an element) of each trainable tensor, each storage once, as the
    trainer's AdamW sees it."""
    from adapterkit.strategy import trainable_named_parameters

    return [(n, p.numel(), p.element_size()) for n, p in trainable_named_parameters(model)]


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

    inner = base_model(model)
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
    inner = base_model(model)
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
            key = _dtype_key(p.dtype, quantized)
            detail[key] = detail.get(key, 0) + p.numel() * p.dtype.itemsize
    return {
        "total": sum(detail.values()),
        "detail": detail,
        "logical_params": total_params,
        "quantized_source_bytes": source,
    }


def _dtype_key(dtype: Any, quantized: bool) -> str:
    """The weights_detail key of an unquantized parameter: its dtype (fp32, bf16, fp16)."""
    name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch.")
    )
    if quantized and name == "fp32":
        return "kept fp32 (head, norms, embeddings, biases, adapters)"
    return f"kept {name}" if quantized else name
