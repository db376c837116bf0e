"""`adapterkit merge`: an adapter merged into its base, as a complete Hugging Face model directory.

    merged = merged_model(Path("runs/x"), dtype="fp32")       # in memory: a plain transformers model
    report = merge(Path("runs/x"), Path("merged/x"))          # written and verified (verify.json)

The merge itself is the strategy's (`Strategy.merge`, reached through `strategy.merged_model`):
trained tensors already are the model's parameters (full, head, last_n), a peft wrapper merges
itself, a 4-bit base is dequantized first. It always merges in float32 and casts to `dtype` last.
The result is copied into a fresh model of the task's class (loaded the way the task loads it, so
its config carries the label names), which refuses any tensor whose name or shape differs: what is
written is the task's plain model and nothing else. The directory holds safetensors weights, the
config, the tokenizer with its chat template, and a generation config with the task's stop tokens
(`Task.generation_settings`). It is written under a temporary sibling name, verified from the files
(`verify`), and renamed into place only when the verification passes (or `force`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import AdapterError, MergeError, PluginError, VerificationFailed
from adapterkit.export.adapted import BASES, plain_kwargs

if TYPE_CHECKING:
    from torch import nn

    from adapterkit.api import Loaded
    from adapterkit.storage.sources import ModelSource
    from adapterkit.task import Task

log = logging.getLogger("adapterkit")

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""`--dtype` choices and the torch dtype each writes."""

VERIFY_FILE = "verify.json"


@dataclass
class Merged:
    """A merged model in memory.

    model:    the task's plain transformers model (no wrapper, no adapter or 4-bit layers) in
              `dtype`, its config and generation config as the exported directory has them.
    loaded:   always None: the base + adapter it came from is consumed by the merge (peft's
              merge replaces its layers); `api.load(adapter)` builds it again to compare with.
    """

    model: nn.Module
    tokenizer: Any
    manifest: dict[str, Any]
    loaded: Loaded | None
    task: Task
    task_options: Any
    dtype: str
    base: str
    seconds: float


def check_choices(dtype: str, base: str) -> None:
    """A MergeError for a dtype or base that is not offered."""
    if dtype not in DTYPES:
        raise MergeError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if base not in BASES:
        raise MergeError(f"--base {base!r}: expected one of {', '.join(BASES)}")


def merged_model(adapter: Path, *, dtype: str = "fp32", base: str = "dequantized") -> Merged:
    """The adapter at `adapter` merged into its base (`base`: "dequantized", the weights it trained
    on; "original", the checkpoint's own), as the task's plain model in `dtype` (fp32|bf16|fp16)."""
    from adapterkit.export.adapted import adapted, base_source, plugins_of

    check_choices(dtype, base)
    start = time.perf_counter()
    found = plugins_of(Path(adapter))
    source = base_source(found)  # a missing base is reported naming the adapter
    merged = merge_loaded(adapted(found, source, base), source, dtype=dtype, base=base)
    merged.seconds = time.perf_counter() - start
    return merged


def merge_loaded(loaded: Loaded, source: ModelSource, *, dtype: str, base: str) -> Merged:
    """`loaded` (base + adapter from `export.adapted`, on `base`) merged; its model is consumed.
    `source` is its base model's files, from which a fresh model of the task's class is loaded
    to hold the merged weights."""
    start = time.perf_counter()
    target, _ = loaded.task.load_model(source, loaded.task_options, plain_kwargs())
    model = _into(target, _merged(loaded, source.name), loaded.strategy.name, DTYPES[dtype])
    _set_generation(model, loaded)
    tokenizer = loaded.tokenizer
    template = loaded.manifest["task"].get("chat_template")
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    return Merged(
        model,
        tokenizer,
        loaded.manifest,
        None,
        loaded.task,
        loaded.task_options,
        dtype,
        base,
        time.perf_counter() - start,
    )


def _merged(source: Loaded, base: str) -> nn.Module:
    """The strategy's merge of `source.model`, in float32 (a half base is upcast first, so the
    update is not rounded into it; 4-bit weights are left to the strategy)."""
    import torch

    from adapterkit.strategy import is_4bit, merged_model

    for p in source.model.parameters():
        if p.is_floating_point() and not is_4bit(p) and p.dtype != torch.float32:
            p.data = p.data.float()
    try:
        return merged_model(source.strategy, source.model, source.strategy_options)
    except ValueError as exc:  # peft's safe merge: "NaNs detected in the merged weights"
        raise AdapterError(f"the adapter cannot be merged into {base}: {exc}") from exc


def _into(target: nn.Module, merged: nn.Module, strategy: str, dtype: str) -> nn.Module:
    """`target` (a fresh model of the task's class) holding `merged`'s weights, in `dtype`; a
    merge that left other tensor names or shapes than the task's plain model is refused."""
    import torch

    state = merged.state_dict()
    expected = target.state_dict()
    missing, stray = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or stray or shapes:
        raise PluginError(
            f"strategy '{strategy}': its merge leaves a model that is not the task's plain model "
            f"(missing: {missing[:5]}; unexpected: {stray[:5]}; shapes: {shapes[:5]}); a "
            "strategy that wraps the model needs a merge(model, options) member"
        )
    target.load_state_dict(state)
    del state, merged
    target.to(getattr(torch, dtype))
    return target.eval()


def _set_generation(model: nn.Module, source: Loaded) -> None:
    """The task's generation-config fields (stop tokens) on the model's generation config."""
    from adapterkit.task import generation_settings

    config = getattr(model, "generation_config", None)
    if config is None:
        return
    for key, value in generation_settings(
        source.task, source.task_options, source.tokenizer
    ).items():
        setattr(config, key, value)


# ---- writing -------------------------------------------------------------------------------------


def check_out(out: Path) -> None:
    """A MergeError unless `out` can be created: it must not exist, and its parent must be (or
    become) a directory."""
    if out.exists() or out.is_symlink():
        kind = "a directory" if out.is_dir() else "a file"
        raise MergeError(
            f"{out}: already exists ({kind}); merge writes a new directory and never replaces "
            "one: remove it or choose another --out"
        )
    for parent in (out.parent, *out.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise MergeError(f"{parent}: not a directory, so {out} cannot be created in it")
            break


def write_model_dir(merged: Merged, path: Path) -> None:
    """The merged model's files into `path` (an existing, empty directory)."""
    model: Any = merged.model
    model.save_pretrained(str(path))
    merged.tokenizer.save_pretrained(str(path))
    generation = getattr(model, "generation_config", None)
    if generation is not None and not (path / "generation_config.json").exists():
        generation.save_pretrained(str(path))


def merge(
    adapter: Path,
    out: Path,
    *,
    dtype: str = "fp32",
    base: str = "dequantized",
    data: Path | None = None,
    max_rows: int = 64,
    force: bool = False,
) -> dict[str, Any]:
    """Merge `adapter` into its base and write a Hugging Face model directory at `out`, verified
    against base + adapter on at most `max_rows` held-out rows (the run's eval data, or `data`).

    Returns the verification report, also written as `out/verify.json`. A report over its
    tolerance raises VerificationFailed and leaves nothing at `out`, unless `force` (then the
    directory is kept and the report says it failed).
    """
    from adapterkit.export import verify
    from adapterkit.export.adapted import adapted, base_source, plugins_of
    from adapterkit.storage.atomic import fsync_dir, fsync_tree, write_json

    adapter, out = Path(adapter), Path(out)
    check_choices(dtype, base)
    check_out(out)
    found = plugins_of(adapter)
    source = base_source(found)
    rows, where = verify.held_out_rows(found, data, max_rows)  # before any model loads
    start = time.perf_counter()
    trained = adapted(found, source, "dequantized")
    reference = trained if base == "dequantized" else adapted(found, source, "original")
    merged = merge_loaded(_copy(reference), source, dtype=dtype, base=base)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        write_model_dir(merged, tmp)
        del merged  # its memory, before the written model loads
        report = verify.verify_written(
            tmp, verify.batches_of(trained, rows), dtype=dtype, trained=trained, reference=reference
        )
        report.update(adapter=str(adapter), out=str(out), data=where, rows=len(rows))
        report["merge_seconds"] = round(seconds, 3)
        write_json(tmp / VERIFY_FILE, report)
        if not report["passed"] and not force:
            raise VerificationFailed(verify.failure_message(report, adapter), report)
        fsync_tree(tmp)
        check_out(out)  # nothing appeared there meanwhile
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not report["passed"]:
        log.warning("kept %s although its verification failed (--force)", out)
    return report


def _copy(loaded: Loaded) -> Loaded:
    """`loaded` with a deep copy of its model, to merge (and so consume) while `loaded` stays to
    compare with: cheaper than loading it again."""
    import copy
    import dataclasses

    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
