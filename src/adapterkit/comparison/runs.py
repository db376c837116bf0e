"""Run several strategies on one recipe, each in its own process, and compare what each costs.

    rows = runs.run("recipe.yaml", ["<strategy>", "<another>"], ["train.max_steps=50"], out_dir)

Every run shares the recipe's model, data, seed, steps and batch; a strategy other than the recipe's
own runs with its default options, refined by `<strategy>.<option>=value` overrides (overrides.py).
Each run is a fresh `adapterkit train` child process (child.py); a run that dies (a bad option, the
kernel's out-of-memory killer) keeps its row with the reason (failures.py) and the others still run.

Writes into `out_dir`: `runs/<strategy>/` (each run's adapter, log.jsonl, metrics.json),
`logs/<strategy>.log` (each child's output), `<strategy>.json` (one row per run), `compare.json`
(all rows), `compare.md` (the table), `pareto.png` (eval metric against peak memory, Pareto front
marked) and `loss.png` (every run's training loss on one chart).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapterkit import options as opts
from adapterkit import units
from adapterkit.comparison.child import run_child
from adapterkit.comparison.failures import OOM_KILLED, classify_failure
from adapterkit.comparison.overrides import (
    check_overrides,
    recipe_strategy_name,
    split_overrides,
    strategy_overrides,
)
from adapterkit.comparison.report import markdown_table, pareto_front, plot_losses, plot_pareto
from adapterkit.errors import UserError
from adapterkit.recipe import Recipe, resolve
from adapterkit.storage.adapter_format import MANIFEST
from adapterkit.storage.atomic import write_json
from adapterkit.task import selection
from adapterkit.training.metrics import RunMetrics

# Re-exported: callers (the CLI, tests) reach the comparison through this module.
__all__ = [
    "DEFINITIONS",
    "FIELDS",
    "METRICS_FIELDS",
    "OOM_KILLED",
    "check_overrides",
    "classify_failure",
    "markdown_table",
    "parse_size",
    "recipe_strategy_name",
    "run",
    "split_overrides",
    "strategy_overrides",
    "write_outputs",
]

# Copied from each run's metrics.json under the same name: the figures RunMetrics marks compared.
METRICS_FIELDS = RunMetrics.compared_fields()

# Every row has these keys, failed ones with None, so tables and JSON consumers see one shape.
FIELDS = (
    "strategy",
    "options",
    "error",
    "returncode",
    "run_dir",
    *METRICS_FIELDS,
    "wall_time_s",
    "trainer_wall_time_s",
    "eval_metric",
    "higher_is_better",
    "eval_value",
    "test_value",
    "settings",
    "pareto",
)

_OWN_DEFINITIONS = {
    "strategy": "The strategy this run trained with.",
    "options": "The strategy's resolved options (defaults filled in).",
    "error": "Why the run failed (null when it succeeded).",
    "returncode": "The child process's exit status (negative: killed by that signal).",
    "run_dir": "The run's directory: its adapter, log.jsonl and metrics.json.",
    "wall_time_s": "Seconds the child process ran, measured by compare: imports and loading too.",
    "trainer_wall_time_s": "The trainer's wall_time_s: fit() to metrics.json.",
    "eval_metric": "The task's selection metric, read from final_eval.",
    "higher_is_better": "Whether a higher eval_metric is better (the task says).",
    "eval_value": "eval_metric of the final adapter on the eval data.",
    "test_value": "eval_metric of the selected adapter on the test data, when there is test data.",
    "settings": "With --tune: the values its sweep selected (on the eval data) and this row used.",
    "pareto": "On the Pareto front: no other run has lower-or-equal peak memory and a metric at "
    "least as good, with one of the two strictly better.",
}
_METRIC_DEFINITIONS = RunMetrics.definitions()
# compare.json's "definitions": every row field, in row order.
DEFINITIONS = {key: _OWN_DEFINITIONS.get(key) or _METRIC_DEFINITIONS[key] for key in FIELDS}


def parse_size(text: str) -> int:
    """`units.parse_size` for `--memory-limit` (kept here for callers of the old name)."""
    return units.parse_size(text, "--memory-limit")


# ---- one row per strategy ------------------------------------------------------------------------


def _empty_row(strategy: str) -> dict[str, Any]:
    return {key: None for key in FIELDS} | {"strategy": strategy, "pareto": False}


def _metric_of(evals: Any, metric: str | None) -> float | None:
    if not isinstance(evals, dict) or metric is None or evals.get(metric) is None:
        return None
    return float(evals[metric])


def _row_from_run(row: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Fill a row from the run's metrics.json (the trainer's figures, unchanged)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in METRICS_FIELDS:
        row[key] = metrics.get(key)
    row["trainer_wall_time_s"] = metrics.get("wall_time_s")
    own = _run_metric(run_dir)
    if own is not None:
        row["eval_metric"], row["higher_is_better"] = own
    row["eval_value"] = _metric_of(metrics.get("final_eval"), row["eval_metric"])
    row["test_value"] = _metric_of(metrics.get("test_eval"), row["eval_metric"])
    return row


def _task_metric(recipe: Recipe) -> tuple[str, bool]:
    """The selection metric as the recipe's task options say (before `setup` has seen the data)."""
    from adapterkit.plugins import load_registry

    return selection(load_registry().task(recipe.task.name), recipe.task.options)


def _run_metric(run_dir: Path) -> tuple[str, bool] | None:
    """The selection metric as the run's own task options say (completed from its data by
    `setup`, e.g. label names), from its manifest; None when they cannot be read back."""
    from adapterkit.plugins import load_registry

    info = json.loads((run_dir / MANIFEST).read_text()).get("task") or {}
    try:
        task = load_registry().task(str(info.get("name")))
    except UserError:
        return None
    t_opts, _ = opts.parse(type(task).Options, info.get("options"), "task.options")
    return None if t_opts is None else selection(task, t_opts)


def _validate(
    recipe_path: Path, strategies: Sequence[str], overrides: Sequence[str]
) -> dict[str, tuple[list[str], Recipe | None, str | None]]:
    """Each run's overrides and resolved recipe, or its recipe error, before any process starts."""
    from adapterkit.plugins import load_registry

    known = load_registry().names("strategy")
    own = recipe_strategy_name(recipe_path)
    check_overrides(overrides, strategies, known, own)
    plans: dict[str, tuple[list[str], Recipe | None, str | None]] = {}
    for strategy in strategies:
        run_overrides = strategy_overrides(own, strategy, overrides, known)
        try:
            plans[strategy] = (run_overrides, resolve(recipe_path, run_overrides), None)
        except UserError as exc:
            plans[strategy] = (run_overrides, None, str(exc))
    return plans


def _check_strategies(strategies: list[str]) -> None:
    if not strategies:
        raise UserError(
            "--strategies: give at least one strategy, e.g. --strategies <one>,<another> "
            "(`adapterkit strategies` lists them)"
        )
    duplicates = sorted({s for s in strategies if strategies.count(s) > 1})
    if duplicates:
        raise UserError(f"--strategies: listed more than once: {', '.join(duplicates)}")


def run(
    recipe_path: str | Path,
    strategies: Sequence[str],
    overrides: Sequence[str],
    out_dir: Path,
    progress: bool = True,
    memory_limit_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Train the recipe once per strategy, each in a fresh process; write and return the rows."""
    strategies = list(strategies)
    _check_strategies(strategies)
    recipe_path, out_dir = Path(recipe_path), Path(out_dir).resolve()
    plans = _validate(recipe_path, strategies, overrides)
    resolved = [r for _, r, _ in plans.values() if r is not None]
    metric, higher = _task_metric(resolved[0]) if resolved else (None, None)

    rows = []
    for i, strategy in enumerate(strategies, 1):
        run_overrides, recipe, error = plans[strategy]
        row = _empty_row(strategy) | {"eval_metric": metric, "higher_is_better": higher}
        if progress:
            print(f"[{i}/{len(strategies)}] {strategy}", file=sys.stderr, flush=True)
        if recipe is None:
            row["error"] = error
        else:
            row["options"] = opts.as_dict(recipe.strategy.options)
            row = _train_one(row, recipe_path, run_overrides, out_dir, progress, memory_limit_bytes)
        if progress:
            outcome = f"failed: {row['error']}" if row["error"] else f"{row['wall_time_s']:.1f} s"
            print(f"[{i}/{len(strategies)}] {strategy}: {outcome}", file=sys.stderr, flush=True)
        rows.append(row)

    settle(rows, metric, higher)
    write_outputs(rows, out_dir, recipe_path, list(overrides))
    return rows


def settle(rows: list[dict[str, Any]], metric: str | None, higher: bool | None) -> None:
    """Every row names the runs' own metric (the first successful run's), and the Pareto front
    is marked."""
    done = next((r for r in rows if not r["error"]), None)
    if done is not None:  # the runs' own answer: every row names the same metric
        metric, higher = done["eval_metric"], done["higher_is_better"]
        for row in rows:
            row.update(eval_metric=metric, higher_is_better=higher)
    if metric is not None:
        front = pareto_front(rows, "eval_value", bool(higher))
        for row in rows:
            row["pareto"] = any(row is f for f in front)


def _train_one(
    row: dict[str, Any],
    recipe_path: Path,
    run_overrides: list[str],
    out_dir: Path,
    progress: bool,
    memory_limit_bytes: int | None,
) -> dict[str, Any]:
    strategy = row["strategy"]
    run_dir = out_dir / "runs" / strategy
    cmd = [sys.executable, "-m", "adapterkit", "train", str(recipe_path), *run_overrides]
    cmd += ["--out", str(run_dir), "--overwrite"] + ([] if progress else ["--no-progress"])
    log_path = out_dir / "logs" / f"{strategy}.log"
    done = run_child(cmd, log_path, progress, memory_limit_bytes)
    row.update(returncode=done.returncode, wall_time_s=done.seconds, run_dir=str(run_dir))
    if done.returncode != 0:
        limited = memory_limit_bytes is not None
        row["error"] = classify_failure(done.returncode, done.tail, memory_limited=limited)
        return row
    try:
        return _row_from_run(row, run_dir)
    except (OSError, ValueError) as exc:
        row["error"] = f"the run finished but its metrics.json is unreadable: {exc}"
        return row


def write_outputs(
    rows: Sequence[dict[str, Any]], out_dir: Path, recipe_path: Path, overrides: list[str]
) -> None:
    """<strategy>.json per run, compare.json, compare.md, pareto.png and loss.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        write_json(out_dir / f"{row['strategy']}.json", row)
    write_json(
        out_dir / "compare.json",
        {
            "recipe": str(recipe_path),
            "overrides": overrides,
            "rows": list(rows),
            "definitions": DEFINITIONS,
        },
    )
    (out_dir / "compare.md").write_text(markdown_table(rows))
    plot_pareto(rows, out_dir / "pareto.png")
    ok = {r["strategy"]: Path(r["run_dir"]) for r in rows if not r["error"] and r["run_dir"]}
    plot_losses(ok, out_dir / "loss.png")
