"""What a run or adapter directory is, from its files alone: no model weights are read.

`inspect(path)` is `adapterkit inspect DIR --json`. It reads the manifest, the safetensors header
of the adapter (names, shapes, dtypes; no tensor data), peft's `adapter_config.json` (parsed by peft
itself) and metrics.json. The base model is checked in adapterkit.export.base_check: its
config.json and safetensors headers when it is on this machine (the fingerprint, as training
computed it), and the task's model class built from that config on the meta device (no memory, no
weights) to check the tensors against. Which runtimes can take the adapter (`targets`) is decided
in adapterkit.export.compatibility.

The JSON keys, stable (new keys may be added; none is renamed or removed):

    path             the directory, as given
    kind             "run" (a training run: the final adapter, log.jsonl, metrics.json, ...) or
                     "adapter" (an adapter directory alone, such as a run's best/)
    best_of          for a run's best/: the run directory; else null
    format, format_version                  the manifest's
    strategy         {name, options, installed}
    task             {name, options, manifest (what the task added: labels, prompt format...),
                      installed, model_class (null when it could not be built)}
    base_model       {name, dtype, fingerprint, gguf_sha256, trust_remote_code, chain (the
                      earlier runs a chained run records), path (where it resolved on this
                      machine, or null), resolves (true / false / null: cannot tell without
                      converting a GGUF file), fingerprint_matches (bool or null: not checked),
                      note}
    versions         {library: {recorded, installed}} (installed: null when not installed)
    tensors          [{name, shape, dtype, parameters, bytes, kind}]; kind is "lora_matrix" (a
                     lora_A / lora_B matrix), "adapter" (another parameter of a peft method: a DoRA
                     magnitude, an IA3 vector), "module" (a module trained whole, peft's
                     modules_to_save) or "weight" (a plain model weight)
    aliases          {name: name it shares storage with} (tied tensors written once)
    totals           {count, parameters, bytes (tensor data), file_bytes, dtypes: {dtype: count}}
    files            [{name, bytes}]: the other files of the adapter (adapter_config.json, recipe)
    run              null for an adapter; else {steps, epochs, train_loss, final_eval, best_eval,
                     best_step, selection_metric, tokens_per_s, peak_memory_bytes,
                     peak_memory_kind, wall_time_s, trainable_params, precision, device,
                     best_dir (bool), checkpoints ([step-N names]), note}
    targets          {peft, vllm, llama_cpp, merge}: each {ok (true / false / null: cannot tell
                     here), reasons (why not, or what is unknown), notes}
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import AdapterError
from adapterkit.export.compatibility import PEFT_CONFIG
from adapterkit.storage.adapter_format import MANIFEST, PICKLE_SUFFIXES, WEIGHTS, check_manifest
from adapterkit.storage.run_dir import RUN_FILES

if TYPE_CHECKING:
    from torch import nn

_ALIASES_KEY = "adapterkit.aliases"  # as adapter_format writes it
_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


@dataclasses.dataclass
class Facts:
    """What the verdicts are decided from (see adapterkit.export.compatibility)."""

    directory: Path
    manifest: dict[str, Any]
    tensors: list[dict[str, Any]]
    peft_config: Any  # peft's PeftConfig, or None
    peft_problem: str | None  # why there is no peft_config
    peft_warnings: list[str]  # what peft warned about while reading adapter_config.json
    strategy: Any  # the installed strategy, or None
    task: Any  # the installed task, or None
    task_options: Any  # parsed from the manifest, or None
    option_problems: list[str]  # where the manifest's options do not fit the installed plugins
    base: dict[str, Any]  # the report's base_model section
    model: nn.Module | None  # the task's model class on the meta device, or None
    model_config: Any  # the base's transformers config, or None


def inspect(path: Path) -> dict[str, Any]:
    """The report of a run or adapter directory (the keys in this module's docstring)."""
    from adapterkit.api import quiet_known_notices
    from adapterkit.export import compatibility

    quiet_known_notices()
    directory = check_directory(Path(path))
    manifest = read_manifest(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise _missing_weights(directory)
    tensors, aliases, file_bytes = read_header(weights)
    facts = _facts(directory, manifest, tensors)
    report = {
        "path": str(path),
        "kind": "run" if _is_run(directory) else "adapter",
        "best_of": _best_of(directory),
        "format": manifest.get("format"),
        "format_version": manifest.get("format_version"),
        "strategy": _strategy_section(facts),
        "task": _task_section(facts),
        "base_model": facts.base,
        "versions": _versions(manifest.get("versions")),
        "tensors": tensors,
        "aliases": aliases,
        "totals": _totals(tensors, file_bytes),
        "files": _other_files(directory),
        "run": _run_section(directory, facts) if _is_run(directory) else None,
        "targets": compatibility.verdicts(facts),
    }
    return report


# ---- reading the directory --------------------------------------------------------------------


def check_directory(path: Path) -> Path:
    """`path` if it is a directory holding an adapterkit manifest; else an AdapterError saying what
    it is instead."""
    if not path.exists():
        raise AdapterError(f"{path}: no such directory; give a training run's --out directory")
    if not path.is_dir():
        raise AdapterError(
            f"{path}: is a file, not a directory; give a training run's --out directory "
            "(or its best/)"
        )
    if not (path / MANIFEST).is_file():
        raise AdapterError(
            f"{path}: no {MANIFEST}, so this is not an adapterkit run or adapter; "
            f"it looks like {looks_like(path)}"
        )
    return path


def looks_like(path: Path) -> str:
    """What a directory without an adapterkit manifest seems to be, from its file names."""
    names = sorted(p.name for p in path.iterdir())
    has = set(names)
    weights = [n for n in names if n.endswith(".safetensors")]
    if PEFT_CONFIG in has:
        return "a plain peft adapter (adapter_config.json); load it with peft.PeftModel"
    if "trainer_state.json" in has:
        return "a training checkpoint; give the run directory two levels up"
    if any(n.startswith("step-") for n in names):
        return "a run's checkpoints/ folder; give the run directory above it"
    if "config.json" in has:
        what = f"weights {', '.join(weights[:2])}" if weights else "no safetensors weights"
        return f"a Hugging Face model directory (config.json, {what}); use it as model.name"
    if ggufs := [n for n in names if n.lower().endswith(".gguf")]:
        return f"a folder of GGUF files ({', '.join(ggufs[:2])}); use a file as model.name"
    if not names:
        return "an empty directory"
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    return f"a directory of {len(names)} other entries ({shown})"


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, parsed and type-checked (the same messages as loading an adapter)."""
    file = directory / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise AdapterError(f"{file}: must hold a JSON object, got {type(manifest).__name__}")
    check_manifest(manifest, str(file))
    return manifest


def _missing_weights(directory: Path) -> AdapterError:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return AdapterError(
            f"{directory}: holds only pickle checkpoints ({', '.join(pickles[:3])}) and no "
            f"{WEIGHTS}; adapterkit does not read pickle files because unpickling can run "
            "arbitrary code"
        )
    return AdapterError(f"{directory / WEIGHTS}: missing; {directory} is not a complete adapter")


def read_header(file: Path) -> tuple[list[dict[str, Any]], dict[str, str], int]:
    """(tensors, aliases, file size) from a safetensors file's header; no tensor data is read.

    safetensors' own reader checks the file (it refuses a truncated or malformed one); the byte
    size of each tensor comes from the header's data offsets.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
        with open(file, "rb") as raw:
            (length,) = struct.unpack("<Q", raw.read(8))
            header = json.loads(raw.read(length))
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        raise AdapterError(f"{file}: cannot be read as safetensors: {exc}") from exc
    tensors = []
    for name in names:
        entry = header[name]
        shape = [int(d) for d in entry["shape"]]
        start, end = entry["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        dtype = _DTYPES.get(entry["dtype"], entry["dtype"])
        tensors.append(
            {
                "name": name,
                "shape": shape,
                "dtype": dtype,
                "parameters": count,
                "bytes": end - start,
            }
        )
    return tensors, {str(k): str(v) for k, v in dict(aliases).items()}, file.stat().st_size


def _is_run(directory: Path) -> bool:
    return any((directory / name).exists() for name in ("log.jsonl", "metrics.json"))


def _best_of(directory: Path) -> str | None:
    parent = directory.resolve().parent
    if directory.resolve().name == "best" and (parent / MANIFEST).is_file() and _is_run(parent):
        return str(directory.parent)
    return None


def _other_files(directory: Path) -> list[dict[str, Any]]:
    skip = {MANIFEST, WEIGHTS, *RUN_FILES}
    return [
        {"name": p.name, "bytes": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    ]


def _totals(tensors: list[dict[str, Any]], file_bytes: int) -> dict[str, Any]:
    dtypes: dict[str, int] = {}
    for t in tensors:
        dtypes[t["dtype"]] = dtypes.get(t["dtype"], 0) + 1
    return {
        "count": len(tensors),
        "parameters": sum(t["parameters"] for t in tensors),
        "bytes": sum(t["bytes"] for t in tensors),
        "file_bytes": file_bytes,
        "dtypes": dtypes,
    }


def _versions(recorded: Any) -> dict[str, dict[str, str | None]]:
    from importlib import metadata

    from adapterkit import __version__

    out: dict[str, dict[str, str | None]] = {}
    for name, version in dict(recorded or {}).items():
        here: str | None
        if name == "adapterkit":
            here = __version__
        elif name == "python":
            import platform

            here = platform.python_version()
        else:
            try:
                here = metadata.version(name)
            except metadata.PackageNotFoundError:
                here = None
        out[str(name)] = {"recorded": str(version), "installed": here}
    return out


# ---- the plugins and the base model ------------------------------------------


def _facts(directory: Path, manifest: dict[str, Any], tensors: list[dict[str, Any]]) -> Facts:
    from adapterkit.export import base_check, compatibility

    peft_config, peft_problem, peft_warnings = compatibility.peft_config(directory)
    strategy, task, t_opts, option_problems = _plugins(manifest)
    base, source = base_check.base_status(manifest["base_model"])
    model, config = base_check.meta_model(task, t_opts, source, base)
    saved = list(getattr(peft_config, "modules_to_save", None) or [])
    prefix = compatibility.peft_prefix(peft_config)
    for t in tensors:
        t["kind"] = compatibility.tensor_kind(t["name"], saved, prefix)
    return Facts(
        directory, manifest, tensors, peft_config, peft_problem, peft_warnings, strategy, task,
        t_opts, option_problems, base, model, config,
    )  # fmt: skip


def _plugins(manifest: dict[str, Any]) -> tuple[Any, Any, Any, list[str]]:
    """(strategy, task, task options, problems): the installed plugins the manifest names (None
    each when not installed), and where the manifest's options do not fit them."""
    from adapterkit import options as opts
    from adapterkit.plugins import load_registry

    classes = load_registry().classes
    s_cls = classes["strategy"].get(manifest["strategy"]["name"])
    t_cls = classes["task"].get(manifest["task"]["name"])
    t_opts, problems = None, []
    if s_cls is not None:
        problems += opts.parse(s_cls.Options, manifest["strategy"].get("options"), "strategy")[1]
    if t_cls is not None:
        t_opts, t_err = opts.parse(t_cls.Options, manifest["task"].get("options"), "task")
        problems += t_err
    return (s_cls() if s_cls else None), (t_cls() if t_cls else None), t_opts, problems


def _strategy_section(facts: Facts) -> dict[str, Any]:
    section = facts.manifest["strategy"]
    return {
        "name": section["name"],
        "options": section.get("options") or {},
        "installed": facts.strategy is not None,
    }


def _task_section(facts: Facts) -> dict[str, Any]:
    section = facts.manifest["task"]
    return {
        "name": section["name"],
        "options": section.get("options") or {},
        "manifest": {k: v for k, v in section.items() if k not in ("name", "options")},
        "installed": facts.task is not None,
        "model_class": type(facts.model).__name__ if facts.model is not None else None,
    }


# ---- a run's figures ----------------------------------------------------------------------------

_RUN_KEYS = (
    "steps", "epochs", "train_loss", "final_eval", "best_eval", "best_step", "tokens_per_s",
    "peak_memory_bytes", "peak_memory_kind", "wall_time_s", "trainable_params", "precision",
    "device",
)  # fmt: skip


def _run_section(directory: Path, facts: Facts) -> dict[str, Any]:
    from adapterkit.task import selection

    section: dict[str, Any] = dict.fromkeys(_RUN_KEYS)
    section["note"] = ""
    file = directory / "metrics.json"
    try:
        metrics = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    except (OSError, ValueError) as exc:
        metrics, section["note"] = None, f"{file}: unreadable ({exc})"
    if isinstance(metrics, dict):
        section.update({k: metrics.get(k) for k in _RUN_KEYS})
    elif not section["note"]:
        section["note"] = "no metrics.json: the run has not finished (or was stopped)"
    section["selection_metric"] = (
        selection(facts.task, facts.task_options)[0]
        if facts.task is not None and facts.task_options is not None
        else None
    )
    section["best_dir"] = (directory / "best" / MANIFEST).is_file()
    root = directory / "checkpoints"
    section["checkpoints"] = sorted(
        (p.name for p in root.glob("step-*") if p.is_dir()),
        key=lambda n: int(n.removeprefix("step-")) if n.removeprefix("step-").isdigit() else -1,
    )
    return section
