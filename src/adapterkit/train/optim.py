"""What the loop runs on and in what order: accelerator, seeding, optimizer, schedule, data order.

Also gradient checkpointing and the run's length.

Each is a plain function of the recipe's `train` section, so the loop's setup reads as a list of
calls and each piece can be tested (and reused by the planner) alone. Torch is imported lazily.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from adapterkit.errors import TrainingError
from adapterkit.strategy import trainable_named_parameters

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from adapterkit.train.config import TrainConfig


def make_accelerator(precision: str) -> Accelerator:
    """A single-process accelerator: bf16 autocast or fp32, on the GPU when there is one."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    mixed = "bf16" if precision == "bf16" else "no"
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


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over exactly the trainable parameters; no weight decay on vectors (biases, norm
    scales), as usual."""
    import torch

    named = list(trainable_named_parameters(model))
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr)


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


def data_windows(n: int, cfg: TrainConfig, epoch: int = 0, next_batch: int = 0) -> Iterator[Window]:
    """Forever: the next optimizer step's window of batches.

    Each epoch is a fresh shuffle seeded by seed + epoch, so the order is reproducible from the
    data position alone: a resume starts at (`epoch`, `next_batch`). A window (one optimizer step)
    never spans two epochs.
    """
    import torch

    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        order = order.tolist()
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for start in range(next_batch, len(batches), cfg.grad_accum):
            yield Window(epoch, start, batches[start : start + cfg.grad_accum])
        epoch, next_batch = epoch + 1, 0
