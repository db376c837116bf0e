"""Hyperparameter search that never peeks: `adapterkit sweep` and `sweep(...)`.

Optuna (seeded TPE, a pruner fed by the trainer's evaluations) searches any recipe keys; each
trial is its own `adapterkit train` process; the study lives in SQLite in the output directory,
so an interrupted sweep resumes. Selection uses the eval data only; the selected adapter is then
scored once on `data.test`.

    space.py    --space KEY=SPEC items, read and checked against the recipe
    store.py    the output directory, its lock and the study
    trial.py    one trial: budget check, child process, pruning
    select.py   the selected trial, best/, the one test score
    report.py   sweep.md, sweep.json and the plots
    run.py      `sweep`, which puts them together
"""

from adapterkit.search.run import sweep

__all__ = ["sweep"]
