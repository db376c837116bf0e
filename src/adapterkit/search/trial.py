"""One trial: its recipe, the budget check, and its own `adapterkit train` child process.

The parent reads the child's log.jsonl as it grows and reports each evaluation's selection metric
to the trial (`trial.report`, at the number of training examples seen, so trials with other batch
sizes compare at the same point); when the pruner says so the child is killed and the trial is
PRUNED. A child that fails keeps its row with the reason (compare's `classify_failure`). A trial
the plan says cannot fit `--budget` is refused before any process starts.

Each trial trains without `data.test` (`data.test=null`): the test set is scored once, on the
selected adapter, after the search.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
from pathlib import Path
from typing import Any

from adapterkit import units
from adapterkit.comparison.child import run_child
from adapterkit.comparison.failures import classify_failure
from adapterkit.errors import UserError
from adapterkit.search import store
from adapterkit.search.space import Spec, override

# Exit statuses of a child stopped by SIGINT / SIGTERM (training's TrainingInterrupted).
_STOPPED = (130, 143)
_POLL_S = 0.25
# Copied from the trial's metrics.json into its row.
RUN_FIGURES = (
    "steps",
    "best_step",
    "train_loss",
    "tokens_per_s",
    "peak_memory_bytes",
    "peak_memory_kind",
    "trainable_params",
    "device",
    "precision",
)


@dataclasses.dataclass
class Context:
    """What every trial of one sweep shares."""

    recipe_path: Path
    overrides: list[str]
    specs: list[Spec]
    out: Path
    metric: str
    higher: bool
    budget: int | None = None
    device: str = "cpu"
    progress: bool = True


class Guard:
    """The running children and the stop flag: Ctrl-C kills every child and starts no more.

    `lock` serialises every call into the study (its storage is shared by the worker threads).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self._live: dict[int, Any] = {}

    def add(self, number: int, proc: Any) -> None:
        with self.lock:
            self._live[number] = proc
            if self.stopping.is_set():
                proc.kill()

    def remove(self, number: int) -> None:
        with self.lock:
            self._live.pop(number, None)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            for proc in self._live.values():
                if proc.poll() is None:
                    proc.kill()


@dataclasses.dataclass
class Outcome:
    """How a trial ended: its status, its value (the selection metric) and its row's figures."""

    status: str
    value: float | None
    attrs: dict[str, Any]


class Reporter:
    """Feeds a trial's eval records to Optuna; says when the pruner wants the trial stopped."""

    def __init__(self, trial: Any, metric: str, examples_per_step: int, lock: Any) -> None:
        self.trial, self.metric, self.per_step, self.lock = trial, metric, examples_per_step, lock
        self.last: tuple[int, float] | None = None  # (step, value) of the last report

    def feed(self, record: dict[str, Any], may_prune: bool) -> bool:
        evals, step = record.get("eval"), record.get("step")
        if not isinstance(evals, dict) or not isinstance(step, int) or step <= 0:
            return False  # a training step's line, or the "before" figure at step 0
        value = evals.get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False
        with self.lock:
            self.trial.report(float(value), step * self.per_step)
            self.last = (step, float(value))
            return may_prune and self.trial.should_prune()


class Watcher:
    """Tails a child's log.jsonl in a thread; kills the child when its reporter says prune."""

    def __init__(self, log_path: Path, reporter: Reporter, guard: Guard, number: int) -> None:
        self.log_path, self.reporter, self.guard, self.number = log_path, reporter, guard, number
        self.pruned = False
        self._offset, self._partial = 0, b""
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: Any = None

    def start(self, proc: Any) -> None:
        self._proc = proc
        self.guard.add(self.number, proc)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(_POLL_S):
            if self._read(may_prune=True):
                self.pruned = True
                self._proc.kill()
                return

    def _read(self, may_prune: bool) -> bool:
        """Feed the new complete lines; True as soon as one says prune."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:  # not written yet
            return False
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            try:
                record = json.loads(line) if line.strip() else {}
            except ValueError:
                continue
            if self.reporter.feed(record, may_prune):
                return True
        return False

    def finish(self) -> None:
        """Stop the thread, then report what the child wrote last (no pruning: it has ended)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.guard.remove(self.number)
        if not self.pruned:
            self._read(may_prune=False)


# ---- one trial -----------------------------------------------------------------------------------


def trial_overrides(specs: list[Spec], params: dict[str, Any]) -> list[str]:
    """The trial's values as overrides, in the space's order."""
    return [override(s.key, params[s.key]) for s in specs if s.key in params]


def run_trial(ctx: Context, trial: Any, guard: Guard) -> Outcome:
    """Resolve the trial's recipe, check the budget, train it in a child; how it ended."""
    from adapterkit.recipe import resolve

    own = trial_overrides(ctx.specs, dict(trial.params))
    overrides = [*ctx.overrides, *own, "data.test=null"]
    attrs: dict[str, Any] = {"overrides": own}
    try:
        recipe = resolve(ctx.recipe_path, overrides)
    except UserError as exc:
        return Outcome(store.FAILED, None, attrs | {"reason": str(exc)})
    if ctx.budget is not None:
        try:
            refused = budget_refusal(recipe, ctx.budget, ctx.device, attrs)
        except UserError as exc:
            return Outcome(store.FAILED, None, attrs | {"reason": f"cannot be planned: {exc}"})
        if refused:
            return Outcome(store.REFUSED, None, attrs | {"reason": refused})
    examples = recipe.train.batch_size * recipe.train.grad_accum
    return _launch(ctx, trial, overrides, attrs, guard, examples)


def budget_refusal(recipe: Any, budget: int, device: str, attrs: dict[str, Any]) -> str | None:
    """Why the plan says `recipe` cannot fit `budget` (None: it fits); the planned peak goes into
    `attrs`. The peak is the one for the recipe's checkpointing setting (`auto`: without)."""
    from adapterkit.planning import memory

    (plan,) = memory.from_recipe(recipe, None, device)  # pyright: ignore[reportArgumentType]
    peak = plan.peak()
    attrs["planned_memory_bytes"] = peak
    if peak <= budget:
        return None
    reason = (
        f"refused before it started: the plan needs {units.human_bytes(peak)} on {device}, "
        f"over --budget {units.human_bytes(budget)}"
    )
    checkpointed = plan.peak(True)
    if recipe.train.gradient_checkpointing is not True and checkpointed <= budget:
        reason += (
            f" (with train.gradient_checkpointing=true: {units.human_bytes(checkpointed)}, "
            "which fits)"
        )
    return reason


def _launch(
    ctx: Context,
    trial: Any,
    overrides: list[str],
    attrs: dict[str, Any],
    guard: Guard,
    examples_per_step: int,
) -> Outcome:
    """The child `adapterkit train`, watched for pruning; its outcome."""
    name = f"{trial.number:04d}"
    run_dir = ctx.out / "trials" / name
    cmd = [sys.executable, "-m", "adapterkit", "train", str(ctx.recipe_path), *overrides]
    cmd += ["--out", str(run_dir), "--no-progress"]
    reporter = Reporter(trial, ctx.metric, examples_per_step, guard.lock)
    watcher = Watcher(run_dir / "log.jsonl", reporter, guard, trial.number)
    try:
        done = run_child(cmd, ctx.out / "logs" / f"trial-{name}.log", False, None, watcher.start)
    finally:
        watcher.finish()
    attrs |= {"run_dir": str(run_dir), "returncode": done.returncode, "wall_time_s": done.seconds}
    if watcher.pruned and reporter.last is not None:
        step, value = reporter.last
        attrs["reason"] = f"pruned after step {step} ({ctx.metric} {value:.4g} on the eval data)"
        return Outcome(store.PRUNED, value, attrs)
    if guard.stopping.is_set() or done.returncode in _STOPPED:
        guard.stopping.set()
        return Outcome(store.INTERRUPTED, None, attrs | {"reason": "the sweep was interrupted"})
    if done.returncode != 0:
        reason = classify_failure(done.returncode, done.tail)
        return Outcome(store.FAILED, None, attrs | {"reason": reason})
    return _finished(ctx, run_dir, attrs)


def _finished(ctx: Context, run_dir: Path, attrs: dict[str, Any]) -> Outcome:
    """A trial whose child ended well: its value is the selection metric of its best/ (the best
    evaluation), else of its final evaluation."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        return Outcome(store.FAILED, None, attrs | {"reason": f"unreadable metrics.json: {exc}"})
    attrs |= {key: metrics.get(key) for key in RUN_FIGURES}
    chosen = metrics.get("best_eval") or metrics.get("final_eval") or {}
    value = chosen.get(ctx.metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        reason = f"no finite {ctx.metric} on the eval data (got {value!r})"
        return Outcome(store.FAILED, None, attrs | {"reason": reason})
    attrs["eval"] = chosen
    return Outcome(store.COMPLETE, float(value), attrs)
