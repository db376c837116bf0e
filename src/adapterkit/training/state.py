"""The loop's resumable counters, and how they are written into and read from a checkpoint.

`LoopState` is everything a resume restores besides tensors, optimizer, schedule and RNG (those
are the checkpoint's other files). Its JSON form is a checkpoint's trainer_state.json, under the
same keys as every earlier version wrote, so older checkpoints still resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from adapterkit.training.selection import BestRecord

if TYPE_CHECKING:
    from adapterkit.training.config import TrainConfig
    from adapterkit.training.optim import Window
    from adapterkit.training.step import StepStats

RECENT_LOSSES = 10  # train_loss is their mean; a checkpoint keeps them for a resumed run's figure


@dataclass
class LoopState:
    """Where the loop is: steps taken, the data position, evaluations, running totals."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # with next_batch: the data position, the batch the next step starts at
    next_batch: int = 0
    best: BestRecord = field(default_factory=BestRecord)
    initial_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    last_eval_step: int = -1
    recent_losses: list[float] = field(default_factory=list)  # the last RECENT_LOSSES steps'
    tokens: int = 0  # non-padding tokens trained on
    train_time_s: float = 0.0  # seconds in training steps

    def advance(self, window: Window, n_batches: int, stats: StepStats) -> None:
        """Count one optimizer step over `window` (of an epoch of `n_batches` batches)."""
        self.step += 1
        self.epoch, self.next_batch = window.epoch, window.first + len(window.batches)
        if self.next_batch >= n_batches:
            self.epoch, self.next_batch = window.epoch + 1, 0
        self.train_time_s += stats.seconds
        self.tokens += stats.tokens
        self.recent_losses = [*self.recent_losses, stats.loss][-RECENT_LOSSES:]

    @property
    def train_loss(self) -> float:
        """Mean loss over the recent steps (nan before the first step)."""
        tail = self.recent_losses
        return sum(tail) / len(tail) if tail else float("nan")

    def to_json(
        self, cfg: TrainConfig, run_state: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """trainer_state.json: the counters, the seed and `cfg` they belong to, then `run_state`
        (the caller's, e.g. the resolved recipe to compare on resume)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "seed": cfg.seed,
            **self.best.to_json(),
            "initial_eval": self.initial_eval,
            "last_eval": self.last_eval,
            "last_eval_step": self.last_eval_step,
            "recent_losses": self.recent_losses[-RECENT_LOSSES:],
            "tokens": self.tokens,
            "train_time_s": self.train_time_s,
            "config": asdict(cfg),
            **(run_state or {}),
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> LoopState:
        """Read back a checkpoint's trainer_state.json. The position and best-adapter keys are
        required; the rest default as for a checkpoint written before they existed."""
        return cls(
            step=int(state["step"]),
            epoch=int(state["epoch"]),
            next_batch=int(state["next_batch"]),
            best=BestRecord.from_json(state),
            initial_eval=state.get("initial_eval"),
            last_eval=state.get("last_eval"),
            last_eval_step=int(state.get("last_eval_step", -1)),
            recent_losses=[float(x) for x in state.get("recent_losses", [])],
            tokens=int(state.get("tokens", 0)),
            train_time_s=float(state.get("train_time_s", 0.0)),
        )
