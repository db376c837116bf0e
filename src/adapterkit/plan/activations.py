"""Activation memory of one training step, derived from the architecture (no weights, no data).

"Activations" are the tensors autograd keeps from the forward pass for the backward pass (its
*saved tensors*), each storage counted once. Which tensors an op saves follows from its derivative
formula and from which of its inputs require grad; the lists below were written from PyTorch's
derivative definitions and checked against the saved tensors of real tiny models
(tests/unit/plan/test_memory.py walks the autograd graph and compares).

Everything is fp32 (the trainer's default `precision: fp32`): 4 bytes an element; token ids are
int64 (8 bytes). bf16 autocast is not modelled.

Two block families are written out in `families/`: a Llama-style decoder (Llama, Mistral, Qwen2,
SmolLM) and a BERT-style encoder. Other architectures raise ValueError: the plan is not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from adapterkit.plan.arch import FP32, Arch, Block, Device, Saved, Trainable
from adapterkit.plan.families import bert, llama

FAMILIES: dict[str, ModuleType] = {"llama": llama, "bert": bert}
"""Each family module has `ROLES`/`role`, `block`, `below_blocks`, `above_blocks`, `transient`."""


def _family(a: Arch) -> ModuleType:
    return FAMILIES[a.family]


def block_saved(a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device) -> Saved:
    """The saved tensors of one block."""
    saved = Saved()
    _family(a).block(saved, a, blk, grad_in, b, length, device)
    return saved


def _block_output_grad(
    a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device
) -> bool:
    return _family(a).block(Saved(), a, blk, grad_in, b, length, device)


def block_transient(a: Arch, b: int, length: int, device: Device) -> int:
    """The largest working set inside one block's forward that nothing keeps for backward: in a
    frozen block, all of it; in a trained one, less (what is saved is counted once, above), so
    this is an upper bound there. The larger of the attention's and the MLP's working sets, as
    each family's `transient` adds them up."""
    return _family(a).transient(a, b, length, device)


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


def _blocks(a: Arch, tr: Trainable, b: int, length: int, device: Device) -> _Blocks:
    out = _Blocks(Saved(), 0, 0, 0, tr.embeddings)
    working = block_transient(a, b, length, device)
    for blk in tr.blocks:
        s = block_saved(a, blk, out.grad_out, b, length, device)
        # Inside this block: what earlier blocks keep, what it keeps, and the part of its working
        # set that it does not keep (all of it in a frozen block, little in a trained one).
        out.inside = max(out.inside, out.saved.total + s.total + max(0, working - s.total))
        if out.grad_out or blk.any_trains():
            out.in_graph += 1
        out.largest = max(out.largest, s.total)
        for k, v in s.items.items():
            out.saved.add(k, v)
        out.grad_out = _block_output_grad(a, blk, out.grad_out, b, length, device)
    return out


def _attention_kept(a: Arch, tr: Trainable, b: int, length: int, device: Device) -> bool:
    """Whether any block's attention keeps anything for backward (Llama then keeps its rotary
    cos and sin, once for the model)."""
    return any(
        any(k.startswith("sdpa") for k in block_saved(a, blk, g, b, length, device).items)
        for blk, g in _grad_inputs(a, tr, b, length, device)
    )


def activations(a: Arch, tr: Trainable, b: int, length: int, device: Device) -> Activations:
    """Saved tensors of the whole model for a batch of `b` rows of `length` tokens.

    Below the blocks, the embedding's; then every block's (`families/`); above them, the final
    norm's and the head's input. With gradient checkpointing every block that is in the graph
    keeps only its input hidden state; in backward one block at a time is recomputed, so the
    largest block's saved tensors come on top.
    """
    t = b * length
    outside = Saved()
    family = _family(a)
    family.below_blocks(outside, a, tr, t, device)
    blocks = _blocks(a, tr, b, length, device)
    attends = _attention_kept(a, tr, b, length, device)
    family.above_blocks(outside, a, tr, blocks.grad_out, attends, b, length, device)
    checkpoints = blocks.in_graph * t * a.hidden * FP32
    detail = {**outside.items, **{f"blocks: {k}": v for k, v in blocks.saved.items.items()}}
    return Activations(
        saved=outside.total + blocks.saved.total,
        saved_checkpointed=outside.total + checkpoints + blocks.largest,
        detail=detail,
        inside_blocks=outside.total + blocks.inside,
    )


def _grad_inputs(
    a: Arch, tr: Trainable, b: int, length: int, device: Device
) -> list[tuple[Block, bool]]:
    out = []
    grad = tr.embeddings
    for blk in tr.blocks:
        out.append((blk, grad))
        grad = _block_output_grad(a, blk, grad, b, length, device)
    return out
