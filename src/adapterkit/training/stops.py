"""How a training run stops cleanly: on a signal, on a non-finite loss or gradient, on running out
of memory. Every stop before the optimizer step leaves the last checkpoint on disk the last good
state, and its message says which checkpoint that is and what to change.

Kept apart from the loop (trainer.py), which calls these at the few points where a run can stop.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapterkit.errors import OutOfMemoryError, TrainingError
from adapterkit.training.config import TrainConfig


def last_good(checkpoints: Path) -> str:
    """What a stopped run keeps: the newest complete checkpoint under `checkpoints`, if any."""
    from adapterkit.storage.checkpoints import latest

    found = latest(checkpoints)
    return f"the last good checkpoint, {found}, is kept" if found else "no checkpoint was saved"


def ensure_finite(value: float, what: str, step: int, kept: Callable[[], str], fix: str) -> float:
    """`value`, or a TrainingError when it is nan or infinite ("diverged: `what` became nan ...").

    `step` is the step being taken (1-based), `kept()` says what is kept on disk (asked only on
    failure: it lists the checkpoints), `fix` what to change.
    """
    if not math.isfinite(value):
        raise TrainingError(
            f"diverged: {what} became {value} at step {step}; the step was not applied and "
            f"{kept()}. {fix}"
        )
    return value


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and for the CPU allocator's RuntimeError (or MemoryError)."""
    import torch

    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text
    )


def out_of_memory_advice(cfg: TrainConfig, quantized_strategies: Sequence[str] = ()) -> str:
    """Concrete overrides that lower the memory a step needs, smallest change first.

    `quantized_strategies`: the registered strategies that load the base model in 4 bits (the
    caller asks the registry); each is suggested on a line of its own.
    """
    lines = []
    if cfg.batch_size > 1:
        half = cfg.batch_size // 2
        lines.append(
            f"train.batch_size={half} train.grad_accum={cfg.grad_accum * 2}  "
            f"(half the batch, same examples per step; now batch_size={cfg.batch_size})"
        )
    else:
        lines.append("task.options.max_length=<fewer tokens>  (batch_size=1 already)")
    if cfg.gradient_checkpointing is not True:  # off, or "auto" left undecided
        lines.append("train.gradient_checkpointing=true  (recompute activations in backward)")
    for name in quantized_strategies:
        lines.append(f"strategy.name={name}  (a 4-bit base model: far less weight memory)")
    return "\n".join(f"  {line}" for line in lines)


class OutOfMemoryStop:
    """`with OutOfMemoryStop(...):` turns running out of memory inside the block into an
    OutOfMemoryError with advice; any other exception passes as is.

    `where` says at which step on which device; `kept()` what is kept on disk (asked only on
    failure); `cleanup()` runs first (drop the gradients, so that the memory they hold is free for
    whatever handles the error).
    """

    def __init__(
        self, where: str, kept: Callable[[], str], advice: str, cleanup: Callable[[], None]
    ) -> None:
        self.where, self.kept, self.advice, self.cleanup = where, kept, advice, cleanup

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, Exception) or not is_out_of_memory(exc):
            return  # no exception, or another one: it propagates unchanged
        self.cleanup()
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]  # a bare MemoryError: ""
        raise OutOfMemoryError(
            f"out of memory at {self.where} ({first_line}); the step was not "
            f"applied and {self.kept()}. Try one of these overrides (`adapterkit plan` estimates "
            f"what fits):\n{self.advice}"
        ) from exc


class StopSignals:
    """While active, SIGINT/SIGTERM only set `received`; the loop stops after the current step.

    A second signal raises KeyboardInterrupt at once (the user insists). Handlers are installed
    only in the main thread (Python allows no other) and restored on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
