"""Memory and parameter measurements: CUDA allocator peaks on GPU, process RSS on CPU.

On Linux the kernel keeps the process's resident-set high-water mark (`VmHWM` in
/proc/self/status); writing "5" to /proc/self/clear_refs resets it, so the peak of one phase (the
training steps) can be told apart from the peak of an earlier one (loading the model). Where that
file is missing or not writable, the reset is reported as not done and the peak then covers the
whole process lifetime. Torch is imported lazily.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from torch import nn

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status in bytes, or None where the file or field is missing."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (VmHWM) since start or the last reset."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    try:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS); cannot be reset
        import resource
        import sys

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    except (ImportError, OSError):
        return None


def current_rss_bytes() -> int | None:
    """The process's resident set size now (VmRSS)."""
    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def rss_anon_bytes() -> int | None:
    """Resident anonymous memory (heap, tensors allocated by the process) now (RssAnon)."""
    return _status_kib("RssAnon")


def rss_file_bytes() -> int | None:
    """Resident file-backed memory (memory-mapped weights, shared libraries) now (RssFile)."""
    return _status_kib("RssFile")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
RELEASE_THRESHOLD = 128 * 1024


def release_freed_memory() -> bool:
    """Make glibc serve every allocation of 128 KiB or more with its own mapping, so a freed
    tensor goes back to the system at once; True when set.

    By default glibc raises that threshold to the size of the largest block freed so far (up to
    32 MiB), after which activations come from its heap, and the heap keeps what is freed: peak
    RSS then ends up well above the tensors alive at any moment (measured on this project's
    CPU runs: up to half as much again for LoRA). Setting the threshold also turns the raising
    off. The cost is a fresh, zeroed mapping for every large tensor: slower steps. Not glibc
    (musl, macOS, Windows): nothing is changed. The setting is the whole process's and stays
    for its lifetime.
    """
    import ctypes

    try:
        process = ctypes.CDLL(None)  # the C library this process allocates with
        return bool(process.mallopt(M_MMAP_THRESHOLD, RELEASE_THRESHOLD))
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark; True when the reset was done."""
    try:
        with _CLEAR_REFS.open("w") as f:
            f.write("5")
        return True
    except OSError:  # missing file (not Linux), PermissionError, read-only /proc
        return False


@dataclasses.dataclass
class MemoryPeak:
    """One phase's peak. `kind` says what `bytes` measures: "cuda_allocated" or "process_rss"."""

    bytes: int | None
    kind: str
    reserved_bytes: int | None = None  # CUDA: the caching allocator's peak reservation
    reset_done: bool = True  # CPU: False when the high-water mark could not be reset


class MemoryMeter:
    """Peak memory of one phase on `device`: the CUDA allocator on a GPU, process RSS on CPU.

    meter = MemoryMeter(device); before = meter.reset(); ...work...; peak = meter.peak()
    `reset()` returns the peak up to that moment (e.g. the peak of loading the model).
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.reset_done = False

    def _peak_now(self) -> MemoryPeak:
        if self.cuda:
            import torch

            return MemoryPeak(
                bytes=int(torch.cuda.max_memory_allocated(self.device)),
                kind="cuda_allocated",
                reserved_bytes=int(torch.cuda.max_memory_reserved(self.device)),
            )
        return MemoryPeak(bytes=peak_rss_bytes(), kind="process_rss", reset_done=self.reset_done)

    def reset(self) -> MemoryPeak:
        """Start a new phase; returns the peak of everything before it."""
        before = self._peak_now()
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.reset_done = True
        else:
            self.reset_done = reset_peak_rss()
        return before

    def peak(self) -> MemoryPeak:
        """The peak since the last `reset()` (since process start where a reset was not possible)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
        return self._peak_now()


class ParameterCounts(TypedDict):
    trainable_params: int
    total_params: int
    trainable_percent: float


def parameter_counts(model: nn.Module) -> ParameterCounts:
    """Trainable and total parameter counts (4-bit weights at logical size) and the percentage."""
    from adapterkit.strategy import count_parameters

    trainable, total = count_parameters(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total if total else 0.0,
    }


class MemoryFigures(TypedDict):
    peak_memory_bytes: int | None
    peak_memory_kind: str
    peak_memory_reset: bool
    cuda_peak_reserved_bytes: int | None
    load_peak_memory_bytes: int | None
    rss_anon_bytes: int | None
    rss_file_bytes: int | None


def memory_figures(peak: MemoryPeak, load_peak: MemoryPeak) -> MemoryFigures:
    """A run's memory figures (RunMetrics' names): the training steps' peak, loading's, and the
    resident memory now."""
    return {
        "peak_memory_bytes": peak.bytes,
        "peak_memory_kind": peak.kind,
        "peak_memory_reset": peak.reset_done,
        "cuda_peak_reserved_bytes": peak.reserved_bytes,
        "load_peak_memory_bytes": load_peak.bytes,
        "rss_anon_bytes": rss_anon_bytes(),
        "rss_file_bytes": rss_file_bytes(),
    }


def machine_memory() -> tuple[Literal["cpu", "cuda"], int]:
    """The device training runs on and its total memory in bytes: the first GPU's, or the
    machine's RAM (psutil)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", int(torch.cuda.get_device_properties(0).total_memory)
    import psutil

    return "cpu", int(psutil.virtual_memory().total)
