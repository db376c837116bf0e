"""The one way adapterkit writes a file a reader may see: a temporary sibling, then a rename.

A reader (or a crash) never sees half a file under the real name. `fsync_file`/`fsync_dir` make
the data and the rename durable where the platform allows it; directories of several files
(adapters, checkpoints) build on them in `adapter_format` and `checkpoints`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (before a rename makes it visible)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (makes renames in it durable)."""
    # Directory fsync makes renames durable on POSIX; not every platform allows opening a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then every directory in it (deepest first)."""
    dirs = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_file(Path(dirpath) / name)
        dirs.append(Path(dirpath))
    for d in reversed(dirs):
        fsync_dir(d)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` under a temporary sibling name, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """`write_bytes_atomic` for text."""
    write_bytes_atomic(path, text.encode(encoding))


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON (NaN/Infinity as null) atomically: readers never see half a file."""
    write_text_atomic(path, json.dumps(json_safe(data), indent=2, default=str) + "\n")
