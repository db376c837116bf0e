"""The arithmetic of one optimizer step: accumulated gradients, their norm, what it measured.

Gradients are accumulated over the step's micro-batches; the norm is clipped when the recipe says so.

The loop (trainer.py) calls these between its guards; they know a task only through the Task
protocol (`targets`, `loss`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import Tensor, nn

    from adapterkit.task import Task


def accumulate_gradients(
    model: nn.Module,
    task: Task,
    batches: list[dict[str, Tensor]],
    backward: Callable[[Tensor], None] | None = None,
    autocast: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    total: int | None = None,
) -> tuple[float, int]:
    """Backward over one optimizer step's micro-batches; returns (mean loss per target, targets).

    Each summed micro-batch loss is divided by the target count of the whole window, not of its
    own micro-batch, so the gradient is the mean over every target of the step: batch size 4 with
    no accumulation and batch size 1 accumulated 4 times give the same gradient.

    `total`: the target count to divide by (default: these batches'); with several processes,
    the whole window's over every process, so that the summed gradients are its mean.

    `autocast`: the mixed-precision context `task.loss` runs in (the accelerator's), so a task that
    calls the model's submodules directly, bypassing the prepared forward, still runs in bf16.
    """
    if total is None:
        total = max(1, sum(task.targets(b) for b in batches))
    step_loss = 0.0
    for b in batches:
        with autocast():
            loss = task.loss(model, b) / total
        if backward is None:
            loss.backward()
        else:
            backward(loss)
        step_loss += float(loss.detach())
    return step_loss, total


def gradient_norm(model: nn.Module, accelerator: Accelerator, max_norm: float | None) -> float:
    """The norm of the accumulated gradient, before clipping it to `max_norm` (when set)."""
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = accelerator.clip_grad_norm_(params, max_norm)
        return float(cast("torch.Tensor", norm))  # None only under DeepSpeed, never used here
    # no clipping, but the norm is still worth logging
    return float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step measured."""

    loss: float  # mean per target over the window
    lr: float  # the learning rate the step was taken with
    grad_norm: float  # before clipping
    tokens: int  # non-padding tokens in the window
    seconds: float  # batching, forward, backward, optimizer

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def postfix(self) -> dict[str, str]:
        """The progress bar's figures."""
        return {
            "loss": f"{self.loss:.4f}",
            "lr": f"{self.lr:.2e}",
            "tok_s": f"{self.tokens_per_s:.0f}",
        }

    def record(self, step: int, epoch: float, elapsed: float) -> dict[str, Any]:
        """The step's log.jsonl line (`elapsed`: seconds since the run started)."""
        return {
            "step": step,
            "epoch": epoch,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "elapsed": elapsed,
        }
