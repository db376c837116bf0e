"""The base model an adapter names, checked cheaply for `adapterkit inspect`: where it is on this
machine, whether its fingerprint is the one the adapter recorded, and the task's model class built
from its config on the meta device (no weights read, no memory taken)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import ModelError
from adapterkit.storage import sources

if TYPE_CHECKING:
    from torch import nn

MANIFEST = "adapterkit.json"
_MAX_CHAIN = 8  # runs on runs followed at most this deep
_HASH_LIMIT = 2 * 2**30  # hashing a GGUF file reads it all: about 0.2 s per 100 MB


def base_status(
    base: dict[str, Any], depth: int = 0
) -> tuple[dict[str, Any], sources.ModelSource | None]:
    """The report's base_model section, and where the base is on this machine (or None).

    Cheap checks only: a local Hugging Face directory is resolved and fingerprinted (config.json
    and safetensors headers, milliseconds). A GGUF-based base (a .gguf file or an embedded model)
    is fingerprinted through its converted copy in the cache when there is one; converting it
    would read every weight, so inspect does not. A previous run as the base (a chained run) is
    not merged either: its own base, followed down the chain, gives the architecture.
    """
    section = {
        k: base.get(k) for k in ("name", "dtype", "fingerprint", "gguf_sha256", "trust_remote_code")
    }
    section.update(
        chain=list(base.get("chain") or []), path=None, resolves=None, fingerprint_matches=None,
        note="",
    )  # fmt: skip
    name, gguf_sha = str(base["name"]), base.get("gguf_sha256")
    if _is_run(Path(name)):
        return _chained(section, Path(name), depth)
    source: sources.ModelSource | None = None
    try:
        if name in sources.EMBEDDED or name.lower().endswith(".gguf"):
            source = _converted_copy(name, gguf_sha)
            if source is None and not (name in sources.EMBEDDED or Path(name).is_file()):
                raise ModelError(f"{name}: no such GGUF file")
            if source is None:
                section["note"] = (
                    "GGUF-based and not converted on this machine yet; converting reads every "
                    "weight, so the fingerprint was not checked (train or eval converts it once)"
                )
                return section, None
        else:
            source = sources.resolve(name)
        matches = sources.fingerprint(source) == base.get("fingerprint")
    except ModelError as exc:
        section.update(resolves=False, note=str(exc))
        return section, None
    section.update(path=str(source.path), resolves=True, fingerprint_matches=matches)
    if not matches:
        section["note"] = (
            "the model found under this name is not the one the adapter was trained on "
            "(another config or tensor layout)"
        )
    elif Path(name).is_file() and (problem := _gguf_file_differs(Path(name), gguf_sha)):
        section.update(fingerprint_matches=problem[0], note=problem[1])
    return section, source


def _gguf_file_differs(path: Path, gguf_sha: Any) -> tuple[bool | None, str] | None:
    """Whether the GGUF file at `path` is still the one converted (its sha256), when hashing it is
    cheap; None when it is the same file."""
    size = path.stat().st_size
    if size > _HASH_LIMIT:
        return None, f"{path} ({size / 2**30:.1f} GiB) was not hashed; its converted copy matches"
    if sources.sha256_file(path) != gguf_sha:
        return False, f"{path} is not the GGUF file the adapter was trained on (sha256 differs)"
    return None


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _chained(
    section: dict[str, Any], run: Path, depth: int
) -> tuple[dict[str, Any], sources.ModelSource | None]:
    """A previous run as the base: it is here; its merge (made by train or eval, cached) is not
    made by inspect, so the fingerprint is not checked; the run's own base stands in for the
    architecture (merging keeps the config)."""
    section["resolves"] = True
    why = (
        f"a chained run: the base is the adapterkit run {run}, merged by train or eval (inspect "
        "does not merge, so its fingerprint was not checked)"
    )
    try:
        inner = json.loads((run / MANIFEST).read_text(encoding="utf-8"))["base_model"]
        if depth >= _MAX_CHAIN or not isinstance(inner, dict) or "name" not in inner:
            raise ValueError("no base model name")
    except (OSError, ValueError, KeyError, TypeError):
        section["note"] = f"{why}; its own manifest names no base model"
        return section, None
    inner_section, source = base_status(inner, depth + 1)
    section["note"] = f"{why}; architecture from its base {inner_section['name']!r}"
    if source is None:
        section["note"] += f" ({inner_section['note']})"
    return section, source


def _converted_copy(name: str, gguf_sha: Any) -> sources.ModelSource | None:
    """The cached conversion of the GGUF file with sha256 `gguf_sha`, if this machine has one."""
    if not isinstance(gguf_sha, str) or not gguf_sha:
        return None
    for path in sorted((sources.cache_root() / "models").glob(f"*-{gguf_sha[:16]}")):
        try:
            record = json.loads((path / sources.SOURCE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("gguf_sha256") == gguf_sha:
            return sources.ModelSource(name=name, path=path, gguf_sha256=gguf_sha)
    return None


def meta_model(
    task: Any, t_opts: Any, source: sources.ModelSource | None, base: dict[str, Any]
) -> tuple[nn.Module | None, Any]:
    """The task's model class built from the base's config on the meta device, and that config;
    (None, None) when the base is not here, needs remote code, or the task cannot build one."""
    from adapterkit.errors import UserError
    from adapterkit.task import meta_model as build

    if source is None or task is None or t_opts is None or base.get("trust_remote_code"):
        return None, None
    try:
        config = sources.load_config(source)
    except ModelError:
        return None, None
    if getattr(task, "meta_model", None) is None:
        return None, config
    try:
        return build(task, config, t_opts), config
    except (UserError, ValueError, KeyError):
        return None, config
