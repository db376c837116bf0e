"""Which arithmetic a run trains in, and which dtype its frozen base is stored in.

`precision: auto` means bf16 wherever the hardware multiplies bf16 natively: a CUDA GPU that
supports it, or a CPU with AVX-512 BF16 or AMX (about 4x the fp32 matmul peak); fp16 with loss
scaling on a CUDA GPU without bf16; fp32 elsewhere. With a half-precision compute dtype the frozen
base is stored in it (half the memory, no per-forward weight casts), while the trainable
parameters, and so the optimizer state, stay float32 master weights (`upcast_trainable`).
Torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adapterkit.errors import TrainingError

if TYPE_CHECKING:
    import torch
    from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]

AUTO_ENV = "ADAPTERKIT_AUTO_PRECISION"
"""Set to fp32, bf16 or fp16: what `precision: auto` means in this process (tests, CI)."""

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of a CPU with native bf16 matrix arithmetic (AVX-512 BF16, AMX)."""

HALF_DTYPES = ("bfloat16", "float16")

_COMPUTE_DTYPE: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cpu_has_bf16(flags: str) -> bool:
    """Whether a cpuinfo `flags` line (space-separated) names native bf16 arithmetic."""
    return not CPU_BF16_FLAGS.isdisjoint(flags.split())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first `flags` line of /proc/cpuinfo; empty where there is none (not Linux/x86)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return value
    return ""


def resolve_precision(requested: str) -> Precision:
    """`requested` ("auto", "fp32", "bf16" or "fp16") as the arithmetic this machine runs."""
    import torch

    cuda = torch.cuda.is_available()
    if requested == "fp16" and not cuda:
        raise TrainingError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32")
    if requested in ("fp32", "bf16", "fp16"):
        return requested  # type: ignore[return-value]
    pinned = os.environ.get(AUTO_ENV, "")
    if pinned:
        if pinned not in ("fp32", "bf16", "fp16"):
            raise TrainingError(f"{AUTO_ENV}={pinned!r}: expected fp32, bf16 or fp16")
        return resolve_precision(pinned)
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16(cpu_flags()) else "fp32"


def compute_dtype(precision: str) -> str:
    """The torch dtype name a resolved precision computes in ("float32", "bfloat16", "float16")."""
    return _COMPUTE_DTYPE[precision]


def upcast_trainable(model: nn.Module) -> int:
    """Cast the trainable floating-point parameters to float32 in place; returns how many.

    With a half-precision base, the parameters a strategy trains (LoRA matrices, a head, all of
    `full`) must be fp32 master weights: AdamW's updates are far below bf16's resolution. Only
    modules whose own parameters all train are cast: a module that mixes frozen and trained ones
    (a bias trained under a frozen weight) stays in one dtype, since kernels such as layer_norm
    take a single dtype for weight and bias even under autocast.
    """
    import torch

    count = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if not own or not all(p.requires_grad for p in own):
            continue
        for param in own:
            if param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()
                count += 1
    return count


def trained_mixed(base_dtype: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether an adapter of float32 `tensors` over a `base_dtype` base trained under autocast
    with fp32 master weights (so reloads upcast the trained set and run under autocast)."""
    import torch

    floats = [t for t in tensors.values() if t.is_floating_point()]
    return base_dtype in HALF_DTYPES and any(t.dtype == torch.float32 for t in floats)


def autocast(model: nn.Module, dtype: str | None) -> AbstractContextManager[object]:
    """Autocast in `dtype` ("bfloat16", "float16") on the model's device, as the trainer computes
    (accelerate's autocast is torch.autocast too); a no-op for None or "float32"."""
    import torch

    if dtype is None or dtype == "float32":
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def autocast_forward(model: nn.Module, dtype: str | None) -> None:
    """Run `model`'s forward under `autocast(model, dtype)` from now on (as accelerate's prepared
    models do), so a mixed model (fp32 trained weights over a half base) can be called as is."""
    import functools

    if dtype is None or dtype == "float32":
        return
    original = model.forward

    @functools.wraps(original)
    def forward(*args: object, **kwargs: object) -> object:
        with autocast(model, dtype):
            return original(*args, **kwargs)

    model.forward = forward  # pyright: ignore[reportAttributeAccessIssue]
