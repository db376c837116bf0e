"""Llama-style decoder blocks (RMSNorm, rotary positions, grouped-query attention, gated SiLU MLP:
Llama, Mistral, Qwen2, SmolLM): the tensors each op keeps for backward."""

from __future__ import annotations

from adapterkit.plan.arch import FP32, INT64, Arch, Block, Device, Saved, Trainable
from adapterkit.plan.families.common import cuda_attention, linear_group

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def role(local: str) -> str | None:
    """The role of a block-relative module name (`self_attn.q_proj` -> `q_proj`), if a linear."""
    last = local.rsplit(".", 1)[-1]
    return last if last in ROLES else None


def block(
    saved: Saved, a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device
) -> bool:
    """One Llama decoder block; returns whether its output requires grad.

    RMSNorm (x * rsqrt(mean(x^2) + eps) * w): when x requires grad, `pow` keeps x and `rsqrt` its
    output (1 value a token); a trained w keeps the normalised x. q/k/v read the norm's output;
    rotary embedding multiplies by cos and sin (kept once for the model, see `above_blocks`).
    On CPU, SDPA keeps q, k, v, its output and a float32 log-sum-exp per query and head; a padded
    batch (several rows) passes a mask, and transformers then repeats k/v to every head (no
    native GQA with a mask), so k and v are kept at `heads` heads; o_proj reads the output's
    storage. On CUDA, `cuda_attention` says what is kept. The MLP keeps gate (SiLU backward),
    SiLU(gate) and up (the product's backward); down_proj reads their product.
    """
    t = b * length
    h, inter = a.hidden, a.intermediate
    q_dim = a.heads * a.head_dim
    n1_out = grad_in or blk.norms_train
    if grad_in:
        saved.add("norm input", t * h * FP32)
        saved.add("norm rsqrt", t * FP32)
    if blk.norms_train:
        saved.add("norm normalised (weight grad)", t * h * FP32)
    qkv = [blk.get("q_proj"), blk.get("k_proj"), blk.get("v_proj")]
    linear_group(saved, "q/k/v", t, h, qkv, device, n1_out)
    attn_in = n1_out or any(x.trains or x.lora_r for x in qkv)
    output_shared = attn_in
    o = blk.get("o_proj")
    if attn_in and device == "cuda":
        o_keeps = o.trains or (bool(o.lora_r) and o.lora_dropout == 0)
        items, output_shared = cuda_attention(a, b, length, o_keeps)
        for name, nbytes in items.items():
            saved.add(name, nbytes)
    elif attn_in:
        kv_kept = a.heads if b > 1 else a.kv_heads
        saved.add("sdpa query", t * q_dim * FP32)
        saved.add("sdpa key+value", 2 * b * kv_kept * length * a.head_dim * FP32)
        saved.add("sdpa output", t * q_dim * FP32)
        saved.add("sdpa log-sum-exp", b * a.heads * length * FP32)
        if b > 1:
            saved.add("sdpa padding mask (float32 copy per layer)", b * length**2 * FP32)
    # SDPA returns its output as a transposed view of a [B, L, heads, head_dim] buffer, so the
    # o_proj input (`transpose(1, 2).contiguous()`) is that same storage, already kept by SDPA;
    # CUDA's math path returns [B, heads, L, head_dim], and o_proj reads a new copy.
    linear_group(saved, "o_proj", t, q_dim, [o], device, attn_in, input_kept=output_shared)
    mid = attn_in or o.trains or bool(o.lora_r)
    if mid:  # post-attention RMSNorm: its input is the residual stream
        saved.add("norm input", t * h * FP32)
        saved.add("norm rsqrt", t * FP32)
    if blk.norms_train:
        saved.add("norm normalised (weight grad)", t * h * FP32)
    gate_up = [blk.get("gate_proj"), blk.get("up_proj")]
    linear_group(saved, "gate/up", t, h, gate_up, device, mid or blk.norms_train)
    act_in = mid or blk.norms_train or any(x.trains or x.lora_r for x in gate_up)
    if act_in:
        saved.add("mlp gate, silu(gate), up", 3 * t * inter * FP32)
    down = blk.get("down_proj")
    linear_group(saved, "down_proj", t, inter, [down], device, act_in)
    return act_in or down.trains or bool(down.lora_r) or grad_in


def below_blocks(outside: Saved, a: Arch, tr: Trainable, t: int, device: Device) -> None:
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
    device: Device,
) -> None:
    """Rotary cos and sin (L x head_dim each, computed once and kept once, when any block's SDPA
    keeps anything: `attends`), the final norm and the head's input (the final norm's output)."""
    t, h = b * length, a.hidden
    if attends:
        outside.add("rotary cos, sin", 2 * length * a.head_dim * FP32)
    if grad:
        outside.add("final norm input + rsqrt", t * (h + 1) * FP32)
    if tr.final_norm:
        outside.add("final norm normalised (weight grad)", t * h * FP32)
    if tr.head:
        outside.add("head input", t * h * FP32)


def transient(a: Arch, b: int, length: int, device: Device) -> int:
    """MLP: input, residual, SiLU(gate), up and their product; attention: the block input and
    q, k, v, plus CUDA's float32 math path's scores and softmax (grouped-query attention)."""
    t = b * length
    q_dim = a.heads * a.head_dim
    mlp = 2 * t * a.hidden * FP32 + 3 * t * a.intermediate * FP32
    attn = t * a.hidden * FP32 + 3 * t * q_dim * FP32
    if device == "cuda" and a.kv_heads < a.heads:  # the math path (see cuda_attention)
        attn += 2 * b * a.heads * length**2 * FP32
    return max(mlp, attn)
