"""The Python API: the data flow (docs/architecture.md) composed once. The CLI and `compare` call it.

from adapterkit import api
from adapterkit.recipe import resolve

metrics = api.train(resolve("recipes/smollm2/lora.yaml", ["train.max_steps=10"]), Path("runs/x"))
model = api.load(Path("runs/x"))                 # base + adapter, ready for inference
print(api.generate("Name three colours.", adapter=Path("runs/x")))
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import yaml

from adapterkit import options as opts
from adapterkit.build import LoadSettings, build_model
from adapterkit.errors import AdapterError, OutOfMemoryError, UserError
from adapterkit.recipe import Recipe
from adapterkit.storage import sources
from adapterkit.storage.run_dir import check_resumable, recover_run_dir
from adapterkit.strategy import Strategy, extra_files
from adapterkit.task import Task, collate_all, generated_metrics
from adapterkit.training import precision

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from torch import nn
    from typing_extensions import Unpack

    from adapterkit.sampling import Keywords


log = logging.getLogger("adapterkit")


@dataclasses.dataclass
class Loaded:
    """A base model with an adapter applied, and what is needed to use it."""

    model: nn.Module
    tokenizer: Any
    task: Task
    task_options: Any
    strategy: Strategy
    strategy_options: Any
    manifest: dict[str, Any]
    compute_dtype: str | None = None  # autocast dtype over a half base with fp32 trained weights

    def autocast(self) -> AbstractContextManager[object]:
        """The arithmetic the adapter trained in (bf16 autocast over a bf16 base, say)."""
        return precision.autocast(self.model, self.compute_dtype)


def quiet_known_notices() -> None:
    """Hide two library notices a user cannot act on (see README, "Known notices").

    bitsandbytes logs that the optional `kernels` package is missing (it would fetch kernels from a
    hub, which adapterkit never does; the built-in CPU kernels work), and peft calls a transformers
    API that transformers 5 marks deprecated.
    """
    import warnings

    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "gemm_4bit_forward" not in str(record.msg)
    )


def _read(task: Task, path: str | None, task_options: Any, limit: int | None = None) -> list[dict]:
    if path is None:
        return []
    rows = task.read(Path(path), task_options)
    return rows[:limit] if limit else rows


def _read_data(task: Task, recipe: Recipe) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, eval, test) rows as the recipe's data section says: the holdout split off the
    training file, the row limits applied. The test rows never take part in selection."""
    data, t_opts = recipe.data, recipe.task.options
    train_rows = _read(task, data.train, t_opts)
    eval_rows = _read(task, data.eval, t_opts)
    if data.holdout:
        train_rows, eval_rows = _holdout(train_rows, data.holdout, data.train)
    train_rows = train_rows[: data.max_train_rows] if data.max_train_rows else train_rows
    eval_rows = eval_rows[: data.max_eval_rows] if data.max_eval_rows else eval_rows
    return train_rows, eval_rows, _read(task, data.test, t_opts)


def _holdout(rows: list[dict], n: int, where: str) -> tuple[list[dict], list[dict]]:
    """Split off a fixed slice of n rows (seed 0, whatever train.seed is) for eval and selection."""
    import random

    if n >= len(rows):
        raise UserError(f"data.holdout: {n} rows asked for, {where} has only {len(rows)}")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def train(
    recipe: Recipe,
    out_dir: Path,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    resume_hint: str | None = None,
) -> dict[str, Any]:
    """Train as `recipe` says; the adapter, logs and metrics.json land in `out_dir`.

    `resume`: continue from the latest checkpoint in `out_dir/checkpoints`, which must have been
    written with the same resolved recipe except `train.max_steps`. `resume_hint` ends the message
    of a run stopped by SIGINT/SIGTERM (the CLI passes the exact command).
    """
    from adapterkit.planning import report
    from adapterkit.storage import manifest
    from adapterkit.training import distributed, final_test, resolve, trainer
    from adapterkit.training.inputs import AdapterBinding

    out_dir = Path(out_dir)
    run = _prepare(recipe, out_dir, overwrite, resume)
    recipe, task, strategy = run.recipe, run.task, run.strategy
    s_opts, t_opts = recipe.strategy.options, recipe.task.options
    source = sources.resolve(recipe.model.name)
    cfg, model_section = resolve.settings(recipe)
    # Seeded just before the weights load: a new head's initialisation depends on it.
    built = build_model(source, task, t_opts, strategy, s_opts, model_section, seed=cfg.seed)
    if cfg.precision != "fp32":
        precision.upcast_trainable(built.model)  # fp32 master weights over the half-precision base
    data, test_examples = _encode(run, built.tokenizer)
    as_loaded = dataclasses.replace(recipe, model=model_section)  # the base dtype it trained on
    save = _saver(
        strategy, s_opts, manifest.build(as_loaded, source, task, built.tokenizer), recipe
    )
    try:
        metrics = trainer.fit(
            built.model,
            data,
            AdapterBinding.of(strategy, s_opts, save),
            dataclasses.replace(cfg, gradient_checkpointing=resolve.checkpointing(recipe)),
            out_dir,
            resume=resolve.resume(run.checkpoint, recipe, out_dir, resume_hint),
            progress=progress,
            quantized_strategies=report.quantizing_strategies(),
        )
    except OutOfMemoryError as exc:
        raise OutOfMemoryError(f"{exc}\n{report.plan_advice(recipe)}") from exc
    # The trained model computes as it trained from here on: under the run's autocast.
    precision.autocast_forward(built.model, precision.compute_dtype(cfg.precision))
    if test_examples and distributed.is_main_process():  # the main one writes metrics.json
        final_test.add_test_metrics(
            metrics, run.task, run.recipe, (run.strategy, built), test_examples, out_dir
        )
    return metrics


@dataclasses.dataclass
class _Prepared:
    """A run before its model: the recipe completed from the data, the plugins, the rows."""

    recipe: Recipe
    task: Task
    strategy: Strategy
    rows: tuple[list[dict], list[dict], list[dict]]
    checkpoint: Path | None


def _prepare(recipe: Recipe, out_dir: Path, overwrite: bool, resume: bool) -> _Prepared:
    """The run directory made ready, the plugins found, and the data read and checked, all
    before the model loads: a bad line or a refused resume should cost milliseconds."""
    from adapterkit.plugins import load_registry
    from adapterkit.training import distributed

    # The main process prepares (it may replace an older run); the others wait for its answer.
    checkpoint = distributed.prepare_run_dir(out_dir, overwrite, resume)
    quiet_known_notices()
    registry = load_registry()
    strategy = registry.strategy(recipe.strategy.name)
    task = registry.task(recipe.task.name)
    rows = _read_data(task, recipe)
    t_opts = task.setup(rows[0], recipe.task.options)  # e.g. label names, for the head size
    recipe = dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, options=t_opts))
    if checkpoint is not None:
        check_resumable(checkpoint, recipe)
    return _Prepared(recipe, task, strategy, rows, checkpoint)


def _encode(run: _Prepared, tokenizer: Any) -> tuple[Any, list[dict] | None]:
    """The training data as the loop takes it, and the encoded test rows (None without any)."""
    from adapterkit.training.inputs import TrainData

    task, t_opts = run.task, run.recipe.task.options
    train_rows, eval_rows, test_rows = run.rows
    train_examples = task.encode(train_rows, tokenizer, t_opts)
    eval_examples = task.encode(eval_rows, tokenizer, t_opts) if eval_rows else None
    test_examples = task.encode(test_rows, tokenizer, t_opts) if test_rows else None
    if not train_examples:
        raise UserError(
            f"{run.recipe.data.train}: no usable training rows (all dropped by truncation?)"
        )
    return TrainData(task, t_opts, train_examples, eval_examples, tokenizer), test_examples


def _saver(
    strategy: Strategy, options: Any, manifest: dict, recipe: Recipe
) -> Callable[[nn.Module, Path], int]:
    """Writes the adapter directory: the strategy's tensors and extra files, the manifest and the
    resolved recipe; returns the adapter's size in bytes."""
    from adapterkit.storage import adapter_format

    resolved_yaml = yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode()

    def save(model: nn.Module, path: Path) -> int:
        extra = extra_files(strategy, model, options)
        extra["recipe.yaml"] = resolved_yaml
        tensors = strategy.adapter_state_dict(model, options)
        return adapter_format.save_adapter(path, tensors, manifest, extra, keep_other_files=True)

    return save


def load(adapter_dir: Path, base: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """Load the base model named in the adapter's manifest (or `base`) and apply the adapter.

    Never runs code from the adapter: safetensors only; every manifest field is type-checked and
    every tensor is checked against the model (name, shape, dtype) before any weight is applied.
    A base model that needs `trust_remote_code` loads only when the caller passes it: a manifest
    is a file someone handed over, and cannot switch on running a model's code by itself.
    """
    from adapterkit.plugins import load_registry
    from adapterkit.storage import adapter_format

    quiet_known_notices()
    adapter_dir = Path(adapter_dir)
    recover_run_dir(adapter_dir)
    manifest, tensors = adapter_format.read_adapter(adapter_dir)
    adapter_format.check_manifest(manifest, f"{adapter_dir}/{adapter_format.MANIFEST}")
    registry = load_registry()
    s_name, t_name = manifest["strategy"]["name"], manifest["task"]["name"]
    base_info = manifest["base_model"]
    if base_info.get("trust_remote_code") and not trust_remote_code:
        raise AdapterError(
            f"{adapter_dir}/{adapter_format.MANIFEST}: the base model was trained with "
            "trust_remote_code (it runs Python code shipped with the model); adapterkit does not "
            "run it on an adapter's say-so. Call api.load(..., trust_remote_code=True) if you "
            "trust that model"
        )
    strategy, task = registry.strategy(s_name), registry.task(t_name)
    s_opts, s_err = opts.parse(
        type(strategy).Options, manifest["strategy"].get("options"), "strategy"
    )
    t_opts, t_err = opts.parse(type(task).Options, manifest["task"].get("options"), "task")
    if s_err or t_err:
        raise AdapterError(f"{adapter_dir}/adapterkit.json: " + "; ".join(s_err + t_err))

    source = sources.resolve(base or base_info["name"])
    adapter_format.check_base(manifest, sources.fingerprint(source), source.name)
    settings = LoadSettings(
        base_info.get("dtype", "float32"), bool(base_info.get("trust_remote_code"))
    )
    built = build_model(source, task, t_opts, strategy, s_opts, settings)
    if mixed := precision.trained_mixed(settings.dtype, tensors):  # rebuilt as it trained
        precision.upcast_trainable(built.model)
    model, tokenizer = built.model, built.tokenizer
    adapter_format.check_tensors(
        tensors,
        strategy.adapter_state_dict(model, s_opts),
        str(adapter_dir / adapter_format.WEIGHTS),
    )
    strategy.load_adapter_state_dict(model, tensors, s_opts)
    model.eval()
    dtype = settings.dtype if mixed else None  # and run under the autocast it trained in
    precision.autocast_forward(model, dtype)
    return Loaded(model, tokenizer, task, t_opts, strategy, s_opts, manifest, dtype)


def evaluate(adapter_dir: Path, data: Path, batch_size: int = 8) -> dict[str, Any]:
    """The task's metrics for an adapter on a data file in the task's training format."""
    loaded = load(adapter_dir)
    rows = loaded.task.read(Path(data), loaded.task_options)
    examples = loaded.task.encode(rows, loaded.tokenizer, loaded.task_options)
    if not examples:
        raise UserError(f"{data}: no usable rows")
    batches = collate_all(loaded.task, examples, loaded.tokenizer, loaded.task_options, batch_size)
    import torch

    with torch.no_grad(), loaded.autocast():
        metrics = loaded.task.evaluate(loaded.model, batches, loaded.task_options)
        extra = generated_metrics(
            loaded.task, loaded.model, loaded.tokenizer, examples, loaded.task_options
        )
    return {**metrics, **extra}


def predict(
    adapter_dir: Path,
    data: Path,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    **sampling: Unpack[Keywords],
) -> list[dict[str, Any]]:
    """Per-row predictions for a file in the task's format: a label and score, or a tag per word;
    for a task that generates, the output (greedy, or sampled: temperature, top_p, seed) with the
    row's prompt and references (rows may lack them)."""
    from adapterkit import generating
    from adapterkit.sampling import Settings

    settings = Settings(max_new_tokens=max_new_tokens, batch_size=batch_size, **sampling)
    return generating.predict(Path(adapter_dir), Path(data), settings)


@overload
def generate(
    prompt: str,
    adapter: Path | None = None,
    model: str | None = None,
    max_new_tokens: int = 128,
    task: str | None = None,
    batch_size: int = 8,
    **sampling: Unpack[Keywords],
) -> str: ...
@overload
def generate(
    prompt: list[str],
    adapter: Path | None = None,
    model: str | None = None,
    max_new_tokens: int = 128,
    task: str | None = None,
    batch_size: int = 8,
    **sampling: Unpack[Keywords],
) -> list[str]: ...
def generate(
    prompt: str | Sequence[str],
    adapter: Path | None = None,
    model: str | None = None,
    max_new_tokens: int = 128,
    task: str | None = None,
    batch_size: int = 8,
    **sampling: Unpack[Keywords],
) -> str | list[str]:
    """The answer to `prompt` in the task's format (a list of prompts: one answer each, in order),
    with an adapter or a bare base model (and `task`, the registered task to prompt it as;
    optional when only one task generates), `batch_size` prompts at a time. Greedy by default;
    `sampling`: temperature (0: greedy), top_p (1), seed (None: a fresh one), as
    adapterkit.sampling.Settings; the same seed gives the same answers at any batch size."""
    from adapterkit import generating
    from adapterkit.sampling import Settings

    settings = Settings(max_new_tokens=max_new_tokens, batch_size=batch_size, **sampling)
    if isinstance(prompt, str):
        return generating.generate([prompt], adapter, model, task, settings)[0]
    return generating.generate(list(prompt), adapter, model, task, settings)


def summary(metrics: dict[str, Any], out_dir: Path) -> str:
    """A few lines for the terminal after training."""
    lines = [f"adapter: {out_dir}"]
    for key in (
        "trainable_params",
        "trainable_percent",
        "adapter_bytes",
        "train_loss",
        "tokens_per_s",
        "peak_memory_bytes",
        "wall_time_s",
    ):
        if key in metrics:
            lines.append(f"  {key}: {metrics[key]}")
    for key in ("final_eval", "best_eval"):
        if metrics.get(key):
            lines.append(f"  {key}: " + json.dumps(metrics[key]))
    return "\n".join(lines)
