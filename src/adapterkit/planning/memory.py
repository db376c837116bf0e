"""Memory plan from the model config alone: the model is built on the meta device, no weight is read.

The meta model is given the dtypes the run gives the real one (layout.as_trained): with
`precision` bf16/fp16 the frozen base is stored in that dtype and the trained parameters are
float32 master weights, and the forward runs under autocast (activations.py says what that
keeps). For each strategy, in bytes:

    weights            every parameter at the dtype it is stored in (NF4 + its statistics for QLoRA)
    gradients          one gradient per trainable parameter, in its dtype (float32 master weights)
    optimizer          AdamW: two moments per trainable parameter (its dtype) + a float32 `step`
                       per trainable tensor (torch keeps it as a 0-dim tensor)
    activations        saved tensors for backward (activations.py), with and without
                       gradient checkpointing
    logits_and_loss    what the task's loss holds (`Task.logits_bytes`; told the dtypes of the
                       final hidden states and of the head where it takes them)
    block_transient    the largest working set of one block's forward that is not kept for
                       backward (activations.block_transient)
    runtime_overhead   CPU: the resident process before any model (CPU_RUNTIME_BYTES); CUDA: the
                       cuBLAS workspaces (CUDA_CUBLAS_WORKSPACE_BYTES)
    checkpoint_mapped  CPU, QLoRA: the checkpoint pages of the weights it quantized, still mapped

The peak of a step is taken where it happens (the trainer frees gradients with set_to_none after
every step, and AdamW creates its state at the first step, so from step 2 on it is always there):

    total = runtime + checkpoint_mapped + weights + optimizer
            + max(activations + logits_and_loss,        # end of forward / start of backward
                  inside_blocks,                         # inside a block's forward
                  gradients + optimizer_step_scratch)    # end of backward / the AdamW update

where inside_blocks is, at the block where it is largest, what the blocks so far keep plus the
part of that block's working set (block_transient) it does not keep: all of it in a frozen block,
which is what decides the peak of a model whose blocks are all frozen. With gradient
checkpointing, activations_checkpointed + max(logits_and_loss, block_transient) replaces the
first two terms: recomputation runs one block's forward at a time, working set and all.

Gradients of a block appear in backward as that block's saved tensors are freed, so the two
terms trade places rather than add up. No factor is fitted to measurements.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Literal

from adapterkit.build import build_model
from adapterkit.planning.activations import Activations, activations, block_transient, step_numerics
from adapterkit.planning.arch import FP32, Arch, Trainable, arch_from_config
from adapterkit.planning.layout import Precision, as_trained, numerics, trainable_layout
from adapterkit.planning.weights import (
    planning_source,
    quantized_linears,
    trainable_tensors,
    weight_bytes,
)
from adapterkit.strategy import quantized_base
from adapterkit.task import logits_bytes, packs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from adapterkit.recipe import Recipe
    from adapterkit.strategy import Strategy
    from adapterkit.task import Task

Device = Literal["cpu", "cuda"]

CPU_RUNTIME_BYTES = 458_232 * 1024
"""Resident memory of a training process before its model: Python with torch, transformers, peft,
accelerate, bitsandbytes and adapterkit imported, a tiny LoRA model built and one backward run
(so autograd's and the BLAS thread pools' own memory is in). Measured once as VmRSS of a fresh
process (`benchmarks/plan_vs_measured.py --measure-runtime`): 458,232 KiB on the 2-core
development machine, torch 2.13 CPU, transformers 5.23, peft 0.21, bitsandbytes 0.50. CUDA's
`max_memory_allocated` does not include it; the CUDA runtime term is the cuBLAS workspaces."""

CUDA_CUBLAS_WORKSPACE_BYTES = 32 * 2**20
"""cuBLAS workspace torch allocates through its caching allocator, once per (handle, stream), and
handles are per thread: the training thread's forward matmuls take one, the autograd engine's
device thread's backward matmuls another. 32 MiB each is torch's default on Hopper (sm90) and
later GPUs (earlier ones: 8 MiB + 128 KiB), the larger is planned; `CUBLAS_WORKSPACE_CONFIG`
changes it. Seen in allocator traces on an H100 (`benchmarks/plan_trace.py`): two 32 MiB blocks,
one allocated at the first forward matmul, one with no Python frame in backward."""
CUDA_WORKSPACES = 2

STEP_TENSORS = 1
"""AdamW keeps one 0-dim float32 `step` tensor per trainable parameter tensor (torch >= 2.0)."""


@dataclasses.dataclass
class StrategyPlan:
    """One strategy's memory plan; every figure in bytes."""

    strategy: str
    batch_size: int
    seq_len: int
    device: Device
    trainable_params: int
    total_params: int
    components: dict[str, Any]
    gradient_checkpointing: bool | None = None
    precision: str = "fp32"  # the arithmetic planned: fp32, bf16 or fp16 (autocast)
    _recompute: Callable[[int], StrategyPlan] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def peak(self, checkpointed: bool | None = None) -> int:
        """The peak in bytes, with or without gradient checkpointing (default: as planned)."""
        ckpt = self.gradient_checkpointing if checkpointed is None else checkpointed
        return int(self.components["total_checkpointed" if ckpt else "total"])

    @property
    def total(self) -> int:
        """The peak for the planned checkpointing setting (off when not set)."""
        return self.peak()

    def fits(self, budget_bytes: int, checkpointed: bool | None = None) -> bool:
        return self.peak(checkpointed) <= budget_bytes

    def max_batch_size(
        self, budget_bytes: int, checkpointed: bool | None = None, limit: int = 1 << 16
    ) -> int:
        """The largest batch size (at this sequence length) whose peak fits the budget, 0 when
        none does: doubling, then bisection, over the same formulas."""
        recompute = self._recompute
        if recompute is None:
            raise ValueError("this plan was not made by plan(); it cannot be recomputed")
        ckpt = self.gradient_checkpointing if checkpointed is None else checkpointed
        return _max_batch(lambda b: recompute(b).fits(budget_bytes, ckpt), limit)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("_recompute")
        d["total"] = self.total
        return d


def _max_batch(ok: Callable[[int], bool], limit: int) -> int:
    if not ok(1):
        return 0
    lo = 1
    while lo * 2 <= limit and ok(lo * 2):
        lo *= 2
    hi = min(lo * 2, limit + 1)  # ok(lo) and not ok(hi) (or hi beyond the limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


# ---- the plan ------------------------------------------------------------------------------------


def optimizer_bytes(tensors: list[tuple[str, int, int]]) -> int:
    """AdamW state: exp_avg and exp_avg_sq (one each per trainable parameter, in its dtype:
    float32 master weights under autocast) and the 0-dim float32 `step` of every trainable
    tensor. `tensors`: (name, numel, bytes an element)."""
    return sum(2 * n * size + STEP_TENSORS * FP32 for _, n, size in tensors)


def step_scratch_bytes(tensors: list[tuple[str, int, int]], device: Device) -> int:
    """Temporaries of the AdamW update: none. The trainer takes torch's fused AdamW
    (`train.optim.make_optimizer`; CPU and CUDA have it), which updates each element in place
    (profiled on CPU: the step's peak is the parameters, gradients and moments alone)."""
    return 0


def plan(  # noqa: PLR0913 (the public signature; precision is keyword-only, after the eight)
    config_or_source: Any,
    task_name: str | type[Task] | Task,
    strategies: Sequence[str | type[Strategy]],
    strategy_options: dict[str, Any] | None,
    batch_size: int,
    seq_len: int,
    device: Device,
    task_options: Any = None,
    *,
    precision: str | Precision = "fp32",
) -> list[StrategyPlan]:
    """A memory plan per strategy for `batch_size` rows of `seq_len` tokens on `device`.

    `config_or_source`: a transformers config, a config.json path, a model directory, or an
    embedded short name. `task_name` and each of `strategies`: a registered name, or a class (a
    plugin under test need not be registered). `strategy_options`: {strategy name: options dict or
    Options instance}. `task_options`: the task's parsed options (default: its defaults).
    `precision`: the run's arithmetic, fp32, bf16 or fp16 (autocast, the base stored in that
    dtype, as `model.dtype: auto`), or a `Precision` naming another base dtype.
    """
    task = _task(task_name)
    t_opts = task_options if task_options is not None else type(task).Options()
    prec = precision if isinstance(precision, Precision) else Precision(precision)
    with planning_source(config_or_source) as (config, source):
        arch = arch_from_config(config)
        plans = []
        for cls in _strategy_classes(strategies):
            raw = (strategy_options or {}).get(cls.name)
            options = raw if isinstance(raw, cls.Options) else cls.Options(**(raw or {}))
            strategy = cls()
            built = build_model(source, task, t_opts, strategy, options, meta_config=config)
            quantized = quantized_base(strategy)
            as_trained(built.model, prec, quantized)
            head = built.parts.head
            weights = weight_bytes(built.model, quantized, head)
            names = quantized_linears(built.model, head) if quantized else set()
            layout = trainable_layout(built.model, arch.family, head, names)
            static = _static(weights, trainable_tensors(built.model), device)
            static |= {"packed": packs(task, t_opts), "precision": prec}
            logits = _logits_fn(task, config, t_opts, layout, prec)
            recompute = functools.partial(_make, cls.name, arch, layout, static, logits,
                                          length=seq_len, device=device)  # fmt: skip
            p = recompute(batch_size)
            p._recompute = recompute
            plans.append(p)
    return plans


def _logits_fn(
    task: Task, config: Any, options: Any, layout: Trainable, precision: Precision
) -> Callable[..., int]:
    """`logits_bytes` for the task, told (where its `logits_bytes` takes them) the bytes of an
    element of the final hidden states its loss reads (`hidden_bytes`), of the head's weight
    (`head_bytes`) and of autocast's compute dtype (`compute_bytes`, 4 without autocast): they
    change what a loss copies and in which dtype its matmuls run."""
    import inspect

    own = getattr(task, "logits_bytes", None)
    fn = functools.partial(logits_bytes, task, config=config, options=options)
    if own is None:
        return fn
    params = set(inspect.signature(own).parameters)
    hidden = max(layout.final_norm_bytes, layout.embedding_bytes)  # the final norm's output
    told = {
        "hidden_bytes": hidden,
        "head_bytes": layout.head_bytes,
        "compute_bytes": 2 if precision.half else 4,
    }
    extra = {k: v for k, v in told.items() if k in params}
    return lambda batch, length: int(own(batch, length, config, options, **extra))


def _task(task: str | type[Task] | Task) -> Task:
    if isinstance(task, str):
        from adapterkit.plugins import load_registry

        return load_registry().task(task)
    return task() if isinstance(task, type) else task


def _strategy_classes(strategies: Sequence[str | type[Strategy]]) -> list[type[Strategy]]:
    from adapterkit.plugins import load_registry

    registry = None
    out = []
    for item in strategies:
        if isinstance(item, str):
            registry = registry or load_registry()
            item = type(registry.strategy(item))
        out.append(item)
    return out


def _static(
    weights: dict[str, Any], tensors: list[tuple[str, int, int]], device: Device
) -> dict[str, Any]:
    return {
        "weights": weights["total"],
        "weights_detail": weights["detail"],
        "logical_params": weights["logical_params"],
        "trainable": sum(n for _, n, _ in tensors),
        "gradients": sum(n * size for _, n, size in tensors),  # a gradient has its tensor's dtype
        "optimizer": optimizer_bytes(tensors),
        "optimizer_step_scratch": step_scratch_bytes(tensors, device),
        "runtime_overhead": (
            CPU_RUNTIME_BYTES if device == "cpu" else CUDA_WORKSPACES * CUDA_CUBLAS_WORKSPACE_BYTES
        ),
        # CPU: a quantized load reads the checkpoint through a memory map that stays open, so
        # the pages of the weights it quantized stay resident beside their NF4 copies (seen as
        # RssFile after training: SmolLM2 QLoRA keeps 517 MiB of it where LoRA's mapped pages
        # *are* its weights). The GPU's memory never holds them.
        "checkpoint_mapped": weights["quantized_source_bytes"] if device == "cpu" else 0,
    }


def _make(
    name: str,
    arch: Arch,
    layout: Trainable,
    st: dict,
    logits_fn: Callable[..., int],
    b: int,
    length: int,
    device: Device,
) -> StrategyPlan:
    # A task that packs a step's rows hands the blocks one sequence of b x length tokens (no
    # padding mask, per-row attention); the logits are the task's to say either way.
    rows, row_length = (1, b * length) if st["packed"] else (b, length)
    run = numerics(st["precision"], device, segments=b if st["packed"] else 1)
    acts: Activations = activations(arch, layout, rows, row_length, device, run)
    logits = logits_fn(batch=b, length=length)
    transient = block_transient(arch, rows, row_length, device, step_numerics(layout, run))
    fixed = st["runtime_overhead"] + st["checkpoint_mapped"] + st["weights"] + st["optimizer"]
    after = st["gradients"] + st["optimizer_step_scratch"]
    comp = {
        "weights": st["weights"],
        "weights_detail": st["weights_detail"],
        "gradients": st["gradients"],
        "optimizer": st["optimizer"],
        "optimizer_step_scratch": st["optimizer_step_scratch"],
        "activations": acts.saved,
        "activations_checkpointed": acts.saved_checkpointed,
        "activations_detail": acts.detail,
        "logits_and_loss": logits,
        "block_transient": transient,
        "inside_blocks": acts.inside_blocks,
        "runtime_overhead": st["runtime_overhead"],
        "checkpoint_mapped": st["checkpoint_mapped"],
        "total": fixed + max(acts.saved + logits, acts.inside_blocks, after),
        "total_checkpointed": fixed + max(acts.saved_checkpointed + max(logits, transient), after),
    }
    plan = StrategyPlan(name, b, length, device, st["trainable"], st["logical_params"], comp)
    plan.precision = st["precision"].precision
    return plan


def from_recipe(
    recipe: Recipe, strategies: Sequence[str | type[Strategy]] | None, device: Device
) -> list[StrategyPlan]:
    """Plan a resolved recipe: its model, task, batch size, max_length, precision, base dtype
    and checkpointing.

    `strategies` (names or classes, as for `plan`) defaults to the recipe's own; the recipe's
    strategy options apply to it. `train.precision` and `model.dtype` are resolved as the
    trainer resolves them (`recipe_precision`).
    """
    from adapterkit import options as opts

    names = strategies or [recipe.strategy.name]
    t_opts = recipe.task.options
    s_opts = {recipe.strategy.name: opts.as_dict(recipe.strategy.options)}
    plans = plan(
        recipe.model.name,
        recipe.task.name,
        names,
        s_opts,
        recipe.train.batch_size,
        int(getattr(t_opts, "max_length", 512)),
        device,
        task_options=t_opts,
        precision=recipe_precision(recipe, device),
    )
    checkpointing = recipe.train.gradient_checkpointing  # True, False, or "auto" (decided later)
    for p in plans:  # which peak is "the" plan: the recipe's checkpointing setting, when it has one
        p.gradient_checkpointing = checkpointing if isinstance(checkpointing, bool) else None
    return plans


def recipe_precision(recipe: Recipe, device: Device) -> Precision:
    """The precision and base dtype a training run of `recipe` on `device` would use.

    On this machine's own device, exactly the trainer's resolution (`train.resolve.settings`:
    `precision: auto` for this hardware, `model.dtype: auto` following it). Planning a device
    this machine does not have, `auto` is what it means there: bf16 on a CUDA GPU (those without
    it take fp16), and on a CPU bf16 where this CPU has AVX-512 BF16 or AMX
    (`ADAPTERKIT_AUTO_PRECISION` overrides both, as it does for the trainer).
    """
    import os

    import torch

    from adapterkit.build import base_dtype
    from adapterkit.training import precision as prec
    from adapterkit.training import resolve

    if (device == "cuda") == torch.cuda.is_available():
        cfg, model = resolve.settings(recipe)
        return Precision(cfg.precision, model.dtype)
    requested = recipe.train.precision
    if requested == "auto":
        cpu = "bf16" if prec.cpu_has_bf16(prec.cpu_flags()) else "fp32"
        requested = os.environ.get(prec.AUTO_ENV) or ("bf16" if device == "cuda" else cpu)
    return Precision(requested, base_dtype(recipe.model.dtype, requested))


__all__ = ["Precision", "StrategyPlan", "from_recipe", "plan", "recipe_precision"]
