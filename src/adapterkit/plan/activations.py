"""Activation memory of one training step, derived from the architecture (no weights, no data).

"Activations" are the tensors autograd keeps from the forward pass for the backward pass (its
*saved tensors*), each storage counted once. Which tensors an op saves follows from its derivative
formula and from which of its inputs require grad; the lists below were written from PyTorch's
derivative definitions and checked against the saved tensors of real tiny models
(tests/test_estimate.py walks the autograd graph and compares).

Everything is fp32 (the trainer's default `precision: fp32`): 4 bytes an element; token ids are
int64 (8 bytes). bf16 autocast is not modelled.

Two block families are written out: a Llama-style decoder (RMSNorm, rotary positions, grouped-query
attention, gated SiLU MLP: Llama, Mistral, Qwen2, SmolLM) and a BERT-style encoder (post-LayerNorm,
GELU MLP, dropout). Other architectures raise ValueError: the plan is not guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adapterkit.plan.arch import (
    BOOL,
    CUDA_BIAS_ALIGN,
    CUDA_LSE_ALIGN,
    FP32,
    INT64,
    PHILOX_STATE,
    SCALAR_F64,
    Arch,
    Block,
    Device,
    Linear,
    Saved,
    Trainable,
)


def _dropout(saved: Saved, name: str, elements: int, device: Device) -> None:
    """Dropout in training keeps its mask: on CPU torch multiplies by a float32 noise tensor (which
    autograd saves, 4 bytes an element); on CUDA the fused kernel saves a bool mask (1 byte)."""
    saved.add(name, elements * (FP32 if device == "cpu" else BOOL))


def _linear_group(
    saved: Saved,
    prefix: str,
    tokens: int,
    d_in: int,
    lins: list[Linear],
    device: Device,
    input_grad: bool,
    input_kept: bool = False,
) -> None:
    """Linears reading one input (q/k/v; gate/up): what each keeps for its own backward.

    A trained base weight needs its input for the weight gradient (one storage shared by the
    group; nothing more when `input_kept`, i.e. another op already keeps that storage). A LoRA
    branch keeps the input of lora_A (the dropout output when dropout > 0, a new tensor per
    target; else the shared input itself), the input of lora_B (r values a token), and a 0-dim
    float64 for the `* scaling` multiply. Dropout keeps its mask only when its input requires
    grad (in the first adapted block of a frozen-embedding model it does not).
    """
    shared = any(x.trains or (x.lora_r and x.lora_dropout == 0) for x in lins)
    if shared and not input_kept:
        saved.add(f"{prefix} input (weight grads)", tokens * d_in * FP32)
    for x in lins:
        if not x.lora_r:
            continue
        if x.lora_dropout > 0:
            if input_grad:
                _dropout(saved, f"{prefix} lora dropout mask", tokens * d_in, device)
            saved.add(f"{prefix} lora_A input (after dropout)", tokens * d_in * FP32)
        saved.add(f"{prefix} lora_B input", tokens * x.lora_r * FP32)
        saved.add(f"{prefix} lora scaling", SCALAR_F64)


def _cuda_attention(
    a: Arch, b: int, length: int, out_keeps_input: bool = False
) -> tuple[dict[str, int], bool]:
    """What float32 SDPA keeps on CUDA, and whether its output is the storage the output
    projection reads (so that projection keeps nothing more for it).

    There is no flash kernel for float32, so one of two paths runs. A batch without padding
    passes no mask: with grouped-query attention (fewer k/v heads) transformers asks SDPA for
    `enable_gqa`, which only the math path has; it keeps q and k scaled by sqrt(scale), k and v
    expanded to every head, and the softmax probabilities [B, heads, L, L], and returns a
    [B, heads, L, head_dim] tensor that the projection copies. Otherwise (no GQA, or a padded
    batch, for which transformers repeats k/v itself and passes a mask) the memory-efficient
    kernel runs: it keeps q, k, v, its output (a transposed view the projection reads as is), a
    log-sum-exp padded to 32 positions, its RNG state and, given a mask, a per-layer copy of it
    with the last dimension padded to 16. A batch of one row has no padding; for more rows the
    plan cannot know, and takes the larger of the two, counting the projection's copy of the
    math path's output when the projection keeps its input (`out_keeps_input`). Seen on an H100,
    torch 2.11.
    """
    t = b * length
    q_dim = a.heads * a.head_dim
    lse = b * a.heads * math.ceil(length / CUDA_LSE_ALIGN) * CUDA_LSE_ALIGN * FP32
    efficient = {
        "sdpa q, k, v, output": 4 * t * q_dim * FP32,
        "sdpa log-sum-exp": lse,
        "sdpa rng state": PHILOX_STATE,
    }
    if a.kv_heads < a.heads:
        unpadded = {
            "sdpa math: scaled q, k and v at every head": 3 * t * q_dim * FP32,
            "sdpa math: softmax probabilities": b * a.heads * length**2 * FP32,
        }
        unpadded_shares_output = False
    else:
        unpadded, unpadded_shares_output = efficient, True
    if b == 1:
        return unpadded, unpadded_shares_output
    bias = b * length * math.ceil(length / CUDA_BIAS_ALIGN) * CUDA_BIAS_ALIGN * FP32
    padded = {**efficient, "sdpa padding mask (aligned copy per layer)": bias}
    copy = 0 if unpadded_shares_output or not out_keeps_input else t * q_dim * FP32
    if sum(unpadded.values()) + copy > sum(padded.values()):
        return unpadded, unpadded_shares_output
    return padded, True


def _llama_block(
    saved: Saved, a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device
) -> bool:
    """One Llama decoder block; returns whether its output requires grad.

    RMSNorm (x * rsqrt(mean(x^2) + eps) * w): when x requires grad, `pow` keeps x and `rsqrt` its
    output (1 value a token); a trained w keeps the normalised x. q/k/v read the norm's output;
    rotary embedding multiplies by cos and sin (kept once for the model, see `_llama_model`).
    On CPU, SDPA keeps q, k, v, its output and a float32 log-sum-exp per query and head; a padded
    batch (several rows) passes a mask, and transformers then repeats k/v to every head (no
    native GQA with a mask), so k and v are kept at `heads` heads; o_proj reads the output's
    storage. On CUDA, `_cuda_attention` says what is kept. The MLP keeps gate (SiLU backward),
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
    _linear_group(saved, "q/k/v", t, h, qkv, device, n1_out)
    attn_in = n1_out or any(x.trains or x.lora_r for x in qkv)
    output_shared = attn_in
    o = blk.get("o_proj")
    if attn_in and device == "cuda":
        o_keeps = o.trains or (bool(o.lora_r) and o.lora_dropout == 0)
        items, output_shared = _cuda_attention(a, b, length, o_keeps)
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
    _linear_group(saved, "o_proj", t, q_dim, [o], device, attn_in, input_kept=output_shared)
    mid = attn_in or o.trains or bool(o.lora_r)
    if mid:  # post-attention RMSNorm: its input is the residual stream
        saved.add("norm input", t * h * FP32)
        saved.add("norm rsqrt", t * FP32)
    if blk.norms_train:
        saved.add("norm normalised (weight grad)", t * h * FP32)
    gate_up = [blk.get("gate_proj"), blk.get("up_proj")]
    _linear_group(saved, "gate/up", t, h, gate_up, device, mid or blk.norms_train)
    act_in = mid or blk.norms_train or any(x.trains or x.lora_r for x in gate_up)
    if act_in:
        saved.add("mlp gate, silu(gate), up", 3 * t * inter * FP32)
    down = blk.get("down_proj")
    _linear_group(saved, "down_proj", t, inter, [down], device, act_in)
    return act_in or down.trains or bool(down.lora_r) or grad_in


def _bert_block(
    saved: Saved, a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device
) -> bool:
    """One BERT encoder block (post-LayerNorm); returns whether its output requires grad.

    Attention: in training with attention dropout > 0, CPU SDPA takes the math path (the fused CPU
    kernel has no dropout): it keeps the scaled query, the scaled key, a contiguous value, the
    softmax output, the dropout mask and the dropped probabilities (three B x heads x L x L
    tensors). On CUDA the memory-efficient kernel (fp32) keeps q, k, v, output and the log-sum-exp
    (it regenerates dropout from its RNG state). Each hidden dropout keeps its mask; each
    LayerNorm keeps its input and two per-token statistics (mean, rstd); GELU keeps its input.
    """
    t = b * length
    h, inter = a.hidden, a.intermediate
    qkv = [blk.get("query"), blk.get("key"), blk.get("value")]
    _linear_group(saved, "q/k/v", t, h, qkv, device, grad_in)
    live = grad_in or any(x.trains or x.lora_r for x in qkv)
    if live:
        if device == "cpu" and a.attention_dropout > 0:
            saved.add("attention q, k, v (scaled copies)", 3 * t * h * FP32)
            saved.add("attention softmax + dropped probs", 2 * b * a.heads * length**2 * FP32)
            _dropout(saved, "attention dropout mask", b * a.heads * length**2, device)
        elif device == "cuda":
            for name, nbytes in _cuda_attention(a, b, length)[0].items():
                saved.add(name, nbytes)
        else:
            saved.add("sdpa q, k, v, output", 4 * t * h * FP32)
            saved.add("sdpa log-sum-exp", b * a.heads * length * FP32)
    out = blk.get("attention.output.dense")
    # CUDA's kernel returns a view the output dense reads as it is (kept once, above).
    shared = live and device == "cuda"
    _linear_group(saved, "attention output dense", t, h, [out], device, live, input_kept=shared)
    live = live or out.trains or bool(out.lora_r)
    if live:
        _dropout(saved, "hidden dropout mask", t * h, device)
    live = live or blk.norms_train
    if live:
        saved.add("layernorm input + mean, rstd", t * (h + 2) * FP32)
    inter_lin = blk.get("intermediate.dense")
    _linear_group(saved, "intermediate dense", t, h, [inter_lin], device, live)
    live = live or inter_lin.trains or bool(inter_lin.lora_r)
    if live:
        saved.add("gelu input", t * inter * FP32)
    down = blk.get("output.dense")
    _linear_group(saved, "output dense", t, inter, [down], device, live)
    live = live or down.trains or bool(down.lora_r)
    if live:
        _dropout(saved, "hidden dropout mask", t * h, device)
        saved.add("layernorm input + mean, rstd", t * (h + 2) * FP32)
    return live


def block_saved(a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device) -> Saved:
    """The saved tensors of one block and whether its output requires grad (as `.items`)."""
    saved = Saved()
    fn = _llama_block if a.family == "llama" else _bert_block
    fn(saved, a, blk, grad_in, b, length, device)
    return saved


def _block_output_grad(
    a: Arch, blk: Block, grad_in: bool, b: int, length: int, device: Device
) -> bool:
    fn = _llama_block if a.family == "llama" else _bert_block
    return fn(Saved(), a, blk, grad_in, b, length, device)


def block_transient(a: Arch, b: int, length: int, device: Device) -> int:
    """The largest working set inside one block's forward that nothing keeps for backward: in a
    frozen block, all of it; in a trained one, less (what is saved is counted once, above), so
    this is an upper bound there. The larger of the attention's and the MLP's:

    - MLP: its input and the residual it is added to (two hidden-size tensors) plus, at once,
      BERT's dense output and GELU output (two intermediate-size tensors), or Llama's SiLU(gate),
      up and their product (three; gate itself is freed by then);
    - attention: the block input and q, k, v (four hidden-size tensors), plus the [B, heads, L, L]
      tensors of the path that runs: on CPU in training BERT's math path holds scores, softmax,
      dropped probabilities and the float32 dropout noise at once (four); CUDA's float32 math
      path (grouped-query Llama) the scores and the softmax (two); the fused kernels none.
    """
    t = b * length
    q_dim = a.heads * a.head_dim
    square = b * a.heads * length**2 * FP32
    if a.family == "bert":
        mlp = 2 * t * a.hidden * FP32 + 2 * t * a.intermediate * FP32
        attn = 4 * t * a.hidden * FP32
        if device == "cpu" and a.attention_dropout > 0:
            attn += 4 * square
    else:
        mlp = 2 * t * a.hidden * FP32 + 3 * t * a.intermediate * FP32
        attn = t * a.hidden * FP32 + 3 * t * q_dim * FP32
        if device == "cuda" and a.kv_heads < a.heads:  # the math path (see _cuda_attention)
            attn += 2 * square
    return max(mlp, attn)


@dataclass(frozen=True)
class Activations:
    """Saved-tensor bytes without and with gradient checkpointing (per-block checkpoints)."""

    saved: int
    saved_checkpointed: int
    detail: dict[str, int]
    inside_blocks: int = 0  # saved so far + the unsaved working set, at the largest block


def activations(a: Arch, tr: Trainable, b: int, length: int, device: Device) -> Activations:
    """Saved tensors of the whole model for a batch of `b` rows of `length` tokens.

    Below the blocks: a trained embedding keeps the token ids (int64); BERT's embedding LayerNorm
    keeps its input and statistics and its dropout a mask. Llama's rotary cos and sin (L x
    head_dim each) are computed once and kept once. Above them: the final norm (Llama) and the
    head's input (for a causal LM, the final norm's output; for BERT's pooler, the last hidden
    state, kept whole because the [CLS] row is a view of it).

    With gradient checkpointing every block that is in the graph keeps only its input hidden
    state; in backward one block at a time is recomputed, so the largest block's saved tensors
    come on top.
    """
    t = b * length
    h = a.hidden
    outside = Saved()
    grad = tr.embeddings
    if tr.embeddings:
        outside.add("embedding token ids", t * INT64)
        if a.family == "bert":  # token types come from the batch; positions from a buffer
            outside.add("embedding token type ids", t * INT64)
            outside.add("embedding position ids (the whole buffer)", a.max_positions * INT64)
    if a.family == "bert" and tr.embeddings:
        outside.add("embedding layernorm input + mean, rstd", t * (h + 2) * FP32)
        if a.hidden_dropout > 0:
            _dropout(outside, "embedding dropout mask", t * h, device)
    blocks_full = Saved()
    in_graph: list[int] = []
    largest = 0
    working = block_transient(a, b, length, device)
    inside = 0
    for blk in tr.blocks:
        s = block_saved(a, blk, grad, b, length, device)
        # Inside this block: what earlier blocks keep, what it keeps, and the part of its working
        # set that it does not keep (all of it in a frozen block, little in a trained one).
        inside = max(inside, blocks_full.total + s.total + max(0, working - s.total))
        if grad or blk.any_trains():
            in_graph.append(1)
        largest = max(largest, s.total)
        for k, v in s.items.items():
            blocks_full.add(k, v)
        grad = _block_output_grad(a, blk, grad, b, length, device)
    if a.family == "llama" and any(
        any(k.startswith("sdpa") for k in block_saved(a, blk, g, b, length, device).items)
        for blk, g in _grad_inputs(a, tr, b, length, device)
    ):
        outside.add("rotary cos, sin", 2 * length * a.head_dim * FP32)
    if a.family == "llama":
        if grad:
            outside.add("final norm input + rsqrt", t * (h + 1) * FP32)
        if tr.final_norm:
            outside.add("final norm normalised (weight grad)", t * h * FP32)
        if tr.head:
            outside.add("head input", t * h * FP32)
    elif tr.head and not tr.pooled_head:  # token classification: dropout, then the classifier
        if a.hidden_dropout > 0 and grad:  # the mask only matters when grads flow further down
            _dropout(outside, "classifier dropout mask", t * h, device)
        outside.add("classifier input", t * h * FP32)
    else:
        if tr.head:
            outside.add("pooler input (last hidden state, whole)", t * h * FP32)
            outside.add("pooler tanh output", b * h * FP32)
            if a.hidden_dropout > 0:
                _dropout(outside, "classifier dropout mask", b * h, device)
            outside.add("classifier input", b * h * FP32)
    checkpoints = len(in_graph) * t * h * FP32
    detail = {**outside.items, **{f"blocks: {k}": v for k, v in blocks_full.items.items()}}
    return Activations(
        saved=outside.total + blocks_full.total,
        saved_checkpointed=outside.total + checkpoints + largest,
        detail=detail,
        inside_blocks=outside.total + inside,
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
