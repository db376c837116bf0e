"""After the search: the selected trial (by the selection metric on the eval data alone), its
adapter copied to best/, and its one score on `data.test`.

The test rows are read here and nowhere else in a sweep: no trial sees them, and the choice is
made before they are read, so permuting their labels cannot change which trial is selected.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from adapterkit.search import store
from adapterkit.storage.atomic import fsync_tree

BEST = "best"
TRIAL_FILE = "sweep-trial.json"  # in best/: which trial it is, its values, its figures


def selected(rows: list[dict[str, Any]], higher: bool) -> dict[str, Any] | None:
    """The complete trial with the best value; the earliest one among equals."""
    done = [r for r in rows if r["status"] == store.COMPLETE and r["value"] is not None]
    if not done:
        return None
    sign = -1.0 if higher else 1.0
    return min(done, key=lambda r: (sign * r["value"], r["trial"]))


def adapter_dir(run_dir: Path) -> Path:
    """The trial's selected adapter: its best/ (picked on the eval data) if saved, else the final
    one."""
    from adapterkit.storage.adapter_format import MANIFEST

    best = run_dir / BEST
    return best if (best / MANIFEST).is_file() else run_dir


def copy_best(row: dict[str, Any], out: Path) -> Path:
    """The trial's adapter (with its resolved recipe.yaml) into <out>/best, atomically: built
    under a temporary name, then swapped in."""
    from adapterkit.storage.run_dir import RUN_FILES

    source = adapter_dir(Path(row["run_dir"]))
    target, tmp, old = out / BEST, out / f".{BEST}.tmp", out / f".{BEST}.old"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    skip = set(RUN_FILES)
    shutil.copytree(source, tmp, ignore=lambda _d, names: [n for n in names if n in skip])
    info = {k: row[k] for k in ("trial", "params", "overrides", "value", "run_dir")}
    (tmp / TRIAL_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    fsync_tree(tmp)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)
    return target


def score_test(best_dir: Path, test: str, batch_size: int) -> dict[str, Any]:
    """The selected adapter's metrics on the test file (once, after the selection)."""
    from adapterkit import api

    return api.evaluate(best_dir, Path(test), batch_size=batch_size)


def finish(rows: list[dict[str, Any]], out: Path, recipe: Any, metric: str, higher: bool) -> Any:
    """Mark the selected row, copy its adapter to best/, score it on data.test; the `best`
    entry of sweep.json (None when no trial completed)."""
    row = selected(rows, higher)
    if row is None:
        return None
    row["selected"] = True
    best_dir = copy_best(row, out)
    test, test_value = None, None
    if recipe.data.test:
        batch = recipe.train.eval_batch_size or recipe.train.batch_size
        test = score_test(best_dir, recipe.data.test, batch)
        value = test.get(metric)
        test_value = float(value) if isinstance(value, int | float) else None
    return {
        "trial": row["trial"],
        "params": row["params"],
        "overrides": row["overrides"],
        "value": row["value"],
        "run_dir": row["run_dir"],
        "dir": str(best_dir),
        "test_data": recipe.data.test,
        "test": test,
        "test_value": test_value,
    }
