"""`compare --tune N`: a small sweep per strategy, then the comparison at each one's own settings.

    rows = tuned.run("recipe.yaml", ["<strategy>", "<another>"], [], out_dir, trials=6)

Each strategy's sweep (`adapterkit.sweep`) searches `space`, by default the learning rate on a log
range from a tenth to three times that strategy's own recipe value (`train.lr`), in
`out_dir/tune/<strategy>/` (a whole sweep: study.db, sweep.md, trials/, best/). Its row is then
the selected trial's own run, a fresh process like every compared run (its memory, speed and
eval figures, from its metrics.json), with the sweep's one score of the selected adapter on
data.test and, under `settings`, the values it was selected with. Selection is on the eval data
alone, as in every sweep.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapterkit import options as opts
from adapterkit.comparison import runs
from adapterkit.errors import UserError
from adapterkit.recipe import Recipe
from adapterkit.search import store
from adapterkit.search.space import around


def default_space(recipe: Recipe) -> list[str]:
    """The learning rate from a tenth to three times the recipe's."""
    return [around(recipe.train.lr, "train.lr")]


def run(  # noqa: PLR0913 (recipe, strategies, overrides, out: as compare's run; the rest keywords)
    recipe_path: str | Path,
    strategies: Sequence[str],
    overrides: Sequence[str],
    out_dir: Path,
    *,
    trials: int,
    space: Sequence[str] = (),
    jobs: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sweep each strategy, compare them at their selected settings; write and return the rows."""
    strategies = list(strategies)
    runs._check_strategies(strategies)
    recipe_path, out_dir = Path(recipe_path), Path(out_dir).resolve()
    plans = runs._validate(recipe_path, strategies, overrides)
    resolved = [r for _, r, _ in plans.values() if r is not None]
    metric, higher = runs._task_metric(resolved[0]) if resolved else (None, None)
    sweep_args = {"trials": trials, "jobs": jobs, "seed": seed, "progress": progress}
    rows = []
    for i, strategy in enumerate(strategies, 1):
        run_overrides, recipe, error = plans[strategy]
        row = runs._empty_row(strategy) | {"eval_metric": metric, "higher_is_better": higher}
        if progress:
            print(f"[{i}/{len(strategies)}] {strategy}: tuning", file=sys.stderr, flush=True)
        if recipe is None:
            row["error"] = error
        else:
            row["options"] = opts.as_dict(recipe.strategy.options)
            items = list(space) or default_space(recipe)
            sweep_dir = out_dir / "tune" / strategy
            row = _tune_one(row, recipe_path, run_overrides, items, sweep_dir, sweep_args)
        rows.append(row)
    runs.settle(rows, metric, higher)
    runs.write_outputs(rows, out_dir, recipe_path, list(overrides))
    return rows


def _clear(sweep_dir: Path) -> None:
    """A previous comparison's sweep of this strategy is replaced, as its runs are."""
    if (sweep_dir / store.DATABASE).is_file():
        shutil.rmtree(sweep_dir)


def _tune_one(
    row: dict[str, Any],
    recipe_path: Path,
    run_overrides: list[str],
    space: list[str],
    sweep_dir: Path,
    sweep_args: dict[str, Any],
) -> dict[str, Any]:
    """The strategy's sweep; its row from the selected trial's run."""
    from adapterkit.search.run import sweep

    _clear(sweep_dir)
    try:
        doc = sweep(recipe_path, space, out=sweep_dir, overrides=run_overrides, **sweep_args)
    except UserError as exc:
        row["error"] = f"its sweep could not run: {exc}"
        return row
    best = doc["best"]
    if best is None:
        reasons = sorted({str(t["reason"]) for t in doc["trials"] if t["reason"]})
        row["error"] = "no trial of its sweep completed: " + "; ".join(reasons)
        return row
    run_dir = Path(best["run_dir"])
    chosen = next(t for t in doc["trials"] if t["trial"] == best["trial"])
    row.update(run_dir=str(run_dir), returncode=0, wall_time_s=chosen["wall_time_s"])
    try:
        row = runs._row_from_run(row, run_dir)
    except (OSError, ValueError) as exc:
        row["error"] = f"the selected trial's metrics.json is unreadable: {exc}"
        return row
    row["settings"] = best["params"]
    row["test_value"] = best["test_value"]  # the sweep's one score on data.test
    return row
