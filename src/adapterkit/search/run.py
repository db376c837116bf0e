"""`sweep`: search a recipe's settings with Optuna, each trial in its own process.

    from adapterkit.search import sweep
    result = sweep("recipe.yaml", ["train.lr=log(1e-5,1e-3)"], trials=12, out=Path("runs/s"))

The order of things: every input is checked (the recipe, the space against it, the eval data the
selection needs, --out) before any trial runs; the study opens under its lock; the recipe's own
values are queued as the first trial (where the space holds them); `jobs` worker threads each ask
the study for a trial and run it (trial.py); at the end the trial with the best selection metric is
copied to best/ and scored once on data.test (select.py), and the report is written (report.py).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from adapterkit import units
from adapterkit.errors import TrainingInterrupted, UserError
from adapterkit.search import report, select, store
from adapterkit.search.space import Spec, baseline, check_space, parse_space
from adapterkit.search.trial import Context, Guard, Outcome, run_trial, trial_overrides
from adapterkit.storage.atomic import json_safe

STATES = {store.COMPLETE: "COMPLETE", store.PRUNED: "PRUNED"}  # every other status is a FAIL


def sweep(  # noqa: PLR0913 (the public signature: everything after `recipe, space` is keyword-only)
    recipe: str | Path | Mapping[str, Any],
    space: Sequence[str] | Mapping[str, str],
    *,
    trials: int,
    out: str | Path,
    budget: str | int | None = None,
    jobs: int = 1,
    resume: bool = False,
    seed: int = 0,
    overrides: Sequence[str] = (),
    pruner: Any = None,
    use_baseline: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or, with `resume`, continue) a sweep of `trials` trials in all; returns sweep.json.

    `recipe`: a recipe file, or a mapping of its sections (written, resolved, to
    <out>/recipe.yaml for the trials); `space`: `KEY=SPEC` items (or a mapping KEY -> SPEC);
    `budget`: a size ('8GiB') or bytes, trials the plan says cannot fit are refused; `jobs`: trial
    processes at once; `pruner`: an Optuna pruner (default: a median pruner that waits for one
    evaluation without improvement); `use_baseline`: queue the recipe's own values first.
    """
    from adapterkit.recipe import resolve

    source = recipe if isinstance(recipe, Mapping) else Path(recipe)
    out = Path(out).resolve()
    if trials < 1 or jobs < 1:
        raise UserError(f"--trials and --jobs must be at least 1 (got {trials} and {jobs})")
    items = [f"{k}={v}" for k, v in space.items()] if isinstance(space, Mapping) else list(space)
    specs = parse_space(items)
    base = resolve(source, list(overrides))
    _check_eval(base)
    check_space(source, specs, overrides)
    metric, higher = selection_of(base)
    limit = units.parse_size(budget, "--budget") if isinstance(budget, str) else budget
    store.prepare_out(out, resume)
    with store.locked(out):
        recipe_path = source if isinstance(source, Path) else _recipe_file(source, out)
        ctx = Context(recipe_path, list(overrides), specs, out, metric, higher, limit)
        ctx.device, ctx.progress = _device(limit), progress
        identity = store.identity(base, specs, metric, higher)
        study = store.open_study(out, resume, identity, higher, None, pruner or default_pruner())
        if resume:
            for number in store.recover(study):
                _say(ctx, f"trial {number} was left running by a stopped sweep: it runs again")
        elif use_baseline:
            store.enqueue_baseline(study, baseline(specs, base.to_dict()))
        study.sampler = sampler(seed + len(study.get_trials(deepcopy=False)), trials)
        todo = max(0, trials - store.counted(study))
        _run_all(study, ctx, todo, jobs)
        return _finish(study, ctx, base)


def _recipe_file(recipe: Mapping[str, Any], out: Path) -> Path:
    """A recipe given as a mapping, resolved (defaults filled, data paths absolute) into
    <out>/recipe.yaml: the file every trial's process reads."""
    import yaml

    from adapterkit.recipe import resolve
    from adapterkit.storage.atomic import write_text_atomic

    path = out / "recipe.yaml"
    write_text_atomic(path, yaml.safe_dump(resolve(recipe).to_dict(), sort_keys=False))
    return path


def default_pruner() -> Any:
    """Stop a trial below the median of the others at the same point, once it has also gone an
    evaluation without improving (the first evaluations of a low learning rate are not judged)."""
    import warnings

    import optuna

    median = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0, n_min_trials=2)
    with warnings.catch_warnings():  # PatientPruner is marked experimental since optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.PatientPruner(median, patience=1)


def sampler(seed: int, trials: int) -> Any:
    """Seeded TPE; random for the first third of the trials (at least 2, at most 10)."""
    import optuna

    startup = max(2, min(10, trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def selection_of(recipe: Any) -> tuple[str, bool]:
    """The task's selection metric and direction for options completed from the training data
    (as the trainer's own `setup` completes them)."""
    from adapterkit.plugins import load_registry
    from adapterkit.task import selection

    task = load_registry().task(recipe.task.name)
    rows = task.read(Path(recipe.data.train), recipe.task.options)
    return selection(task, task.setup(rows, recipe.task.options))


def _check_eval(recipe: Any) -> None:
    if recipe.data.eval is None and recipe.data.holdout is None:
        raise UserError(
            f"{recipe.source}: a sweep selects on eval data, and this recipe has none; set "
            "data.eval (a file) or data.holdout (rows of train held out); data.test is only "
            "scored once, on the selected trial"
        )


def _device(budget: int | None) -> str:
    """The device a trial trains on, for planning it against --budget (torch only then)."""
    if budget is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _say(ctx: Context, text: str) -> None:
    if ctx.progress:
        print(f"[sweep] {text}", file=sys.stderr, flush=True)


# ---- the trials ----------------------------------------------------------------------------------


def _run_all(study: Any, ctx: Context, todo: int, jobs: int) -> None:
    """`todo` trials, `jobs` at a time; Ctrl-C kills the running children and ends the sweep."""
    guard = Guard()
    distributions = {s.key: s.distribution() for s in ctx.specs}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_one, study, ctx, guard, distributions) for _ in range(todo)]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException as exc:
            guard.stop()
            for future in futures:
                future.cancel()
            if isinstance(exc, KeyboardInterrupt):
                raise _interrupted(ctx) from None
            raise
    if guard.stopping.is_set():  # a child was stopped by SIGINT/SIGTERM
        raise _interrupted(ctx)


def _interrupted(ctx: Context) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"the sweep was interrupted; the finished trials are kept in {ctx.out / store.DATABASE} "
        "and a trial that was running will run again: to continue, repeat the command with "
        "--resume",
        signal.SIGINT,
        str(ctx.out / store.DATABASE),
    )


def _one(study: Any, ctx: Context, guard: Guard, distributions: dict[str, Any]) -> None:
    if guard.stopping.is_set():
        return
    with guard.lock:
        trial = study.ask(distributions)
    values = " ".join(trial_overrides(ctx.specs, dict(trial.params)))
    _say(ctx, f"trial {trial.number} starts: {values}")
    started = time.perf_counter()
    try:
        outcome = run_trial(ctx, trial, guard)
    except BaseException as exc:
        with guard.lock:
            _tell(study, trial, Outcome(store.FAILED, None, {"reason": f"sweep error: {exc!r}"}))
        raise
    with guard.lock:
        _tell(study, trial, outcome)
    figure = f", {ctx.metric} {outcome.value:.4f}" if outcome.value is not None else ""
    why = f": {outcome.attrs['reason']}" if outcome.status != store.COMPLETE else ""
    took = time.perf_counter() - started
    _say(ctx, f"trial {trial.number} {outcome.status}{figure} ({took:.1f} s){why}")


def _tell(study: Any, trial: Any, outcome: Outcome) -> None:
    """Record the outcome in the study; an interrupted trial's values are queued again."""
    from optuna.trial import TrialState

    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, json_safe(value))
    trial.set_user_attr("status", outcome.status)
    state = TrialState[STATES.get(outcome.status, "FAIL")]
    study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
    if outcome.status == store.INTERRUPTED:
        study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})


def _finish(study: Any, ctx: Context, base: Any) -> dict[str, Any]:
    """Select, copy best/, score the test data once, write the report; sweep.json's content."""
    rows = report.rows(study, ctx.specs)
    best = select.finish(rows, ctx.out, base, ctx.metric, ctx.higher)
    doc = {
        "recipe": str(ctx.recipe_path),
        "overrides": ctx.overrides,
        "space": {s.key: s.text for s in ctx.specs},
        "selection": {"metric": ctx.metric, "higher_is_better": ctx.higher},
        "budget_bytes": ctx.budget,
        "storage": store.storage_url(ctx.out),
        "best": best,
        "trials": rows,
        "definitions": report.DEFINITIONS,
    }
    report.write_outputs(ctx.out, doc, study, ctx.specs)
    if best is not None:
        _say(ctx, f"selected trial {best['trial']}: {ctx.metric} {best['value']:.4f} on eval")
    return doc


__all__ = ["Spec", "default_pruner", "sampler", "selection_of", "sweep"]
