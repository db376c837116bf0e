"""Base + adapter as a merge starts from it, on the base the user chose.

    dequantized  the base exactly as the adapter trained on it (`api.load`): its dtype, and for a
                 strategy with a 4-bit base (`Strategy.quantized_base`) the NF4 weights, which the
                 strategy's `merge` dequantizes. The merged model then computes what base +
                 adapter computed.
    original     the checkpoint's own weights in float32, never quantized: the strategy is applied
                 through `plan_apply` (its contract: the same trainable set as `apply`, on a model
                 that is not quantized) and the adapter loaded into it. Merging there adds the
                 quantization error to the update (peft#2502); `verify` measures how much.

Nothing here names a strategy or a task: they are asked through their protocol members.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit import options as opts
from adapterkit.errors import AdapterError, ModelError

if TYPE_CHECKING:
    from adapterkit.api import Loaded
    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import Strategy
    from adapterkit.task import Task

BASES = ("dequantized", "original")


@dataclass
class Plugins:
    """An adapter's manifest with its strategy and task (and their parsed options), before any
    model loads: enough to read its data and to name its base."""

    adapter: Path
    manifest: dict[str, Any]
    strategy: Strategy
    strategy_options: Any
    task: Task
    task_options: Any


def check_adapter_dir(adapter: Path) -> None:
    """An AdapterError unless `adapter` is an existing directory (the rest `read_adapter` checks)."""
    if not adapter.exists():
        raise AdapterError(f"{adapter}: no such adapter directory; give a run's --out directory")
    if not adapter.is_dir():
        raise AdapterError(f"{adapter}: not a directory; give the adapter's output directory")


def plugins_of(adapter: Path) -> Plugins:
    """The adapter's manifest, checked, and its strategy and task from the registry."""
    from adapterkit.plugins import load_registry
    from adapterkit.storage import adapter_format

    check_adapter_dir(adapter)
    manifest, _ = adapter_format.read_adapter(adapter)  # the weights are checked readable too
    adapter_format.check_manifest(manifest, f"{adapter}/{adapter_format.MANIFEST}")
    registry = load_registry()
    strategy = registry.strategy(manifest["strategy"]["name"])
    task = registry.task(manifest["task"]["name"])
    s_opts, s_err = opts.parse(
        type(strategy).Options, manifest["strategy"].get("options"), "strategy"
    )
    t_opts, t_err = opts.parse(type(task).Options, manifest["task"].get("options"), "task")
    if s_err or t_err:
        raise AdapterError(f"{adapter}/{adapter_format.MANIFEST}: " + "; ".join(s_err + t_err))
    return Plugins(adapter, manifest, strategy, s_opts, task, t_opts)


def base_source(found: Plugins) -> ModelSource:
    """The adapter's base model, resolved; a missing one is a ModelError naming the adapter."""
    from adapterkit.storage import adapter_format, sources

    name = found.manifest["base_model"]["name"]
    try:
        source = sources.resolve(name)
    except ModelError as exc:
        raise ModelError(
            f"{found.adapter}/{adapter_format.MANIFEST}: the adapter's base model {name!r} cannot "
            f"be loaded: {exc}"
        ) from exc
    adapter_format.check_base(found.manifest, sources.fingerprint(source), source.name)
    return source


def adapted(found: Plugins, source: ModelSource, base: str = "dequantized") -> Loaded:
    """Base + adapter, ready to merge or to compare with, on `base` (see the module docstring);
    `source` is `base_source(found)`."""
    from adapterkit import api

    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    if base == "dequantized":
        return api.load(found.adapter)
    return _original(found, source)


def plain_kwargs() -> dict[str, Any]:
    """`from_pretrained` arguments of the unquantized float32 base: none of a strategy's own."""
    import torch

    return {"dtype": torch.float32}


def _original(found: Plugins, source: ModelSource) -> Loaded:
    """The checkpoint's float32 weights, the strategy applied through `plan_apply`, the adapter
    loaded and checked tensor by tensor (as `api.load` does)."""
    from adapterkit.api import Loaded
    from adapterkit.storage import adapter_format
    from adapterkit.strategy import plan_apply
    from adapterkit.training import precision

    if found.manifest["base_model"].get("trust_remote_code"):
        raise AdapterError(
            f"{found.adapter}/{adapter_format.MANIFEST}: the base model was trained with "
            "trust_remote_code (it runs Python code shipped with the model); adapterkit does not "
            "run it on an adapter's say-so. Merge it with peft if you trust that model"
        )
    _, tensors = adapter_format.read_adapter(found.adapter)
    task, t_opts, strategy, s_opts = (
        found.task,
        found.task_options,
        found.strategy,
        found.strategy_options,
    )
    parts = task.model_parts(source, t_opts)
    model, tokenizer = task.load_model(source, t_opts, plain_kwargs())
    model = plan_apply(strategy, model, s_opts, parts)
    precision.upcast_trainable(model)
    adapter_format.check_tensors(
        {k: t.float() if t.is_floating_point() else t for k, t in tensors.items()},
        strategy.adapter_state_dict(model, s_opts),
        str(found.adapter / adapter_format.WEIGHTS),
    )
    strategy.load_adapter_state_dict(model, tensors, s_opts)
    model.eval()
    return Loaded(model, tokenizer, task, t_opts, strategy, s_opts, found.manifest, None)
