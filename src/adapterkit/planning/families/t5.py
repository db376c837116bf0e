"""T5-style encoder-decoder blocks (T5, T5 v1.1, Flan-T5, mT5): the tensors each op keeps.

A T5 block is pre-norm (RMS-style T5LayerNorm, no bias), attention through SDPA with the relative
position bias as its float mask, then a ReLU MLP (`wi`, `wo`) or a gated-GELU one (`wi_0`, `wi_1`,
`wo`, T5 v1.1 and mT5), with dropout (`dropout_rate`) on the attention probabilities, after each
sublayer, inside the MLP and around each stack.

An encoder-decoder has two stacks; the planner's block list (`strategy.find_blocks`) is the
encoder's. Each of its blocks is counted here as a pair: the encoder block and the decoder block
of the same index, taken to train as the encoder block does (true for full, head, LoRA and QLoRA,
which treat both stacks alike), the decoder block with its cross-attention over the encoder's
output. The decoder is counted at the source length (the planner's one length), an upper bound
when targets are shorter. With gradient checkpointing each pair keeps one checkpoint where the
model keeps two (a hidden state per block), which the checkpointed figure leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from adapterkit.planning.arch import (
    CUDA_BIAS_ALIGN,
    CUDA_LSE_ALIGN,
    FP32,
    INT64,
    PHILOX_STATE,
    Arch,
    Block,
    Device,
    Linear,
    Saved,
    Trainable,
)
from adapterkit.planning.families.common import dropout, linear_group

T5_TYPES = frozenset({"t5", "mt5", "umt5"})
"""model_type values whose blocks this module writes out."""

ROLES = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


@dataclass(frozen=True)
class T5Arch(Arch):
    """T5's sizes: the attention's inner size (heads x d_kv) may differ from d_model."""

    gated: bool = False  # gated-GELU MLP (wi_0, wi_1) instead of ReLU (wi)


def arch(config: Any) -> T5Arch:
    """The sizes from a T5 config (`d_model`, `d_ff`, `num_heads`, `d_kv`, `dropout_rate`)."""
    drop = float(getattr(config, "dropout_rate", 0.0) or 0.0)
    return T5Arch(
        family="t5",
        hidden=int(config.d_model),
        intermediate=int(config.d_ff),
        heads=int(config.num_heads),
        kv_heads=int(config.num_heads),
        head_dim=int(config.d_kv),
        vocab=int(config.vocab_size),
        layers=int(config.num_layers),
        hidden_dropout=drop,
        attention_dropout=drop,
        gated=bool(getattr(config, "is_gated_act", False)),
    )


def role(local: str) -> str | None:
    """The role of a block-relative linear (`layer.0.SelfAttention.q` -> `q`)."""
    last = local.rsplit(".", 1)[-1]
    return last if last in ROLES and "." in local else None


def _lives(x: Linear) -> bool:
    return x.trains or bool(x.lora_r)


def _norm(saved: Saved, name: str, t: int, h: int, grad_in: bool, weight: bool) -> bool:
    """T5LayerNorm: `pow` keeps x and `rsqrt` its output when x requires grad; a trained weight
    keeps the normalised x. Returns whether its output requires grad."""
    if grad_in:
        saved.add(f"{name} input", t * h * FP32)
        saved.add(f"{name} rsqrt", t * FP32)
    if weight:
        saved.add(f"{name} normalised (weight grad)", t * h * FP32)
    return grad_in or weight


def _mask_bytes(a: Arch, b: int, length: int) -> int:
    """The float mask SDPA gets per layer: position bias plus padding, [b, heads, L, L] (one row
    of it for a batch of one, which has no padding)."""
    return (b if b > 1 else 1) * a.heads * length**2 * FP32


def _sdpa(saved: Saved, name: str, a: Arch, b: int, length: int, device: Device) -> None:
    """SDPA with a float mask. CPU with dropout: the math path (scaled q and k, v, softmax, its
    dropout mask and the dropped probabilities); CPU without: the fused kernel (q, k, v, output,
    log-sum-exp). CUDA, float32: the memory-efficient kernel, which keeps its inputs (the mask
    too, its last dimension padded to 16), the output, a log-sum-exp padded to 32 and its RNG
    state."""
    t, inner = b * length, a.heads * a.head_dim
    probs = b * a.heads * length**2
    if device == "cpu" and a.attention_dropout > 0:
        saved.add(f"{name} q, k, v (scaled copies)", 3 * t * inner * FP32)
        saved.add(f"{name} softmax + dropped probs", 2 * probs * FP32)
        dropout(saved, f"{name} dropout mask", probs, device)
    elif device == "cpu":
        saved.add(f"{name} sdpa q, k, v, output", 4 * t * inner * FP32)
        saved.add(f"{name} sdpa log-sum-exp", b * a.heads * length * FP32)
    else:
        aligned = math.ceil(length / CUDA_BIAS_ALIGN) * CUDA_BIAS_ALIGN
        lse = b * a.heads * math.ceil(length / CUDA_LSE_ALIGN) * CUDA_LSE_ALIGN * FP32
        saved.add(f"{name} sdpa q, k, v, output", 4 * t * inner * FP32)
        saved.add(f"{name} sdpa log-sum-exp", lse)
        saved.add(f"{name} sdpa rng state", PHILOX_STATE)
        rows = b if b > 1 else 1
        saved.add(f"{name} sdpa mask (aligned copy)", rows * a.heads * length * aligned * FP32)


def _attention(
    saved: Saved, name: str, a: Arch, blk: Block, live: bool, b: int, length: int, device: Device
) -> bool:
    """Norm, q/k/v, SDPA, o and the dropout after it; returns whether the output needs grad."""
    t, h, inner = b * length, a.hidden, a.heads * a.head_dim
    normed = _norm(saved, f"{name} norm", t, h, live, blk.norms_train)
    qkv = [blk.get("q"), blk.get("k"), blk.get("v")]
    linear_group(saved, f"{name} q/k/v", t, h, qkv, device, normed)
    live = normed or any(_lives(x) for x in qkv)
    if live:
        _sdpa(saved, name, a, b, length, device)
    o = blk.get("o")
    linear_group(saved, f"{name} o", t, inner, [o], device, live)
    live = live or _lives(o)
    if live and a.hidden_dropout > 0:
        dropout(saved, f"{name} output dropout mask", t * h, device)
    return live


def _mlp(
    saved: Saved, a: Arch, blk: Block, live: bool, b: int, length: int, device: Device
) -> bool:
    """Norm, then wi -> ReLU (keeps its output), or wi_0 -> GELU (tanh formula: x, tanh, and both
    factors of the product) times wi_1 (both factors); dropout; wo; the dropout after it."""
    t, h, ff = b * length, a.hidden, a.intermediate
    normed = _norm(saved, "mlp norm", t, h, live, blk.norms_train)
    gated = bool(getattr(a, "gated", False))
    ins = [blk.get("wi_0"), blk.get("wi_1")] if gated else [blk.get("wi")]
    linear_group(saved, "mlp wi", t, h, ins, device, normed)
    live = normed or any(_lives(x) for x in ins)
    if live:
        saved.add("mlp activation", (6 if gated else 1) * t * ff * FP32)
        if a.hidden_dropout > 0:
            dropout(saved, "mlp dropout mask", t * ff, device)
    wo = blk.get("wo")
    linear_group(saved, "mlp wo", t, ff, [wo], device, live)
    live = live or _lives(wo)
    if live and a.hidden_dropout > 0:
        dropout(saved, "mlp output dropout mask", t * h, device)
    return live


def block(
    saved: Saved, a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device
) -> bool:
    """Encoder block `i` and decoder block `i` (self-attention, cross-attention over the encoder
    output, MLP); returns whether the encoder block's output requires grad."""
    live = _attention(saved, "self-attention", a, blk, grad_in, b, length, device)
    out = _mlp(saved, a, blk, live, b, length, device)
    # the decoder block: its stack's hidden state is taken to need grad as the encoder's does
    dec = _attention(saved, "decoder self-attention", a, blk, grad_in, b, length, device)
    encoder_out = grad_in or blk.any_trains()
    dec = _attention(saved, "cross-attention", a, blk, dec or encoder_out, b, length, device)
    _mlp(saved, a, blk, dec, b, length, device)
    return out


def below_blocks(outside: Saved, a: Arch, tr: Trainable, t: int, device: Device) -> None:
    """A trained (shared) embedding keeps the encoder's and the decoder's token ids, and each
    stack's input dropout its mask."""
    if not tr.embeddings:
        return
    outside.add("embedding token ids (encoder, decoder)", 2 * t * INT64)
    if a.hidden_dropout > 0:
        dropout(outside, "embedding dropout masks (encoder, decoder)", 2 * t * a.hidden, device)


def above_blocks(
    outside: Saved,
    a: Arch,
    tr: Trainable,
    grad: bool,
    attends: bool,
    b: int,
    length: int,
    device: Device,
) -> None:
    """Each stack's final norm and dropout; the encoder output, read by every cross-attention's
    k and v, kept once when they train; the head's input; a trained relative position bias
    (in the first block of each stack) keeps its [L, L] bucket ids."""
    t, h = b * length, a.hidden
    if tr.blocks and tr.blocks[0].get("q").trains:  # trains with the first block's weights
        outside.add("relative position buckets (encoder, decoder)", 2 * length**2 * INT64)
    for stack in ("encoder", "decoder"):
        _norm(outside, f"{stack} final norm", t, h, grad, tr.final_norm)
        if (grad or tr.final_norm) and a.hidden_dropout > 0:
            dropout(outside, f"{stack} output dropout mask", t * h, device)
    if any(blk.get("k").trains or blk.get("v").trains for blk in tr.blocks):
        outside.add("cross-attention k/v input (the encoder output, once)", t * h * FP32)
    if tr.head:
        outside.add("head input", t * h * FP32)


def transient(a: Arch, b: int, length: int, device: Device) -> int:
    """MLP: input, residual, the up projections and the activation; attention: the block input,
    q, k, v, the per-layer float mask, and on CPU with dropout the math path's scores, softmax,
    dropped probabilities and noise."""
    t, inner = b * length, a.heads * a.head_dim
    ups = 4 if getattr(a, "gated", False) else 2
    mlp = 2 * t * a.hidden * FP32 + ups * t * a.intermediate * FP32
    attn = t * a.hidden * FP32 + 3 * t * inner * FP32 + _mask_bytes(a, b, length)
    if device == "cpu" and a.attention_dropout > 0:
        attn += 4 * b * a.heads * length**2 * FP32
    return max(mlp, attn)
