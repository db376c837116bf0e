"""Best-adapter selection: which evaluation so far was best, its adapter in best/, and patience.

The record (`BestRecord`) is plain data that every checkpoint saves, so a resumed run goes on
comparing against the same best; `BestAdapter` applies the task's metric and direction to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass
class BestRecord:
    """The best evaluation so far and how many evaluations since have not beaten it."""

    value: float | None = None  # the selection metric's value; None before the first eval
    step: int | None = None
    eval: dict[str, Any] | None = None  # every metric of that evaluation
    bad_evals: int = 0

    def to_json(self) -> dict[str, Any]:
        """The record under its checkpoint keys."""
        return {
            "best_value": self.value,
            "best_step": self.step,
            "best_eval": self.eval,
            "bad_evals": self.bad_evals,
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> BestRecord:
        """Read back from a checkpoint's state (`best_eval` may be missing: older checkpoints)."""
        return cls(
            value=state["best_value"],
            step=state["best_step"],
            eval=state.get("best_eval"),
            bad_evals=state["bad_evals"],
        )


class BestAdapter:
    """Keeps `directory` (best/) holding the adapter of the best evaluation by `metric`.

    A nan or infinite value is never best. `update` changes `record` in place: pass the loop
    state's own record, so that every checkpoint saves it.
    """

    def __init__(
        self,
        directory: Path,
        save: Callable[[nn.Module, Path], int],
        metric: str,
        higher_is_better: bool,
        patience: int | None = None,
        record: BestRecord | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.save = save
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.patience = patience
        self.record = record if record is not None else BestRecord()

    def beats(self, value: float) -> bool:
        """Whether `value` is finite and better than the best so far (any finite value is, first)."""
        best = self.record.value
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.higher_is_better else value < best)

    def update(self, model: nn.Module, metrics: dict[str, Any], step: int) -> bool:
        """Take one evaluation of `model` at `step`; True when patience has run out.

        A new best saves the model's adapter into the directory and resets the patience count;
        anything else counts as one more evaluation without improvement.
        """
        value = float(metrics[self.metric])
        record = self.record
        if self.beats(value):
            record.value, record.eval, record.step, record.bad_evals = value, metrics, step, 0
            self.directory.mkdir(exist_ok=True)
            self.save(model, self.directory)
        else:
            record.bad_evals += 1
        return self.patience is not None and record.bad_evals >= self.patience

    @property
    def saved(self) -> bool:
        """Whether best/ holds an adapter (some evaluation was finite)."""
        return self.record.eval is not None
