"""Llama-style decoder blocks (RMSNorm, rotary positions, grouped-query attention, gated SiLU MLP:
Llama, Mistral, Qwen2, SmolLM): the tensors each op keeps for backward, in fp32 and under
bf16/fp16 autocast.

Every function takes the step's `Numerics` (`run`: device, precision, packing) where families
without them take the device (`NUMERICS`)."""

from __future__ import annotations

from adapterkit.planning.arch import (
    FP32,
    INT64,
    Arch,
    Block,
    Input,
    Linear,
    Numerics,
    Saved,
    Trainable,
)
from adapterkit.planning.families.common import cuda_attention, linears, matmul_out

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NUMERICS = True
"""The functions below take the step's Numerics in place of the device."""


def role(local: str) -> str | None:
    """The role of a block-relative module name (`self_attn.q_proj` -> `q_proj`), if a linear."""
    last = local.rsplit(".", 1)[-1]
    return last if last in ROLES else None


def _lives(x: Linear) -> bool:
    return x.trains or bool(x.lora_r)


def _norm(
    saved: Saved, name: str, t: int, h: int, grad_in: bool, trains: bool, run: Numerics
) -> None:
    """RMSNorm, `w * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`: when x requires grad,
    `pow` keeps the float32 x (an upcast copy of a half x) and `rsqrt` its output (1 value a
    token); a trained weight keeps the normalised x, back in x's dtype."""
    if grad_in:
        saved.add(f"{name} input", t * h * FP32)
        saved.add(f"{name} rsqrt", t * FP32)
    if trains:
        saved.add(f"{name} normalised (weight grad)", t * h * run.residual)


def _sdpa_cpu(saved: Saved, a: Arch, b: int, length: int, run: Numerics) -> None:
    """CPU SDPA (the fused kernel) keeps q, k, v and its output in the compute dtype (autocast
    casts a float32 q or k, rotated by float32 cos/sin, first) and a float32 log-sum-exp per
    query and head. A padded batch (several rows) passes a mask, which it keeps (a copy per
    layer, in the compute dtype), and transformers then repeats k/v to every head (no native GQA
    with a mask). Packed rows each take their own call on slices of q, k and v: the same bytes."""
    t, e = b * length, run.compute
    kv_kept = a.heads if b > 1 else a.kv_heads
    saved.add("sdpa query", t * a.heads * a.head_dim * e)
    saved.add("sdpa key+value", 2 * b * kv_kept * length * a.head_dim * e)
    saved.add("sdpa output", t * a.heads * a.head_dim * e)
    saved.add("sdpa log-sum-exp", b * a.heads * length * FP32)
    if b > 1:
        saved.add("sdpa padding mask (copy per layer)", b * length**2 * e)


def _attention(
    saved: Saved, a: Arch, blk: Block, x: Input, b: int, length: int, run: Numerics
) -> bool:
    """q/k/v on the norm's output `x`, SDPA, o_proj; returns whether the attention's output
    requires grad."""
    t, q_dim = b * length, a.heads * a.head_dim
    qkv = [blk.get("q_proj"), blk.get("k_proj"), blk.get("v_proj")]
    linears(saved, "q/k/v", x, qkv, run)
    attn_in = x.grad or any(_lives(lin) for lin in qkv)
    # SDPA returns its output as a transposed view of a [B, L, heads, head_dim] buffer, so the
    # o_proj input (`transpose(1, 2).contiguous()`) is that same storage, already kept by SDPA;
    # packed rows' outputs are joined into a new one, and CUDA's math path returns
    # [B, heads, L, head_dim], which o_proj reads as a new copy.
    output_shared = attn_in and run.segments == 1
    o = blk.get("o_proj")
    if attn_in and run.device == "cuda":
        o_keeps = o.trains or (bool(o.lora_r) and o.lora_dropout == 0)
        items, output_shared = cuda_attention(a, b, length, o_keeps, run=run)
        for name, nbytes in items.items():
            saved.add(name, nbytes)
    elif attn_in:
        _sdpa_cpu(saved, a, b, length, run)
    # SDPA's output is in the compute dtype (autocast's, or its inputs')
    linears(saved, "o_proj", Input(t, q_dim, run.compute, attn_in, output_shared), [o], run)
    return attn_in or _lives(o)


def block(
    saved: Saved, a: Arch, blk: Block, grad_in: bool, b: int, length: int, run: Numerics
) -> bool:
    """One Llama decoder block; returns whether its output requires grad.

    RMSNorm: `_norm`; its output is the weight's dtype times the input's (float32 under autocast
    where the weight trains), and each linear reading a float32 one casts it. q/k/v read the
    norm's output; rotary embedding multiplies by cos and sin (kept once for the model, see
    `above_blocks`); SDPA: `_sdpa_cpu`, or on CUDA `cuda_attention`. The MLP keeps gate (SiLU
    backward), SiLU(gate) and up (the product's backward), in the linears' output dtype;
    down_proj reads their product.
    """
    t, h, inter = b * length, a.hidden, a.intermediate
    normed = max(blk.norm_bytes, run.residual)  # the norms' output dtype
    _norm(saved, "norm", t, h, grad_in, blk.norms_train, run)
    x = Input(t, h, normed, grad_in or blk.norms_train)
    mid = _attention(saved, a, blk, x, b, length, run)
    _norm(saved, "norm", t, h, mid, blk.norms_train, run)
    gate_up = [blk.get("gate_proj"), blk.get("up_proj")]
    linears(saved, "gate/up", Input(t, h, normed, mid or blk.norms_train), gate_up, run)
    act_in = mid or blk.norms_train or any(_lives(lin) for lin in gate_up)
    act = matmul_out(run, normed, gate_up)
    if act_in:
        saved.add("mlp gate, silu(gate), up", 3 * t * inter * act)
    down = blk.get("down_proj")
    linears(saved, "down_proj", Input(t, inter, act, act_in), [down], run)
    return act_in or _lives(down) or grad_in


def below_blocks(outside: Saved, a: Arch, tr: Trainable, t: int, run: Numerics) -> None:
    """A trained embedding keeps the token ids (int64)."""
    if tr.embeddings:
        outside.add("embedding token ids", t * INT64)


def above_blocks(
    outside: Saved,
    a: Arch,
    tr: Trainable,
    grad: bool,
    attends: bool,
    b: int,
    length: int,
    run: Numerics,
) -> None:
    """Rotary cos and sin (L x head_dim each, in the embeddings' dtype, computed once and kept
    once, when any block's SDPA keeps anything: `attends`), the final norm, the head's input (in
    the compute dtype) and, under autocast, the cast of a float32 head weight when its input
    requires grad."""
    t, h, e = b * length, a.hidden, run.compute
    if attends:
        outside.add("rotary cos, sin", 2 * length * a.head_dim * run.residual)
    if grad:
        outside.add("final norm input + rsqrt", t * (h + 1) * FP32)
    if tr.final_norm:
        outside.add("final norm normalised (weight grad)", t * h * run.residual)
    if tr.head:
        outside.add("head input", t * h * e)
    if run.autocast and tr.head_bytes != e and (grad or tr.final_norm):
        outside.add("head weight cast", h * tr.head_out * e)


def transient(a: Arch, b: int, length: int, run: Numerics) -> int:
    """MLP: input, residual, SiLU(gate), up and their product; attention: the block input and
    q, k, v, plus CUDA's float32 math path's scores and softmax (grouped-query attention)."""
    t, e, r = b * length, run.compute, run.residual
    q_dim = a.heads * a.head_dim
    mlp = 2 * t * a.hidden * r + 3 * t * a.intermediate * e
    attn = t * a.hidden * r + 3 * t * q_dim * e
    if run.device == "cuda" and a.kv_heads < a.heads and not run.autocast:  # cuda_attention
        seg = length // max(1, run.segments)
        attn += 2 * b * a.heads * max(1, run.segments) * seg**2 * FP32
    return max(mlp, attn)
