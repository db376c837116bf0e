"""Why a compared run failed, in a line or so, from its exit status and the end of its output."""

from __future__ import annotations

import re
import signal

OOM_KILLED = "out of memory (killed by the kernel, SIGKILL)"

# Output that means the child ran out of memory, whatever else was going on.
_OOM_PATTERNS = (
    "out of memory",
    "memoryerror",
    "can't allocate memory",
    "cannot allocate memory",
    "std::bad_alloc",
    "failed to map segment",
)
# Output that means out of memory only when compare itself capped the child's address space.
_LIMIT_PATTERNS = ("can't start new thread", "mmap failed")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return lines[-1] if lines else ""


def _user_error(output: str) -> str | None:
    """The CLI's last "error: ..." message (it may span lines), without the prefix."""
    lines = output.replace("\r", "\n").splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    if not starts:
        return None
    return "\n".join(lines[starts[-1] :]).strip().removeprefix("error:").strip()


def classify_failure(returncode: int, output: str, memory_limited: bool = False) -> str:
    """A one-line-or-so reason for a failed child, from its exit status and its last output.

    SIGKILL is what the kernel's out-of-memory killer sends, so a child killed by it is reported as
    out of memory; allocation failures show in the output. Exit status 2 is a user error, whose
    message (after the CLI's "error: ") is reported as is.
    """
    if returncode == -signal.SIGKILL:
        return OOM_KILLED
    lowered = output.lower()
    patterns = _OOM_PATTERNS + (_LIMIT_PATTERNS if memory_limited else ())
    if any(p in lowered for p in patterns):
        return f"out of memory: {_last_line(output)}"
    if returncode == 2 and (message := _user_error(output)) is not None:
        return message
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}: {_last_line(output)}".rstrip(": ")
    return f"failed (exit {returncode}): {_last_line(output)}".rstrip(": ")
