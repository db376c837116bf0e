"""What the loop runs on and in what order: accelerator, seeding, optimizer, schedule, data order.

Also gradient checkpointing and the run's length.

Each is a plain function of the recipe's `train` section, so the loop's setup reads as a list of
calls and each piece can be tested (and reused by the planner) alone. Torch is imported lazily.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from adapterkit.errors import TrainingError
from adapterkit.strategy import trainable_named_parameters

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from adapterkit.training.config import TrainConfig
    from adapterkit.training.inputs import TrainData


def make_accelerator(precision: str) -> Accelerator:
    """A single-process accelerator: bf16 or fp16 (loss-scaled) autocast, or fp32, on the GPU
    when there is one; `auto` as `precision.resolve_precision` decides."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from adapterkit.training.precision import resolve_precision

    cuda = torch.cuda.is_available()
    resolved = resolve_precision(precision)
    mixed = "no" if resolved == "fp32" else resolved
    try:
        return Accelerator(mixed_precision=mixed, cpu=not cuda)
    except ValueError:
        # accelerate keeps one process-wide state; a second fit() in the same process with another
        # precision (tests, notebooks) needs it cleared. Single process, so nothing else shares it.
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed, cpu=not cuda)


def seed(value: int) -> None:
    """Seed python, numpy and torch (every device)."""
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward; a TrainingError when the model cannot.

    Non-reentrant checkpointing (transformers' default), so frozen embeddings need no trick;
    peft wrappers forward the call to the underlying transformers model.
    """
    names = ("activation_checkpointing_enable", "gradient_checkpointing_enable")  # 5, then 4
    enable = next((getattr(model, n) for n in names if hasattr(model, n)), None)
    if enable is None:
        raise TrainingError(
            f"{type(model).__name__} cannot recompute activations (no {names[1]}); "
            "set train.gradient_checkpointing=false"
        )
    try:
        enable()
    except ValueError as exc:  # "X does not support activation checkpointing"
        raise TrainingError(f"{exc}; set train.gradient_checkpointing=false") from exc


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes every one of `params` (device type and dtype)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without fused optimizers
        return False
    devices = set(_get_fused_kernels_supported_devices())
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over exactly the trainable parameters; no weight decay on vectors (biases, norm
    scales), as usual.

    The fused kernel (one pass over each parameter's state; CPU and GPU) where torch has it for
    the parameters' devices and dtypes, else the default implementation: the same update up to
    AdamW's own rounding.
    """
    import torch

    named = list(trainable_named_parameters(model))
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    fused = fused_adamw_supported([p for _, p in named]) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0, then linear decay to 0, half a cosine to 0, or constant.

    The same curves as transformers' schedulers, on torch's LambdaLR: importing those would pull
    in peft and bitsandbytes (seconds) for strategies that use neither.
    """
    import torch

    warmup = cfg.warmup
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / decay)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class RunLength:
    """How long a run is, in batches and optimizer steps (one step = `grad_accum` batches)."""

    n_batches: int  # batches in one pass over the training examples
    steps_per_epoch: int
    total_steps: int  # `max_steps`, or `epochs` passes rounded up, at least 1

    @classmethod
    def of(cls, n_examples: int, cfg: TrainConfig) -> RunLength:
        n_batches = math.ceil(n_examples / cfg.batch_size)
        steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        return cls(n_batches, steps_per_epoch, total)


class Window(NamedTuple):
    """One optimizer step's batches, as example indices, and where they sit in the data order."""

    epoch: int
    first: int  # index of the window's first batch in its epoch
    batches: list[list[int]]


def grouping_lengths(data: TrainData, cfg: TrainConfig) -> list[int] | None:
    """Example lengths for length-grouped batches; None when grouping is off, or the task packs a
    step's rows into one sequence (`Task.packs`) and so pads nothing."""
    from adapterkit.task import packs

    if not cfg.group_by_length or packs(data.task, data.task_options):
        return None
    if not all("input_ids" in example for example in data.train):
        return None
    return [len(example["input_ids"]) for example in data.train]


MEGA_WINDOWS = 50
"""Optimizer steps whose examples `group_by_length` sorts together (HF's mega-batch idea)."""


def data_windows(
    n: int,
    cfg: TrainConfig,
    epoch: int = 0,
    next_batch: int = 0,
    lengths: Sequence[int] | None = None,
) -> Iterator[Window]:
    """Forever: the next optimizer step's window of batches.

    Each epoch is a fresh shuffle seeded by seed + epoch, so the order is reproducible from the
    data position alone: a resume starts at (`epoch`, `next_batch`). A window (one optimizer step)
    never spans two epochs. With `lengths` (one per example), the shuffled order is length-grouped
    first (`grouped_order`).
    """
    import torch

    while True:
        generator = torch.Generator().manual_seed(cfg.seed + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        if lengths is not None:
            order = grouped_order(order, lengths, cfg.batch_size * cfg.grad_accum, generator)
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for start in range(next_batch, len(batches), cfg.grad_accum):
            yield Window(epoch, start, batches[start : start + cfg.grad_accum])
        epoch, next_batch = epoch + 1, 0


def grouped_order(
    order: list[int], lengths: Sequence[int], window: int, generator: torch.Generator
) -> list[int]:
    """`order` regrouped so each optimizer step's `window` examples have similar lengths.

    Within each run of MEGA_WINDOWS windows the examples are sorted by length (longest first,
    ties in shuffled order), cut into windows, and the full windows of the whole epoch are
    shuffled with `generator`; a short last window stays last. The result depends only on
    (seed, epoch, lengths), so a resume replays it, and grouping by whole windows keeps the same
    examples per step for any batch_size x grad_accum with the same product.
    """
    import torch

    mega = window * MEGA_WINDOWS
    regrouped: list[int] = []
    for i in range(0, len(order), mega):
        regrouped += sorted(order[i : i + mega], key=lambda j: -lengths[j])
    full = len(regrouped) // window
    windows = [regrouped[w * window : (w + 1) * window] for w in range(full)]
    shuffled = [windows[w] for w in torch.randperm(full, generator=generator).tolist()]
    return [j for w in shuffled for j in w] + regrouped[full * window :]
