"""`adapterkit plan`'s output: the per-strategy table and the JSON form of the plans."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterkit.plan.memory import StrategyPlan


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_table(plans: list[StrategyPlan], budget: int | None = None) -> str:
    """A Markdown table: one row per strategy; with a budget, whether it fits and the max batch."""
    cols = [
        "strategy",
        "trainable",
        "weights",
        "grads",
        "optimizer",
        "activations",
        "act. (ckpt)",
        "logits+loss",
        "inside blocks",
        "mapped ckpt",
        "runtime",
        "total",
        "total (ckpt)",
    ]
    if budget is not None:
        cols += [f"fits {_human(budget)}", "max batch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for p in plans:
        c = p.components
        row = [p.strategy, f"{p.trainable_params:,}"] + [
            _human(c[k])
            for k in (
                "weights",
                "gradients",
                "optimizer",
                "activations",
                "activations_checkpointed",
                "logits_and_loss",
                "inside_blocks",
                "checkpoint_mapped",
                "runtime_overhead",
                "total",
                "total_checkpointed",
            )
        ]
        if budget is not None:
            row += ["yes" if p.fits(budget) else "no", str(p.max_batch_size(budget))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def to_json(plans: list[StrategyPlan]) -> str:
    return json.dumps([p.as_dict() for p in plans], indent=2)
