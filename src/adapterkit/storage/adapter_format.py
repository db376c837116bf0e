"""Save and load adapter directories: the trained tensors as safetensors, plus a JSON manifest.

An adapter directory holds

    adapterkit.json             the manifest (strategy + options, task + labels, base model name and
                                fingerprint, prompt format, versions); composed by api.py, stored here
    adapter_model.safetensors   only the trained tensors
    ...                         a strategy's extra files (LoRA: peft's adapter_config.json)

Loading never runs code: only safetensors are read, and a directory holding only pickle checkpoints
is refused. Saving is atomic: the directory is written under a temporary sibling name, flushed,
and swapped into place (the old directory is kept as a `.old-<name>-*` backup until the swap is
done), so a crash leaves either the old adapter or the new one, never a half-written or missing
one; `recover` (called at start-up) finishes or rolls back a swap a crash interrupted.
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
from adapterkit.storage import faults
from adapterkit.storage.atomic import fsync_dir, fsync_file

if TYPE_CHECKING:
    import torch

MANIFEST = "adapterkit.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# safetensors metadata key recording names that were the same tensor (tied weights), written once.
_ALIASES_KEY = "adapterkit.aliases"
# Written into the temporary directory before run files are moved into it (see `_carry_over`):
# the names it lists belong to the run, not to the new adapter, so `recover` can move them back.
_CARRIED = ".adapterkit-carried.json"


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
        faults.wrote(tmp / WEIGHTS)
        write_bytes(
            tmp / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        )
        for name, data in extra_files.items():
            write_bytes(tmp / name, data)
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        size = (tmp / WEIGHTS).stat().st_size
        if keep_other_files and out_dir.is_dir():
            _carry_over(out_dir, tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return size


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file of an adapter or checkpoint (the one place fault injection watches)."""
    Path(path).write_bytes(data)
    faults.wrote(path)


def _carry_over(old: Path, new: Path) -> None:
    """Move `old`'s entries that `new` does not have (run logs, best/, checkpoints/) into `new`.

    Renames within one file system: cheap, and each entry is always in exactly one of the two.
    The names are recorded in `new` first, so a crash half-way is undone by `recover`.
    """
    names = [
        e.name
        for e in old.iterdir()
        if not (new / e.name).exists() and not e.name.startswith((".tmp-", ".old-"))
    ]
    write_bytes(new / _CARRIED, json.dumps(names).encode())
    fsync_file(new / _CARRIED)
    fsync_dir(new)
    for name in names:
        os.rename(old / name, new / name)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`; an existing `out_dir` is moved aside first and deleted last."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
        _drop_carried_record(out_dir)
        return
    backup = out_dir.with_name(f".old-{out_dir.name}-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, backup)
    faults.point("swap")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(backup, out_dir)  # put the old adapter back: never leave none
        raise
    fsync_dir(out_dir.parent)
    _drop_carried_record(out_dir)
    shutil.rmtree(backup, ignore_errors=True)


def _drop_carried_record(out_dir: Path) -> None:
    # After the swap the carried entries are where they belong; the record has done its job.
    (out_dir / _CARRIED).unlink(missing_ok=True)


def recover(out_dir: Path) -> list[str]:
    """Finish or roll back an adapter save that a crash interrupted; returns what it did.

    Three leftovers are possible next to `out_dir` (see `save_adapter`):
      - `.old-<name>-*` with `out_dir` missing: the crash came between the two renames of the
        swap; the backup is the previous adapter, complete, and is renamed back.
      - `.old-<name>-*` with `out_dir` present: the swap completed; the backup is deleted.
      - `.tmp-<name>-*`: a new adapter that never reached its place; run files already moved into
        it (listed in its carried record) go back to `out_dir`, then it is deleted.
    Safe to call on any path, any number of times; a missing parent is left alone.
    """
    out_dir = Path(out_dir)
    parent, name = out_dir.parent, out_dir.name
    if not parent.is_dir():
        return []
    done: list[str] = []
    backups = sorted(_leftovers(parent, ".old-", name), key=lambda p: p.stat().st_mtime)
    if backups and not out_dir.exists():
        os.rename(backups.pop(), out_dir)  # the newest backup is the adapter that was in place
        done.append(f"restored {out_dir} from its backup")
    for backup in backups:
        shutil.rmtree(backup, ignore_errors=True)
        done.append(f"removed the finished swap's backup {backup.name}")
    for tmp in _leftovers(parent, ".tmp-", name):
        record = tmp / _CARRIED
        if record.is_file() and out_dir.is_dir():
            try:
                names = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                names = []
            for entry in names if isinstance(names, list) else []:
                src = tmp / str(entry)
                if src.exists() and not (out_dir / src.name).exists():
                    os.rename(src, out_dir / src.name)
                    done.append(f"moved {src.name} back into {out_dir}")
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed the unfinished save {tmp.name}")
    if out_dir.is_dir():
        _drop_carried_record(out_dir)
    return done


def _leftovers(parent: Path, prefix: str, name: str) -> list[Path]:
    """`<prefix><name>-XXXXXXXX` siblings: 8 characters after the name, as save_adapter makes them
    (so a sibling adapter called `<name>-x` is not mistaken for a leftover of `<name>`)."""
    head = f"{prefix}{name}-"
    return [p for p in parent.glob(f"{head}*") if p.is_dir() and len(p.name) == len(head) + 8]


# The manifest fields `api.load` relies on, with the JSON types they must have. A manifest is data
# from a file someone handed over: every field is checked before it chooses code or shapes.
_MANIFEST_FIELDS: dict[str, tuple[type, ...]] = {
    "strategy": (dict,),
    "strategy.name": (str,),
    "strategy.options": (dict, type(None)),
    "task": (dict,),
    "task.name": (str,),
    "task.options": (dict, type(None)),
    "base_model": (dict,),
    "base_model.name": (str,),
    "base_model.fingerprint": (str,),
    "base_model.dtype": (str, type(None)),
    "base_model.trust_remote_code": (bool, type(None)),
    "base_model.chain": (list, type(None)),
}
_REQUIRED = {"strategy", "strategy.name", "task", "task.name", "base_model", "base_model.name"}
_REQUIRED |= {"base_model.fingerprint"}
_DTYPES = ("float32", "bfloat16", "float16")


def check_manifest(manifest: dict[str, Any], where: str) -> None:
    """Raise AdapterError naming the field when a manifest field is missing or of the wrong type."""
    problems = []
    for key, types in _MANIFEST_FIELDS.items():
        head, _, leaf = key.rpartition(".")
        node = manifest.get(head) if head else manifest
        if not isinstance(node, dict):
            continue  # the section itself is reported
        if leaf not in node:
            if key in _REQUIRED:
                problems.append(f"{key}: missing")
            continue
        if not isinstance(node[leaf], types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{key}: expected {want}, got {type(node[leaf]).__name__}")
    dtype = (manifest.get("base_model") or {}).get("dtype") if not problems else None
    if dtype is not None and dtype not in _DTYPES:
        problems.append(f"base_model.dtype: {dtype!r} is not one of {', '.join(_DTYPES)}")
    if problems:
        raise AdapterError(f"{where}: invalid manifest: " + "; ".join(problems))


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str
) -> None:
    """Refuse adapter tensors that are not exactly `expected`'s names, shapes and dtypes.

    `expected` is what the model, prepared by the same strategy and options, would save itself.
    Checked before any weight is copied, so a foreign or tampered file changes nothing.
    """
    stray = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    wrong = [
        f"{k}: {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} in the file, the model has "
        f"{tuple(expected[k].shape)} {str(expected[k].dtype).removeprefix('torch.')}"
        for k, t in sorted(tensors.items())
        if k in expected and (t.shape != expected[k].shape or t.dtype != expected[k].dtype)
    ]
    problems = []
    if stray:
        problems.append(f"{len(stray)} tensor(s) map to no module of the model: {stray[:5]}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) the model needs are missing: {missing[:5]}")
    if wrong:
        problems.append("shape or dtype differs: " + "; ".join(wrong[:5]))
    if problems:
        raise AdapterError(
            f"{where}: the adapter does not fit this model ("
            + "; ".join(problems)
            + "); nothing was loaded. Was it made with another strategy, options or base model?"
        )


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
