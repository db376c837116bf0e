"""Run one `adapterkit train` child process, its output streamed to a log file.

On request the output also goes to our stderr as it comes; its end is kept to tell why it failed.

A fresh process per run, so one run's memory high-water mark, allocator caches and mapped weights
cannot leak into the next one's figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

TAIL_BYTES = 64 * 1024  # of the child's output, kept for classify_failure


class Finished(NamedTuple):
    """How a child ended: exit status (negative: killed by that signal), output tail, seconds."""

    returncode: int
    tail: str
    seconds: float


def _limit_address_space(limit: int) -> Callable[[], None]:
    """A preexec_fn capping the child's address space, to provoke out-of-memory deliberately."""

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_child(
    cmd: list[str],
    log_path: Path,
    echo: bool,
    memory_limit_bytes: int | None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Finished:
    """Run `cmd`, streaming its output to the log (and our stderr when `echo`).

    The child's stdout and stderr are merged so its tqdm bar and messages keep their order; they go
    to our stderr, never our stdout, which carries only the table (or the JSON). `on_start` is
    called with the child's process as soon as it runs (a sweep watches and may stop it).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    preexec = _limit_address_space(memory_limit_bytes) if memory_limit_bytes else None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail = b""
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec
        )
        try:
            assert proc.stdout is not None
            if on_start is not None:
                on_start(proc)
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
                tail = (tail + chunk)[-TAIL_BYTES:]
                if echo:
                    _echo(chunk)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: do not leave a training child behind
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return Finished(returncode, tail.decode("utf-8", "replace"), time.perf_counter() - started)


def _echo(chunk: bytes) -> None:
    """Pass the child's bytes to our stderr as they come (its tqdm bar redraws with \\r)."""
    raw = getattr(sys.stderr, "buffer", None)
    if raw is not None:
        sys.stderr.flush()
        raw.write(chunk)
        raw.flush()
    else:  # a text-only stream (a notebook, a test's StringIO)
        sys.stderr.write(chunk.decode("utf-8", "replace"))
        sys.stderr.flush()
