"""The one way a model is built: task model, strategy applied, for training, loading and planning.

    built = build_model(source, task, task_options, strategy, strategy_options, model_cfg)
    built.model, built.tokenizer, built.parts

With `meta_config` nothing is read but the config: the task builds its model class on the meta device
(`Task.meta_model`) and the strategy applies itself for planning (`Strategy.plan_apply`, default
`apply`), so the planner sees the trainable set a real run has, for any plugin.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

from adapterkit import strategy as strategy_api
from adapterkit import task as task_api

if TYPE_CHECKING:
    from torch import nn

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts, Strategy
    from adapterkit.task import Task


class ModelSettings(Protocol):
    """The recipe's `model` section as the build needs it (`ModelSection`, or a manifest's).

    Read-only members, so a frozen dataclass and a `Literal`-typed `dtype` both qualify.
    """

    @property
    def dtype(self) -> str: ...

    @property
    def trust_remote_code(self) -> bool: ...


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    """`ModelSettings` read back from an adapter's manifest."""

    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclasses.dataclass
class Built:
    """A task model with a strategy applied; `tokenizer` is None for a meta-device build."""

    model: nn.Module
    tokenizer: Any
    parts: ModelParts


def load_kwargs(
    strategy: Strategy, options: Any, parts: ModelParts, settings: ModelSettings
) -> dict[str, Any]:
    """`from_pretrained` keyword arguments: the recipe's dtype and remote-code choice, then the
    strategy's own (a quantization config, say)."""
    import torch

    dtype = "float32" if settings.dtype == "auto" else settings.dtype
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if settings.trust_remote_code:
        kwargs["trust_remote_code"] = True
    kwargs.update(strategy.load_kwargs(options, parts))
    return kwargs


def build_model(
    source: ModelSource,
    task: Task,
    task_options: Any,
    strategy: Strategy,
    strategy_options: Any,
    settings: ModelSettings | None = None,
    *,
    meta_config: Any = None,
    seed: int | None = None,
) -> Built:
    """Build the task's model from `source` and apply the strategy to it.

    `meta_config`: build on the meta device from this transformers config (no weights read;
    `sources.load_config(source)` gives the source's own). `seed`: seeds every RNG just before
    the weights load (a new head's initialisation uses it).
    """
    parts = task.model_parts(source, task_options)
    if meta_config is not None:
        model = task_api.meta_model(task, meta_config, task_options)
        applied = strategy_api.plan_apply(strategy, model, strategy_options, parts)
        return Built(applied, None, parts)
    if seed is not None:
        from adapterkit.training.optim import seed as seed_everything

        seed_everything(seed)
    kwargs = load_kwargs(strategy, strategy_options, parts, settings or LoadSettings())
    model, tokenizer = task.load_model(source, task_options, kwargs)
    return Built(strategy.apply(model, strategy_options, parts), tokenizer, parts)


AUTO_DTYPES = ("auto",)
"""`model.dtype` values that follow the compute dtype of `train.precision`."""


def base_dtype(requested: str, precision: str) -> str:
    """The dtype the base loads in: the compute dtype of a resolved `precision` for an `auto`
    `model.dtype` (bfloat16 for bf16, float16 for fp16), else `requested` as it is."""
    from adapterkit.training.precision import compute_dtype

    return compute_dtype(precision) if requested in AUTO_DTYPES else requested
