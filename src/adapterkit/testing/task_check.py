"""`check_task`: one call that proves a task meets the Task protocol, on a tiny random model.

On a small data file (the built-in tasks have one; pass `data=` for another task) it runs every
member the trainer and the planner use and checks what they promise:
  - the class registers; its options (before and after `setup`) round-trip through a recipe;
  - `read` gives rows, `model_parts` names modules `load_model`'s model has, `encode` examples;
  - `collate` pads them into a dict of tensors with `attention_mask`; `targets` counts the loss
    terms (a batch's count is the sum of its rows'); `loss` is *summed* (a batch's loss is the sum
    of its rows' losses, so the trainer's mean does not depend on the batch size) with a gradient;
  - `evaluate` returns the selection metric and `eval_loss` (the mean per target over the whole
    set), independent of the batching, JSON-serialisable; `manifest` is JSON-serialisable;
  - `meta_model` builds the same parameters (names, shapes, dtypes) on the meta device, and
    `predict`/`generate`, where the task has them, answer every row.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.testing._report import Check, differences, parse_options, registers, round_trip
from adapterkit.testing.fixtures import TASK_CASES, model_dir, workspace

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.storage.sources import ModelSource
    from adapterkit.task import Task

Batch = dict[str, "torch.Tensor"]

_NEEDS_DATA = "pass data=Path(a small training file in the task's format)"


def check_task(
    task_cls: type[Task], options: Any = None, *, data: Path | None = None, model: str | None = None
) -> None:
    """Check `task_cls` with `options` (an Options instance, a dict, or None) on `data`, a small
    training file in the task's format (at least 4 usable rows; default: the built-in task's
    tiny data), with `model` ("llama", "bert" or a model directory; default: the built-in
    task's, else "llama"). Raises AssertionError (ConformanceError) naming the failed check.
    """
    check = Check(f"check_task({getattr(task_cls, '__name__', task_cls)})")
    registers(check, "task", task_cls)
    case = TASK_CASES.get(task_cls.name)
    if data is None and case is None:
        check.fail("data", _NEEDS_DATA)
    if options is None and data is None and case is not None:
        options = case.options
    options = parse_options(check, task_cls, options, "task.options")
    round_trip(check, task_cls, options, "task.options")
    with tempfile.TemporaryDirectory(prefix="adapterkit-check-") as tmp:
        if data is None:
            if case is None:  # refused above already; this tells the type checker
                check.fail("data", _NEEDS_DATA)
            data = workspace(case, Path(tmp)).data
        path = model_dir(model or (case.model if case else "llama"), Path(tmp))
        _check_all(check, task_cls(), options, Path(data), path)


def _check_all(check: Check, task: Task, options: Any, data: Path, path: Path) -> None:
    with check.step("read"):
        rows = task.read(data, options)
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        check.fail("read", f"must return a non-empty list of dicts, got {type(rows).__name__}")
    with check.step("setup"):
        t_opts = task.setup(rows, options)
    if not isinstance(t_opts, type(task).Options):
        check.fail("setup", f"must return the task's Options, got {type(t_opts).__name__}")
    round_trip(check, type(task), t_opts, "task.options (after setup)")
    model, tokenizer, source = _load(check, task, t_opts, path)
    with check.step("encode"):
        examples = task.encode(rows, tokenizer, t_opts)
    if not isinstance(examples, list) or len(examples) < 4:
        check.fail("encode", f"{len(examples)} example(s) from {len(rows)} rows; need 4 or more")
    _check_batches(check, task, model, examples[:4], tokenizer, t_opts)
    _check_evaluate(check, task, model, examples, tokenizer, t_opts)
    with check.step("manifest is JSON-serialisable"):
        manifest = task.manifest(t_opts, tokenizer)
        json.dumps(manifest)
    if not isinstance(manifest, dict):
        check.fail("manifest", f"must return a dict, got {type(manifest).__name__}")
    _check_meta_model(check, task, t_opts, source, model)
    _check_optional(check, task, model, tokenizer, rows[:3], t_opts)


def _load(check: Check, task: Task, t_opts: Any, path: Path) -> tuple[nn.Module, Any, ModelSource]:
    import torch

    from adapterkit.storage import sources

    with check.step("model_parts and load_model"):
        source = sources.resolve(str(path))
        parts = task.model_parts(source, t_opts)
        model, tokenizer = task.load_model(source, t_opts, {"dtype": torch.float32})
    modules = dict(model.named_modules())
    missing = [name for name in parts.head if name not in modules]
    if not parts.head or missing:
        check.fail(
            "model_parts names the head",
            f"head {parts.head} has no module(s) {missing} in the model",
        )
    return model.eval(), tokenizer, source


def _check_batches(
    check: Check, task: Task, model: nn.Module, examples: list[dict], tok: Any, t_opts: Any
) -> None:
    import torch

    with check.step("collate"):
        batch = task.collate(examples, tok, t_opts)
        singles = [task.collate([e], tok, t_opts) for e in examples]
    if not isinstance(batch, dict) or "attention_mask" not in batch:
        check.fail("collate", "must return a dict of tensors holding 'attention_mask'")
    with check.step("targets"):
        count, counts = task.targets(batch), [task.targets(b) for b in singles]
    if not isinstance(count, int) or count <= 0 or sum(counts) != count:
        check.fail("targets counts loss terms", f"{count!r} for 4 rows, {counts} one at a time")
    with check.step("loss"), torch.no_grad():
        whole, parts = task.loss(model, batch), [float(task.loss(model, b)) for b in singles]
    if whole.ndim != 0 or not torch.isfinite(whole):
        check.fail("loss", f"must be a finite scalar tensor, got {whole!r}")
    if not math.isclose(float(whole), sum(parts), rel_tol=1e-4, abs_tol=1e-5):
        check.fail(
            "the loss is summed, not averaged",
            f"4 rows give {float(whole):.6g}, the sum of their losses one at a time is "
            f"{sum(parts):.6g}; return the sum (the trainer divides by targets() over the "
            "accumulation window, so batch size and accumulation do not change the gradient)",
        )
    with check.step("the loss has a gradient"):
        task.loss(model.train(), batch).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        model.eval()
    if not grads:
        check.fail("the loss has a gradient", "backward() reached no parameter of the model")


def _check_evaluate(
    check: Check, task: Task, model: nn.Module, examples: list[dict], tok: Any, t_opts: Any
) -> None:
    import torch

    from adapterkit.task import collate_all, selection

    by_two = collate_all(task, examples, tok, t_opts, 2)
    with check.step("evaluate"), torch.no_grad():
        metrics = task.evaluate(model, by_two, t_opts)
        at_once = task.evaluate(model, collate_all(task, examples, tok, t_opts, 64), t_opts)
        mean = sum(float(task.loss(model, b)) for b in by_two) / sum(map(task.targets, by_two))
        json.dumps(metrics)
    want = (selection(task, t_opts)[0], "eval_loss")
    bad = [k for k in want if not isinstance(metrics.get(k), (int, float))]
    if bad or not all(math.isfinite(metrics[k]) for k in want):
        check.fail("evaluate", f"must return finite numbers for {want}; got {metrics!r}")
    if not math.isclose(metrics["eval_loss"], mean, rel_tol=1e-4, abs_tol=1e-5):
        check.fail(
            "eval_loss is the mean per target over the whole set",
            f"{metrics['eval_loss']!r}, while the summed losses / targets() give {mean!r}",
        )
    close = lambda a, b: not isinstance(a, float) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)  # noqa: E731
    diff = differences(metrics, at_once, close, ("in batches of 2", "in one batch"))
    if diff:
        check.fail("evaluate does not depend on the batching", diff)


def _check_meta_model(
    check: Check, task: Task, t_opts: Any, source: ModelSource, model: nn.Module
) -> None:
    from adapterkit import task as task_api
    from adapterkit.storage import sources

    with check.step("meta_model builds the model on the meta device"):
        config = sources.load_config(source)
        meta = task_api.meta_model(task, config, t_opts)
        logits = task_api.logits_bytes(task, 2, 16, config, t_opts)
    off = [n for n, p in meta.named_parameters() if p.device.type != "meta"]
    if off:
        check.fail("meta_model builds on the meta device", f"parameters elsewhere: {off[:5]}")

    def layout(m: nn.Module) -> dict[str, tuple]:
        return {n: (*p.shape, str(p.dtype)) for n, p in m.named_parameters()}

    diff = differences(layout(meta), layout(model), lambda a, b: a == b, ("on meta", "loaded"))
    if diff:
        check.fail("meta_model builds the model load_model loads", diff)
    if not isinstance(logits, int) or logits <= 0:
        check.fail("logits_bytes", f"must be a positive int, got {logits!r}")


def _check_optional(
    check: Check, task: Task, model: nn.Module, tok: Any, rows: list[dict], t_opts: Any
) -> None:
    predict, generate = getattr(task, "predict", None), getattr(task, "generate", None)
    if predict is not None:
        with check.step("predict"):
            predictions = predict(model, tok, rows, t_opts, batch_size=2)
            json.dumps(predictions)
        if not isinstance(predictions, list) or len(predictions) != len(rows):
            check.fail(
                "predict", f"must return one dict per row ({len(rows)}), got {predictions!r}"
            )
    if generate is not None:
        with check.step("generate"):
            text = generate(model, tok, "hello", t_opts, max_new_tokens=2)
        if not isinstance(text, str):
            check.fail("generate", f"must return a str, got {type(text).__name__}")
