"""How a training run stops cleanly: on a signal, on running out of memory, and what a resume trims.

Kept apart from the loop (trainer.py), which calls these at the few points where a run can stop.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

from adapterkit.storage.atomic import write_text_atomic
from adapterkit.train.config import TrainConfig


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and for the CPU allocator's RuntimeError (or MemoryError)."""
    import torch

    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text
    )


def out_of_memory_advice(cfg: TrainConfig) -> str:
    """Concrete overrides that lower the memory a step needs, smallest change first."""
    lines = []
    if cfg.batch_size > 1:
        half = cfg.batch_size // 2
        lines.append(
            f"train.batch_size={half} train.grad_accum={cfg.grad_accum * 2}  "
            f"(half the batch, same examples per step; now batch_size={cfg.batch_size})"
        )
    else:
        lines.append("task.options.max_length=<fewer tokens>  (batch_size=1 already)")
    if not cfg.gradient_checkpointing:
        lines.append("train.gradient_checkpointing=true  (recompute activations in backward)")
    lines.append("strategy.name=qlora  (a 4-bit base model: far less weight memory)")
    return "\n".join(f"  {line}" for line in lines)


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


def trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to `step`: a killed run may have logged steps after it."""
    kept = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except ValueError:
            break  # a line cut by the crash, and whatever follows it
    write_text_atomic(path, "".join(kept))
