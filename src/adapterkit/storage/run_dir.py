"""The run directory: refusing to clobber one, recovering after a crash, and checking a resume.

`--out DIR` holds one training run: the adapter, log.jsonl, metrics.json, best/ and checkpoints/.
These functions decide whether a new run may start there and what a crash left to finish or undo.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from adapterkit.errors import UserError
from adapterkit.recipe import Recipe

log = logging.getLogger("adapterkit")


RUN_FILES = ("log.jsonl", "metrics.json", "best", "checkpoints", "tracking")


def recover_run_dir(out_dir: Path) -> list[str]:
    """Finish or undo what a crash while saving left in a run directory (see adapter_format.recover)."""
    from adapterkit.storage import adapter_format, checkpoints

    done = adapter_format.recover(out_dir)
    if out_dir.is_dir():
        done += adapter_format.recover(out_dir / "best")
        checkpoints.recover(out_dir / "checkpoints")
    for line in done:
        log.warning("recovered an interrupted save: %s", line)
    return done


def prepare_out_dir(out_dir: Path, overwrite: bool, resume: bool = False) -> Path | None:
    """Refuse to train into a directory holding anything, unless told to replace or resume a run.

    Returns the checkpoint to resume from (with `resume`), else None.
    """
    from adapterkit.storage import checkpoints
    from adapterkit.storage.adapter_format import MANIFEST

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one of them")
    if resume:
        found = checkpoints.latest(out_dir / "checkpoints") if out_dir.is_dir() else None
        if found is None:
            raise UserError(
                f"{out_dir}/checkpoints: no checkpoint to resume from (a run saves them only with "
                "train.checkpoint_every set, or when it is stopped by Ctrl-C/SIGTERM); "
                "drop --resume to start afresh"
            )
        return found
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return None
    if not overwrite:
        what = "holds an adapter" if (out_dir / MANIFEST).is_file() else "is not empty"
        raise UserError(
            f"{out_dir}: already exists and {what}; pass --resume to continue the run there from "
            "its latest checkpoint, --overwrite to replace it, or choose another --out"
        )
    if not ((out_dir / MANIFEST).is_file() or (out_dir / "log.jsonl").is_file()):
        raise UserError(
            f"{out_dir}: is not an adapterkit run directory (no {MANIFEST}, no log.jsonl); "
            "refusing to overwrite it, choose another --out"
        )
    # A previous run's best/ and checkpoints/ must not pass for this run's.
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


# Keys a resume may change: only how long to train.
# Keys a resumed run may change: they do not change what the steps compute.
RESUMABLE_CHANGES = frozenset({"train.max_steps", "train.log_with"})


def recipe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: checkpoint value -> this value` for every resolved-recipe key that differs.

    Compared after a JSON round trip (what the checkpoint went through), so a tuple and a list
    of the same items are equal; keys in RESUMABLE_CHANGES are allowed to differ.
    """
    from adapterkit.storage.atomic import json_safe

    a = _flatten(json.loads(json.dumps(json_safe(saved), default=str)))
    b = _flatten(json.loads(json.dumps(json_safe(current), default=str)))
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key not in RESUMABLE_CHANGES and a.get(key) != b.get(key)
    ]


def check_resumable(checkpoint: Path, recipe: Recipe) -> None:
    from adapterkit.storage import checkpoints

    state = checkpoints.read_state(checkpoint)
    saved = state.get("recipe")
    if not isinstance(saved, dict):
        raise UserError(
            f"{checkpoint}/trainer_state.json: records no recipe (written by an older adapterkit?); "
            "it cannot be checked against this run, so it is not resumed"
        )
    diff = recipe_differences(saved, recipe.to_dict())
    if diff:
        raise UserError(
            f"{checkpoint}: cannot resume: the recipe differs from the checkpoint's in "
            f"{len(diff)} key(s) (only train.max_steps may change):\n"
            + "\n".join(f"  - {d}" for d in diff)
        )
