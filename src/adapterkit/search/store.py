"""Where a sweep lives: its output directory, its lock, and its Optuna study in SQLite.

    <out>/study.db     the study (Optuna's RDB storage): every trial, its values and attributes
    <out>/sweep.lock   held while a sweep runs, so two sweeps never write one study

A study records what it searches (the resolved recipe without `data.test`, the space, the
selection metric); `--resume` refuses a recipe or a space that differs. A trial left RUNNING by a
sweep that died is marked failed (a FAIL without a status: "interrupted") and its values are queued
to run again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from adapterkit.errors import UserError

STUDY = "sweep"
DATABASE = "study.db"
LOCK = "sweep.lock"
# Trial statuses (user attribute "status"); an Optuna state alone says too little.
COMPLETE, PRUNED, FAILED, REFUSED, INTERRUPTED = (
    "complete",
    "pruned",
    "failed",
    "refused",
    "interrupted",
)


def storage_url(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / DATABASE}"


def prepare_out(out: Path, resume: bool) -> None:
    """Refuse an --out that is a file, a fresh sweep into a non-empty directory, and a resume
    where there is no sweep; create the directory (and its parents) for a fresh one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out must be a directory, and this is a file")
    if resume:
        if not (out / DATABASE).is_file():
            raise UserError(
                f"{out}: no sweep to resume (no {DATABASE}); drop --resume to start one"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        what = "holds a sweep" if (out / DATABASE).is_file() else "is not empty"
        raise UserError(
            f"{out}: already exists and {what}; pass --resume to continue that sweep, or choose "
            "another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output directory: {exc}") from None


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold <out>/sweep.lock for the block; a UserError when another sweep holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{out}: another sweep is running there (it holds {out / LOCK}); wait for it to end, "
            "or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _differences(old: Any, new: Any) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [
        f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def check_identity(stored: dict[str, Any], identity: dict[str, Any], out: Path) -> None:
    """Refuse to resume a study made for another recipe, space or metric."""
    problems = []
    for what in identity:
        if what not in stored:
            raise UserError(f"{out}/{DATABASE}: not a study written by `adapterkit sweep`")
        problems += [f"{what} {line}" for line in _differences(stored[what], identity[what])]
    if problems:
        raise UserError(
            f"{out}: cannot resume: this sweep was started with another recipe or space; "
            + "; ".join(problems)
            + " (start a new sweep with another --out)"
        )


def open_study(
    out: Path, resume: bool, identity: dict[str, Any], higher: bool, sampler: Any, pruner: Any
) -> Any:
    """The sweep's study: created (recording `identity`) or, with `resume`, loaded and checked."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep reports each trial itself
    storage = optuna.storages.RDBStorage(
        storage_url(out), engine_kwargs={"connect_args": {"timeout": 60}}
    )
    if resume:
        try:
            study = optuna.load_study(
                study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            raise UserError(f"{out}/{DATABASE}: holds no study named '{STUDY}'") from None
        check_identity(study.user_attrs, identity, out)
        return study
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=STUDY,
            direction="maximize" if higher else "minimize",
            sampler=sampler,
            pruner=pruner,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(f"{out}: another sweep started there; choose another --out") from None
    for key, value in identity.items():
        study.set_user_attr(key, value)
    return study


def status(trial: Any) -> str:
    """A finished trial's status; a FAIL without one was left running by a sweep that died."""
    from optuna.trial import TrialState

    own = trial.user_attrs.get("status")
    if own:
        return str(own)
    if trial.state == TrialState.FAIL:
        return INTERRUPTED
    return str(trial.state.name).lower()


def recover(study: Any) -> list[int]:
    """Trials a dead sweep left RUNNING: marked failed, their values queued to run again."""
    from optuna.trial import TrialState

    done = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})
        done.append(trial.number)
    return done


def counted(study: Any) -> int:
    """Trials that count towards --trials: every finished one but the interrupted."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=finished)
    return sum(status(t) != INTERRUPTED for t in trials)


def enqueue_baseline(study: Any, params: dict[str, Any]) -> None:
    """Queue the recipe's own values as the first trial of a fresh study."""
    if params:
        study.enqueue_trial(params, user_attrs={"baseline": True})


def identity(recipe: Any, specs: Sequence[Any], metric: str, higher: bool) -> dict[str, Any]:
    """What a study is bound to: the resolved recipe (without data.test, which takes no part in
    the search), the space, the selection metric and its direction."""
    data = recipe.to_dict()
    data["data"] = {k: v for k, v in data["data"].items() if k != "test"}
    return {
        "recipe": json.loads(json.dumps(data, default=str)),
        "space": {s.key: s.text for s in specs},
        "selection": {"metric": metric, "higher_is_better": higher},
    }
