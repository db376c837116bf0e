"""Chained runs: a previous adapterkit run directory used as the base model of the next run.

`model.name: runs/dapt` (a directory holding `adapterkit.json`) resolves to that run merged into a
plain Hugging Face model directory, once, by `adapterkit merge` (so verified the same way: the merge
is refused when merged and base + adapter disagree beyond the tolerance). The merged directory is
cached under `<cache>/merged/<run name>-<key>`, where the key hashes the run's manifest and weights,
so a run retrained in place is merged again and two processes share one merge (a file lock). The
next run's manifest records the chain: each earlier run with its base model's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from adapterkit.errors import ModelError, UserError

MANIFEST = "adapterkit.json"
WEIGHTS = "adapter_model.safetensors"


def is_run(path: Path) -> bool:
    """Whether `path` is an adapterkit run or adapter directory (it holds the manifest)."""
    return path.is_dir() and (path / MANIFEST).is_file()


def _key(run: Path) -> str:
    """sha256 over the run's manifest and adapter weights: what the merge is a function of."""
    from adapterkit.storage.sources import sha256_file

    digest = hashlib.sha256()
    for name in (MANIFEST, WEIGHTS):
        file = run / name
        if not file.is_file():
            raise ModelError(f"{run}: a run directory without {name}; train it again")
        digest.update(f"{name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _manifest(run: Path) -> dict[str, Any]:
    try:
        data = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{run / MANIFEST}: cannot read it as JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("base_model"), dict):
        raise ModelError(f"{run / MANIFEST}: not an adapterkit manifest (no base_model)")
    return data


def links(run: Path, manifest: dict[str, Any], key: str) -> tuple[dict[str, Any], ...]:
    """The chain a run on top of `run` records: `run`'s own chain, then `run` itself."""
    base = manifest["base_model"]
    earlier = tuple(base.get("chain") or ())
    this = {
        "run": str(run.resolve()),
        "adapter_sha256": key,
        "strategy": (manifest.get("strategy") or {}).get("name"),
        "task": (manifest.get("task") or {}).get("name"),
        "base_model": base.get("name"),
        "base_fingerprint": base.get("fingerprint"),
    }
    return (*earlier, this)


def merged_dir(run: Path, root: Path) -> tuple[Path, tuple[dict[str, Any], ...]]:
    """The merged model directory of `run` (merged now if not cached), and the chain to record."""
    from filelock import FileLock

    manifest = _manifest(run)
    key = _key(run)
    slug = re.sub(r"[^a-z0-9._-]+", "-", run.resolve().name.lower()).strip("-.") or "run"
    out = root / "merged" / f"{slug}-{key[:16]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "verify.json").is_file():
            try:
                _merge(run, out)
            except UserError as exc:
                raise ModelError(
                    f"{run}: cannot use this run as a base model, its merge failed: {exc}"
                ) from exc
    return out, links(run, manifest, key)


def _merge(run: Path, out: Path) -> None:
    """`adapterkit merge` of `run` into `out`, verified on the run's eval data; a run trained
    without eval data is verified on its training file instead (the check compares two forms of
    one model, so it needs rows, not held-out ones)."""
    from adapterkit.errors import MergeError, VerificationFailed
    from adapterkit.export import merge as merging

    try:
        merging.merge(run, out, dtype="fp32")
    except VerificationFailed:
        raise
    except MergeError:
        train = _train_file(run)
        if train is None:
            raise
        merging.merge(run, out, dtype="fp32", data=train)


def _train_file(run: Path) -> Path | None:
    """The training file the run's resolved recipe (recipe.yaml) names, if it is still there."""
    import yaml

    try:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
        train = Path(recipe["data"]["train"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return train if train.is_file() else None
