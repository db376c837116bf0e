"""Save and load adapter directories: the trained tensors as safetensors, plus a JSON manifest.

An adapter directory holds

    adapterkit.json             the manifest (strategy + options, task + labels, base model name and
                                fingerprint, prompt format, versions); composed by api.py, stored here
    adapter_model.safetensors   only the trained tensors
    ...                         a strategy's extra files (LoRA: peft's adapter_config.json)

Loading never runs code: only safetensors are read, and a directory holding only pickle checkpoints
is refused. Saving is atomic: the directory is written under a temporary sibling name and swapped
into place, so a crash leaves either the old adapter or the new one, never a half-written or
missing one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import AdapterError

if TYPE_CHECKING:
    import torch

MANIFEST = "adapterkit.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# safetensors metadata key recording names that were the same tensor (tied weights), written once.
_ALIASES_KEY = "adapterkit.aliases"


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device.type, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _prepare(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU clones, each storage once; returns (tensors to write, alias -> written name).

    Strategies already give each tied tensor once; should two names still be the very same tensor,
    it is written under the first name and the second is recorded as an alias, so nothing is lost
    and the file does not double in size (safetensors refuses shared storage anyway).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[Any, ...], str] = {}
    for name, tensor in tensors.items():
        key = _storage_key(tensor)
        if key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        out[name] = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return out, aliases


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
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


def _check_extra_name(name: str) -> None:
    if name in (MANIFEST, WEIGHTS) or not name or name != Path(name).name or name.startswith("."):
        raise ValueError(
            f"extra file name {name!r} must be a plain file name other than "
            f"{MANIFEST} and {WEIGHTS}"
        )


def save_adapter(
    out_dir: Path,
    tensors: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    keep_other_files: bool = False,
) -> int:
    """Write an adapter directory atomically; returns the size of the weights file in bytes.

    An existing `out_dir` is replaced only if it is an adapter (holds `adapterkit.json`) or is
    empty, so a mistyped output path never wipes an unrelated directory. With `keep_other_files`
    (a training run's directory: log.jsonl, metrics.json, best/, checkpoints/) the entries the new
    adapter does not replace are moved into it before the swap instead of being dropped.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if not isinstance(manifest, dict):
        raise TypeError("manifest must be a dict")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        _check_extra_name(name)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise AdapterError(f"{out_dir}: exists and is not a directory; choose another output")
        if not keep_other_files and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
            raise AdapterError(
                f"{out_dir}: exists, is not empty and holds no {MANIFEST}; refusing to replace "
                "it with an adapter (choose a new or empty directory)"
            )
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)

    to_write, aliases = _prepare(tensors)
    metadata = {"format": "pt"}
    if aliases:
        metadata[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=parent))
    try:
        save_file(to_write, str(tmp / WEIGHTS), metadata=metadata)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
        for path in tmp.iterdir():
            _fsync_file(path)
        _fsync_dir(tmp)
        size = (tmp / WEIGHTS).stat().st_size
        if keep_other_files and out_dir.is_dir():
            _carry_over(out_dir, tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return size


def _carry_over(old: Path, new: Path) -> None:
    """Move `old`'s entries that `new` does not have (run logs, best/, checkpoints/) into `new`.

    Renames within one file system: cheap, and each entry is always in exactly one of the two.
    """
    for entry in old.iterdir():
        if not (new / entry.name).exists() and not entry.name.startswith((".tmp-", ".old-")):
            os.rename(entry, new / entry.name)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`; an existing `out_dir` is moved aside first and deleted last."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        _fsync_dir(out_dir.parent)
        return
    backup = out_dir.with_name(f".old-{out_dir.name}-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, backup)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(backup, out_dir)  # put the old adapter back: never leave none
        raise
    _fsync_dir(out_dir.parent)
    shutil.rmtree(backup, ignore_errors=True)


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest and tensors of an adapter directory (safetensors only: nothing is unpickled)."""
    from safetensors import SafetensorError, safe_open

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterError(f"{adapter_dir}: not a directory; give the adapter's output directory")
    weights = adapter_dir / WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise AdapterError(
                f"{adapter_dir}: holds only pickle checkpoints ({', '.join(pickles[:3])}) and no "
                f"{WEIGHTS}; adapterkit does not load pickle files because unpickling can run "
                "arbitrary code. Convert them to safetensors if you trust their source."
            )
        raise AdapterError(f"{weights}: missing; {adapter_dir} is not a complete adapter")
    manifest_path = adapter_dir / MANIFEST
    if not manifest_path.is_file():
        hint = (
            " (a plain peft adapter? load it with peft)"
            if (adapter_dir / "adapter_config.json").is_file()
            else ""
        )
        raise AdapterError(f"{manifest_path}: missing; not an adapterkit adapter{hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{manifest_path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise AdapterError(
            f"{manifest_path}: must hold a JSON object, got {type(manifest).__name__}"
        )
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                tensors[name] = f.get_tensor(name)
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights}: cannot be read as safetensors: {exc}") from exc
    for alias, target in aliases.items():
        if target not in tensors:
            raise AdapterError(f"{weights}: alias {alias!r} names a missing tensor {target!r}")
        tensors[alias] = tensors[target]
    return manifest, tensors


def check_base(manifest: dict[str, Any], fingerprint: str, base_name: str) -> None:
    """Refuse an adapter made for another base model (`manifest["base_model"]["fingerprint"]`).

    Loading LoRA matrices or a head onto a base of another shape fails obscurely or, worse, works
    and produces nonsense; the fingerprint catches that before any tensor is touched.
    """
    base = manifest.get("base_model")
    if not isinstance(base, dict) or not base.get("fingerprint"):
        raise AdapterError(
            f"the adapter manifest ({MANIFEST}) does not record its base model's fingerprint "
            "(base_model.fingerprint); it cannot be checked against the base model"
        )
    if base["fingerprint"] != fingerprint:
        raise AdapterError(
            f"adapter was trained on base model {base.get('name', '?')!r} "
            f"(fingerprint {str(base['fingerprint'])[:12]}), but the base model given is "
            f"{base_name!r} (fingerprint {fingerprint[:12]}); load it with the model it was "
            "trained on"
        )
