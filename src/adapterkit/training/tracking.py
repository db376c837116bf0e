"""Experiment trackers (`train.log_with`), through accelerate's tracking API.

Every record the loop writes to log.jsonl also goes to each tracker the recipe names, at the
record's optimizer step; accelerate's tracker classes (accelerate.tracking) do the writing:

    train/<figure>            a logged step's figures: loss, lr, grad_norm, tokens, tokens_per_s,
                              epoch (log.jsonl's own numbers; `step` is the x axis, `elapsed` is left out)
    train/peak_memory_bytes   the training steps' peak memory so far, as metrics.json measures it
                              (the CUDA allocator on a GPU, the process's peak RSS on CPU)
    eval/<metric>             every evaluation (step 0: the "before" figure); nested: eval/<a>/<b>

The resolved recipe is stored as the run's hyperparameters: dotted keys (`train.lr`), scalar
values (a list becomes its JSON text; an unset value is left out).

The logs stay in the run directory, `<out>/tracking/<tracker>/`, so `tensorboard --logdir <out>`
shows the run; mlflow logs to a file store there and wandb runs offline there, unless their own
environment variables (MLFLOW_TRACKING_URI, WANDB_MODE) say otherwise. A fresh run starts
`<out>/tracking/` empty. A resumed run continues: TensorBoard's writer opens with `purge_step` at
the checkpoint's step + 1, so TensorBoard drops whatever the interrupted run logged after its
checkpoint, as RunLog trims log.jsonl; mlflow and wandb start a new run from that step.

Recipes check `train.log_with` (`check_trackers`) without importing accelerate or torch.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.metadata
import importlib.util
import json
import numbers
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import TrainingError

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

    from adapterkit.training.config import TrainConfig
    from adapterkit.training.inputs import Resume

FOLDER = "tracking"
"""The trackers' folder inside the run directory."""

PROJECT = "adapterkit"
"""The mlflow experiment and wandb project runs are logged under (their env variables win)."""

# accelerate 1.15's other trackers: adapterkit does not start them (most log to a service by
# default; none was tried here). Named apart in the error, so a refusal does not read as a typo.
NOT_STARTED = ("aim", "clearml", "comet_ml", "dvclive", "swanlab", "trackio")


@dataclasses.dataclass(frozen=True)
class Kind:
    """A tracker adapterkit starts: where accelerate looks for it, and how to make it."""

    modules: tuple[tuple[str, str], ...]  # (module, distribution): installed when one is there
    make: Callable[[Path, str, int | None], GeneralTracker]  # (folder, run name, resume step)

    @property
    def package(self) -> str:
        return self.modules[0][1]


def _tensorboard(folder: Path, name: str, resume_step: int | None) -> GeneralTracker:
    from accelerate.tracking import TensorBoardTracker

    purge = None if resume_step is None else resume_step + 1  # hide the interrupted run's tail
    return TensorBoardTracker(folder.name, folder.parent, purge_step=purge)


def _mlflow(folder: Path, name: str, resume_step: int | None) -> GeneralTracker:
    import mlflow  # pyright: ignore[reportMissingImports]  (optional: installed by the user)
    from accelerate.tracking import MLflowTracker

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if "MLFLOW_TRACKING_URI" not in os.environ:  # mlflow 3 refuses a file store: SQLite's
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    return MLflowTracker(PROJECT, (folder / "artifacts").as_uri(), run_name=name)


def _wandb(folder: Path, name: str, resume_step: int | None) -> GeneralTracker:
    from accelerate.tracking import WandBTracker

    folder.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"dir": str(folder), "name": name}
    if "WANDB_MODE" not in os.environ:
        options["mode"] = "offline"  # `wandb sync <folder>/wandb/offline-run-*` uploads it
    return WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), **options)


KINDS: dict[str, Kind] = {
    "tensorboard": Kind(
        (("tensorboard", "tensorboard"), ("tensorboardX", "tensorboardX")), _tensorboard
    ),
    "mlflow": Kind((("mlflow", "mlflow"), ("mlflow", "mlflow-skinny")), _mlflow),
    "wandb": Kind((("wandb", "wandb"),), _wandb),
}


# ---- the recipe's check ------------------------------------------------------------------------


def _available(module: str, distribution: str) -> bool:
    """accelerate's own test: the module is importable and its distribution is installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return False
        importlib.metadata.metadata(distribution)
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return False
    return True


def installed() -> list[str]:
    """The trackers adapterkit starts that are installed here."""
    return [n for n, k in KINDS.items() if any(_available(m, d) for m, d in k.modules)]


def check_trackers(names: list[str]) -> list[str]:
    """`train.log_with` without repeats; a ValueError naming each tracker that is unknown, not
    started by adapterkit, or not installed, and what is installed."""
    from adapterkit.options import closest

    unique = list(dict.fromkeys(names))
    have = installed()
    tail = f"adapterkit starts {', '.join(KINDS)}; installed here: {', '.join(have) or 'none'}"
    problems = []
    for name in unique:
        if name in have:
            continue
        if name in KINDS:
            problems.append(f"'{name}' is not installed (pip install {KINDS[name].package})")
        elif name in NOT_STARTED:
            problems.append(f"'{name}' is an accelerate tracker adapterkit does not start")
        else:
            problems.append(f"unknown tracker '{name}'{closest(name, KINDS)}")
    if problems:
        raise ValueError(f"{'; '.join(problems)}; {tail}")
    return unique


# ---- the run's trackers ------------------------------------------------------------------------


def start_trackers(
    names: list[str], folder: Path, run_name: str, resume_step: int | None
) -> list[GeneralTracker]:
    """accelerate's trackers for `names`, started, logging under `folder`/<name>."""
    if not names:
        return []
    from accelerate.tracking import filter_trackers

    found = {str(t) for t in filter_trackers(list(names), folder)}  # accelerate's availability
    started: list[GeneralTracker] = []
    try:
        for name in names:
            if name not in found or name not in KINDS:
                raise TrainingError(f"train.log_with: accelerate finds no usable {name} here")
            tracker = KINDS[name].make(folder / name, run_name, resume_step)
            try:
                tracker.start()
            except Exception as exc:
                raise TrainingError(f"train.log_with: {name} did not start: {exc}") from exc
            started.append(tracker)
    except BaseException:
        for tracker in started:
            tracker.finish()
        raise
    return started


def hyperparameters(recipe: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The resolved recipe as flat hyperparameters: `section.key` -> a scalar."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        elif isinstance(value, (list, tuple)):
            flat[key] = json.dumps(value, default=str)
        # None (unset) has no value to record

    walk(recipe, "")
    return flat


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def scalars(record: Mapping[str, Any]) -> dict[str, int | float]:
    """A log.jsonl record's numbers under the trackers' names (train/..., eval/...)."""
    out: dict[str, int | float] = {}

    def flat(values: Mapping[str, Any], prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, Mapping):
                flat(value, f"{prefix}{key}/")
            elif (number := _number(value)) is not None:
                out[f"{prefix}{key}"] = number

    evaluation = record.get("eval")
    if isinstance(evaluation, Mapping):
        flat(evaluation, "eval/")
    flat({k: v for k, v in record.items() if k not in ("step", "elapsed", "eval")}, "train/")
    return out


def _clear(folder: Path) -> None:
    """A replaced run's tracker logs go with it (--overwrite keeps nothing of the old run)."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    elif folder.exists() or folder.is_symlink():
        folder.unlink()


class RunLogs:
    """The run's logs, log.jsonl (RunLog) and the recipe's trackers: each record goes to both.

    `resume_step`: the checkpoint's step of a resumed run (None: a fresh run); `resume.run_state`
    holds the resolved recipe, stored as hyperparameters (the `train` section alone without it);
    `device`: where the memory peak is read. `close()` ends the trackers (also at exit, for a run
    that stopped with an error).
    """

    def __init__(
        self,
        out_dir: Path,
        resume_step: int | None,
        cfg: TrainConfig,
        resume: Resume,
        device: Any = "cpu",
    ) -> None:
        from adapterkit.training.measure import MemoryMeter
        from adapterkit.training.metrics import RunLog

        out_dir = Path(out_dir)
        self.run_log = RunLog(out_dir / "log.jsonl", resume_step)
        self.path = self.run_log.path
        self.meter = MemoryMeter(device)
        if resume_step is None:
            _clear(out_dir / FOLDER)
        run_name = out_dir.resolve().name
        self.trackers = start_trackers(cfg.log_with, out_dir / FOLDER, run_name, resume_step)
        if self.trackers:
            atexit.register(self.close)
            recipe = resume.run_state.get("recipe") or {"train": dataclasses.asdict(cfg)}
            config = hyperparameters(recipe)
            for tracker in self.trackers:
                tracker.store_init_configuration(config)

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` to log.jsonl, then log its numbers to every tracker at its step."""
        self.run_log.write(record)
        if not self.trackers:
            return
        values = scalars(record)
        if "loss" in record:  # a training step: the memory peak so far, too
            peak = self.meter.peak().bytes
            if peak is not None:
                values["train/peak_memory_bytes"] = peak
        for tracker in self.trackers:
            tracker.log(values, step=int(record["step"]))

    def close(self) -> None:
        """End every tracker (flush, close its files); safe to call again."""
        trackers, self.trackers = self.trackers, []
        atexit.unregister(self.close)
        for tracker in trackers:
            tracker.finish()
