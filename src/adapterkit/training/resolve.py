"""A recipe's `auto` settings decided for this machine, before the model loads.

`precision: auto` (precision.resolve_precision), the base dtype that follows it (`model.dtype:
auto`, build.base_dtype), and `gradient_checkpointing: auto`: on when the memory plan says the
run would not fit in this machine's memory without it, or when the task cannot be planned.
The API calls these, and `resume` (how the run continues); the Trainer receives the results.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from adapterkit.recipe import ModelSection, Recipe
    from adapterkit.training.config import TrainConfig
    from adapterkit.training.inputs import Resume

_logger = logging.getLogger("adapterkit")


def settings(recipe: Recipe) -> tuple[TrainConfig, ModelSection]:
    """The `train` section with its precision resolved, and the `model` section with the dtype
    the base loads in (the compute dtype for an `auto` dtype)."""
    from adapterkit.build import base_dtype
    from adapterkit.training.precision import resolve_precision

    precision = resolve_precision(recipe.train.precision)
    cfg = dataclasses.replace(recipe.train, precision=precision)
    dtype = base_dtype(recipe.model.dtype, precision)
    return cfg, dataclasses.replace(recipe.model, dtype=dtype)  # pyright: ignore[reportArgumentType]


def checkpointing(recipe: Recipe) -> bool:
    """`train.gradient_checkpointing`, `auto` decided by the plan's peak without checkpointing
    against this machine's memory (RAM on CPU, the GPU's memory on CUDA)."""
    setting = recipe.train.gradient_checkpointing
    if isinstance(setting, bool):
        return setting
    from adapterkit.planning import memory
    from adapterkit.training.measure import machine_memory

    device, total = machine_memory()
    try:
        peak = memory.from_recipe(recipe, [recipe.strategy.name], device)[0].peak(False)
    except Exception as exc:  # any planning failure: play safe
        _logger.info("train.gradient_checkpointing=auto: on (the run cannot be planned: %s)", exc)
        return True
    on = peak > total
    _logger.info(
        "train.gradient_checkpointing=auto: %s (planned peak %.2f GiB, %s memory %.2f GiB)",
        "on" if on else "off",
        peak / 2**30,
        device,
        total / 2**30,
    )
    return on


def resume(checkpoint: Path | None, recipe: Recipe, out_dir: Path, hint: str | None) -> Resume:
    """How this run continues (from `checkpoint`, if any) and can be continued after a stop."""
    from adapterkit.storage import checkpoints
    from adapterkit.training.inputs import Resume

    loaded = None
    if checkpoint is not None:
        loaded = {**checkpoints.load_checkpoint(checkpoint), "path": str(checkpoint)}
        _logger.warning("resuming from %s", checkpoint)
    return Resume(
        loaded,
        {"recipe": recipe.to_dict()},
        hint or f"run the same command again with --out {out_dir} --resume",
    )
