"""Fault injection for crash tests: every file an adapter or checkpoint writer writes is reported here.

Adapters and checkpoints promise that a crash while saving loses nothing. That promise can only be
tested by crashing for real, at chosen points, in a child process. Two environment variables do it:

    ADAPTERKIT_FAULT_AFTER_BYTES=N   SIGKILL this process once N bytes of adapter/checkpoint files
                                     have been written (the file being written is cut at byte N,
                                     exactly as a kill in the middle of `write` would leave it)
    ADAPTERKIT_FAULT_AT=NAME         SIGKILL this process when it reaches the named point
                                     (`swap`: an adapter's old directory moved aside, the new one
                                     not yet renamed into place)
    ADAPTERKIT_FAULT_PAUSE_AT_STEP=K sleep (up to an hour) after step K is logged, so a test can
                                     kill the training process at a known step

Unset (always, outside tests) each check is one dictionary lookup. Writers call `wrote(path)` after
writing a whole file (safetensors and torch write files themselves; cutting the file afterwards
keeps the writers unchanged and costs no extra memory, unlike buffering the bytes first).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

AFTER_BYTES = "ADAPTERKIT_FAULT_AFTER_BYTES"
AT = "ADAPTERKIT_FAULT_AT"
PAUSE_AT_STEP = "ADAPTERKIT_FAULT_PAUSE_AT_STEP"

_written = 0  # bytes of adapter/checkpoint files this process has written so far


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is delivered at once; never return into the writer


def wrote(path: Path) -> None:
    """Account for the file just written at `path`; with a byte budget set, die at the budget."""
    global _written
    limit = os.environ.get(AFTER_BYTES)
    if limit is None:
        return
    size = Path(path).stat().st_size
    budget = int(limit) - _written
    _written += size
    if budget <= size:
        with open(path, "r+b") as f:
            f.truncate(max(0, budget))
            f.flush()
            os.fsync(f.fileno())
        _die()


def point(name: str) -> None:
    """Die here when ADAPTERKIT_FAULT_AT names this point."""
    if os.environ.get(AT) == name:
        _die()


def pause_after_step(step: int, stop: Callable[[], bool] = lambda: False) -> None:
    """Sleep after step K when ADAPTERKIT_FAULT_PAUSE_AT_STEP=K, so a test can kill the process.

    Wakes early once `stop()` is true (a SIGTERM the trainer caught), so a graceful stop is
    testable at a known step too.
    """
    value = os.environ.get(PAUSE_AT_STEP)
    if value is None or int(value) != step:
        return
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline and not stop():
        time.sleep(0.05)
