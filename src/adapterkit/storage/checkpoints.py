"""Training checkpoints and run files, written so a crash never leaves a half-written one.

A checkpoint directory `checkpoints/step-NNNNNN/` holds everything a resume needs: the trainable
weights (safetensors), optimizer and scheduler state, every RNG state, and the data position.
It is written under a temporary name, flushed and renamed into place; the oldest are pruned (renamed
away first, so a crash while deleting never leaves a half-deleted `step-*` that looks like one).

Everything here is read back with `torch.load(weights_only=True)`: our own files, but loading them
must not be a way to run code either, so RNG states are stored as tensors and plain numbers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import TrainingError
from adapterkit.storage import faults
from adapterkit.storage.atomic import fsync_dir, fsync_tree, json_safe

if TYPE_CHECKING:
    from torch import Tensor

FILES = ("trainable.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json")


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's RNG states as tensors and plain numbers (weights_only-safe)."""
    import numpy as np
    import torch

    version, words, gauss = random.getstate()
    # legacy=True is numpy's default: the MT19937 tuple (a dict only for another bit generator,
    # which np.random's global state never has unless replaced; it could not be restored either).
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):
        raise TypeError("numpy's global RNG is not the MT19937 RandomState; cannot checkpoint it")
    name, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": [version, list(words), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned: the next random number is the one that would have come."""
    import numpy as np
    import torch

    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    torch.save(obj, path)
    faults.wrote(path)


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, Tensor],
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint under a temporary name, rename it into place, prune old ones."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
        tmp / "trainable.safetensors",
    )
    faults.wrote(tmp / "trainable.safetensors")
    _save_torch(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / "optimizer.pt",
    )
    _save_torch(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(json_safe(state), indent=2))
    faults.wrote(tmp / "trainer_state.json")
    fsync_tree(tmp)
    if final.exists():  # only after a resume that went back past it: replace, never merge
        _discard(final)
    os.replace(tmp, final)  # a crash mid-write leaves a .tmp dir, never a half checkpoint
    fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep]:
        _discard(old)
    return final


def _discard(path: Path) -> None:
    """Delete a directory by renaming it out of the `step-*` namespace first (see the module doc)."""
    gone = path.with_name(f".del-{path.name}")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def recover(root: Path) -> None:
    """Delete what a crash while checkpointing left: `.tmp-step-*` and `.del-step-*` directories."""
    if root.is_dir():
        for leftover in [*root.glob(".tmp-step-*"), *root.glob(".del-step-*")]:
            shutil.rmtree(leftover, ignore_errors=True)


def latest(root: Path) -> Path | None:
    """The newest complete `step-*` checkpoint under `root`, or None."""
    done = [p for p in root.glob("step-*") if all((p / f).is_file() for f in FILES)]
    return max(done, key=lambda p: int(p.name.removeprefix("step-")), default=None)


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json."""
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{file}: cannot read the checkpoint state ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise TrainingError(f"{file}: not a checkpoint state (no integer 'step')")
    return state


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything `save_checkpoint` wrote: tensors, optimizer, scheduler, rng, state.

    Nothing is unpickled: safetensors, JSON, and torch files read with `weights_only=True`.
    """
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        opt = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        rng = torch.load(path / "rng.pt", weights_only=True, map_location="cpu")
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise TrainingError(f"{path}: the checkpoint cannot be read ({exc})") from None
    return {
        "tensors": tensors,
        "optimizer": opt["optimizer"],
        "scheduler": opt["scheduler"],
        "rng": rng,
        "state": read_state(path),
    }
