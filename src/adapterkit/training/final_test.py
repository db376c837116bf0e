"""The test set, scored once after training: the adapter model selection chose (best/, picked on
the eval data, else the final one), and the final one beside it. The test rows never influence
that choice."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.task import collate_all, generated_metrics
from adapterkit.training import precision

if TYPE_CHECKING:
    from torch import nn

    from adapterkit.build import Built
    from adapterkit.recipe import Recipe
    from adapterkit.strategy import Strategy
    from adapterkit.task import Task


def _score(
    task: Task, model: nn.Module, examples: list[dict], tokenizer: Any, options: Any
) -> dict:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, collate_all(task, examples, tokenizer, options, 16), options)
        metrics = {**metrics, **generated_metrics(task, model, tokenizer, examples, options)}
    model.train(was_training)
    return metrics


def test_metrics(
    task: Task,
    recipe: Recipe,
    strategy: Strategy,
    built: Built,
    examples: list[dict],
    out_dir: Path,
) -> dict[str, Any]:
    """`test_eval` (the selected adapter's figures: the one to report) and `test_eval_final`."""
    from adapterkit.storage import adapter_format

    model, tokenizer, t_opts = built.model, built.tokenizer, recipe.task.options
    out: dict[str, Any] = {"test_eval_final": _score(task, model, examples, tokenizer, t_opts)}
    out["test_eval"] = out["test_eval_final"]
    if (out_dir / "best" / adapter_format.MANIFEST).is_file():
        _, tensors = adapter_format.read_adapter(out_dir / "best")
        strategy.load_adapter_state_dict(model, tensors, recipe.strategy.options)
        out["test_eval"] = _score(task, model, examples, tokenizer, t_opts)
    out["definitions"] = {
        "test_eval": "Test-set metrics of the selected adapter (best/ if any, else final).",
        "test_eval_final": "Test-set metrics of the final adapter.",
    }
    return out


def add_test_metrics(
    metrics: dict[str, Any],
    task: Task,
    recipe: Recipe,
    trained: tuple[Strategy, Built],
    examples: list[dict],
    out_dir: Path,
) -> None:
    """The test-set figures added to `metrics` and metrics.json, under the run's autocast."""
    from adapterkit.storage.atomic import write_json

    strategy, built = trained
    dtype = precision.compute_dtype(metrics["precision"])
    with precision.autocast(built.model, dtype):
        extra = test_metrics(task, recipe, strategy, built, examples, out_dir)
    metrics["definitions"] = {**metrics["definitions"], **extra.pop("definitions")}
    metrics.update(extra)
    write_json(out_dir / "metrics.json", metrics)
