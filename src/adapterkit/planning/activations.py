"""Activation memory of one training step, derived from the architecture (no weights, no data).

"Activations" are the tensors autograd keeps from the forward pass for the backward pass (its
*saved tensors*), each storage counted once. Which tensors an op saves follows from its derivative
formula and from which of its inputs require grad; the lists below were written from PyTorch's
derivative definitions and checked against the saved tensors of real tiny models
(tests/unit/planning/test_memory.py walks the autograd graph and compares).

The step's `Numerics` say the element sizes. fp32: 4 bytes an element. bf16/fp16 autocast: what
each op keeps in the compute dtype (2 bytes), what stays float32 (RMSNorm's upcast input and
rsqrt, SDPA's log-sum-exp, CPU attention's math path, LoRA dropout masks, the residual stream
of a model whose embeddings train), and the casts autocast makes and autograd keeps (of float32
trained weights, of float32 inputs); exact on CPU, CUDA's half kernels modelled from PyTorch's
sources but not validated on a GPU (`families.common.cuda_half_attention`). Token ids are int64.

Two block families are written out in `families/` with these rules: a Llama-style decoder (Llama,
Mistral, Qwen2, SmolLM) and a BERT-style encoder. A family without `NUMERICS` takes the device in
their place and is counted in float32 at any precision (an upper bound for half precision).
Other architectures raise ValueError: the plan is not guessed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType

from adapterkit.planning.arch import FP32, Arch, Block, Device, Numerics, Saved, Trainable
from adapterkit.planning.families import bert, llama, t5

FAMILIES: dict[str, ModuleType] = {"llama": llama, "bert": bert, "t5": t5}
"""Each family module has `ROLES`/`role`, `block`, `below_blocks`, `above_blocks`, `transient`."""


def _family(a: Arch) -> ModuleType:
    return FAMILIES[a.family]


def _run(a: Arch, run: Numerics) -> Numerics | Device:
    """What a family's functions take: the Numerics where it models them, else the device."""
    return run if getattr(_family(a), "NUMERICS", False) else run.device


def _numerics(device: Device, run: Numerics | None) -> Numerics:
    return run if run is not None else Numerics(device=device)


def block_saved(a: Arch, blk: Block, grad_in: bool, b: int, length: int, run: Numerics) -> Saved:
    """The saved tensors of one block."""
    saved = Saved()
    _family(a).block(saved, a, blk, grad_in, b, length, _run(a, run))
    return saved


def _block_output_grad(
    a: Arch, blk: Block, grad_in: bool, b: int, length: int, run: Numerics
) -> bool:
    return _family(a).block(Saved(), a, blk, grad_in, b, length, _run(a, run))


def block_transient(
    a: Arch, b: int, length: int, device: Device, run: Numerics | None = None
) -> int:
    """The largest working set inside one block's forward that nothing keeps for backward: in a
    frozen block, all of it; in a trained one, less (what is saved is counted once, above), so
    this is an upper bound there. The larger of the attention's and the MLP's working sets, as
    each family's `transient` adds them up (`run`: the step's Numerics, default float32)."""
    return _family(a).transient(a, b, length, _run(a, _numerics(device, run)))


@dataclass(frozen=True)
class Activations:
    """Saved-tensor bytes without and with gradient checkpointing (per-block checkpoints)."""

    saved: int
    saved_checkpointed: int
    detail: dict[str, int]
    inside_blocks: int = 0  # saved so far + the unsaved working set, at the largest block


@dataclass
class _Blocks:
    """The blocks' saved tensors, added up in order."""

    saved: Saved
    in_graph: int  # blocks whose output requires grad (each keeps a checkpoint)
    largest: int  # the largest one block keeps
    inside: int  # saved so far + unsaved working set, at its largest
    grad_out: bool  # whether the last block's output requires grad


def _blocks(a: Arch, tr: Trainable, b: int, length: int, run: Numerics) -> _Blocks:
    out = _Blocks(Saved(), 0, 0, 0, tr.embeddings)
    working = block_transient(a, b, length, run.device, run)
    for blk in tr.blocks:
        s = block_saved(a, blk, out.grad_out, b, length, run)
        # Inside this block: what earlier blocks keep, what it keeps, and the part of its working
        # set that it does not keep (all of it in a frozen block, little in a trained one).
        out.inside = max(out.inside, out.saved.total + s.total + max(0, working - s.total))
        if out.grad_out or blk.any_trains():
            out.in_graph += 1
        out.largest = max(out.largest, s.total)
        for k, v in s.items.items():
            out.saved.add(k, v)
        out.grad_out = _block_output_grad(a, blk, out.grad_out, b, length, run)
    return out


def _attention_kept(a: Arch, tr: Trainable, b: int, length: int, run: Numerics) -> bool:
    """Whether any block's attention keeps anything for backward (Llama then keeps its rotary
    cos and sin, once for the model)."""
    return any(
        any(k.startswith("sdpa") for k in block_saved(a, blk, g, b, length, run).items)
        for blk, g in _grad_inputs(a, tr, b, length, run)
    )


def step_numerics(tr: Trainable, run: Numerics) -> Numerics:
    """`run` with the residual stream's dtype: the input embeddings' (float32 master weights
    where they train under autocast, so every block's residual is float32 then)."""
    return dataclasses.replace(run, residual=tr.embedding_bytes)


def activations(
    a: Arch, tr: Trainable, b: int, length: int, device: Device, run: Numerics | None = None
) -> Activations:
    """Saved tensors of the whole model for a batch of `b` rows of `length` tokens.

    Below the blocks, the embedding's; then every block's (`families/`); above them, the final
    norm's and the head's input. With gradient checkpointing every block that is in the graph
    keeps only its input hidden state; in backward one block at a time is recomputed, so the
    largest block's saved tensors come on top. `run`: the step's Numerics (default float32 on
    `device`).
    """
    t = b * length
    run = step_numerics(tr, _numerics(device, run))
    outside = Saved()
    family = _family(a)
    family.below_blocks(outside, a, tr, t, _run(a, run))
    blocks = _blocks(a, tr, b, length, run)
    attends = _attention_kept(a, tr, b, length, run)
    family.above_blocks(outside, a, tr, blocks.grad_out, attends, b, length, _run(a, run))
    hidden = run.residual if getattr(family, "NUMERICS", False) else FP32
    checkpoints = blocks.in_graph * t * a.hidden * hidden
    detail = {**outside.items, **{f"blocks: {k}": v for k, v in blocks.saved.items.items()}}
    return Activations(
        saved=outside.total + blocks.saved.total,
        saved_checkpointed=outside.total + checkpoints + blocks.largest,
        detail=detail,
        inside_blocks=outside.total + blocks.inside,
    )


def _grad_inputs(
    a: Arch, tr: Trainable, b: int, length: int, run: Numerics
) -> list[tuple[Block, bool]]:
    out = []
    grad = tr.embeddings
    for blk in tr.blocks:
        out.append((blk, grad))
        grad = _block_output_grad(a, blk, grad, b, length, run)
    return out
