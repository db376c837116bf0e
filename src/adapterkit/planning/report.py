"""`adapterkit plan`'s output: the per-strategy table and the JSON form of the plans."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from adapterkit.units import human_bytes

if TYPE_CHECKING:
    from adapterkit.planning.memory import StrategyPlan
    from adapterkit.recipe import Recipe


def format_table(plans: list[StrategyPlan], budget: int | None = None) -> str:
    """A Markdown table: one row per strategy; with a budget, whether it fits and the max batch."""
    cols = [
        "strategy",
        "precision",
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
        cols += [f"fits {human_bytes(budget)}", "max batch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for p in plans:
        c = p.components
        row = [p.strategy, p.precision, f"{p.trainable_params:,}"] + [
            human_bytes(c[k])
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


def quantizing_strategies() -> list[str]:
    """Registered strategies whose base loads in 4 bits (`Strategy.quantized_base`)."""
    from adapterkit.plugins import load_registry
    from adapterkit.strategy import quantized_base

    registry = load_registry()
    return [
        n for n in registry.names("strategy") if quantized_base(registry.classes["strategy"][n])
    ]


def plan_advice(recipe: Recipe) -> str:
    """What `adapterkit plan` says about this recipe: its peak, with checkpointing, with each
    strategy that quantizes its base, and the largest batch that fits this machine's memory.
    Empty if the planner cannot tell (advice must never hide the error it comes with)."""
    try:
        import psutil
        import torch

        from adapterkit.planning import memory

        cuda = torch.cuda.is_available()
        device = "cuda" if cuda else "cpu"
        budget = (
            torch.cuda.get_device_properties(0).total_memory
            if cuda
            else psutil.virtual_memory().total
        )
        names = list(dict.fromkeys([recipe.strategy.name, *quantizing_strategies()]))
        plans = {p.strategy: p for p in memory.from_recipe(recipe, names, device)}
    except Exception:
        return ""
    own = plans.pop(recipe.strategy.name)
    gib = 2**30
    lines = [
        f"plan for {device} ({budget / gib:.1f} GiB): {own.strategy} at batch {own.batch_size} "
        f"x {own.seq_len} tokens needs about {own.peak(False) / gib:.1f} GiB, "
        f"{own.peak(True) / gib:.1f} GiB with train.gradient_checkpointing=true; "
        f"largest batch that fits: {own.max_batch_size(budget, checkpointed=False)} "
        f"({own.max_batch_size(budget, checkpointed=True)} with checkpointing)"
    ]
    lines += [f"strategy {n}: about {p.peak(False) / gib:.1f} GiB" for n, p in plans.items()]
    return "\n".join(lines)
