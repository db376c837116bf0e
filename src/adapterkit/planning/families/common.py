"""What both block families share: dropout masks, linear layers (base and LoRA branch) and the
attention kernels SDPA takes on CUDA.

Every helper takes the step's `Numerics` (default: float32, no autocast), so one set of rules
covers fp32 and bf16/fp16 autocast; with the default they are the float32 rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adapterkit.planning.arch import (
    BOOL,
    CUDA_BIAS_ALIGN,
    CUDA_LSE_ALIGN,
    FP32,
    FP32_RUN,
    PHILOX_STATE,
    SCALAR_F64,
    Arch,
    Device,
    Input,
    Linear,
    Numerics,
    Saved,
)


def dropout(saved: Saved, name: str, elements: int, device: Device, nbytes: int = FP32) -> None:
    """Dropout in training keeps its mask: on CPU torch multiplies by a noise tensor of its input's
    dtype (`nbytes` an element), which autograd saves; on CUDA the fused kernel saves a bool mask."""
    saved.add(name, elements * (nbytes if device == "cpu" else BOOL))


def matmul_out(run: Numerics, in_bytes: int, lins: Sequence[Linear]) -> int:
    """Bytes of an element of the output of linears reading an `in_bytes` input: the compute
    dtype under autocast (a 4-bit base casts its output back to its input's dtype), else the
    input's."""
    if run.autocast and not any(x.quantized for x in lins):
        return run.compute
    return in_bytes


def linear_group(
    saved: Saved,
    prefix: str,
    tokens: int,
    d_in: int,
    lins: list[Linear],
    device: Device,
    input_grad: bool,
    input_kept: bool = False,
) -> None:
    """`linears` for a float32 step on `device` (the signature families without `Numerics` use)."""
    x = Input(tokens, d_in, FP32, input_grad, input_kept)
    linears(saved, prefix, x, lins, Numerics(device=device))


def linears(saved: Saved, prefix: str, x: Input, lins: Sequence[Linear], run: Numerics) -> None:
    """Linears reading one input `x` (q/k/v; gate/up): what each keeps for its own backward.

    A trained base weight needs its input for the weight gradient: one storage shared by the group
    (nothing more when `x.kept`, i.e. another op already keeps that storage), or, where autocast
    casts the input (`x` is not in the compute dtype), a cast per linear. Under autocast a float32
    trained weight is cast too, and that copy is kept when the input requires grad. The LoRA
    branches: `_lora`.
    """
    casts = run.autocast and x.nbytes != run.compute
    shared = False
    for lin in lins:
        if lin.trains and casts:
            saved.add(f"{prefix} input cast (weight grad)", x.tokens * x.width * run.compute)
        shared = shared or (lin.trains and not casts)
        if lin.trains and x.grad and run.autocast and run.trained != run.compute:
            saved.add(f"{prefix} weight cast", x.width * lin.d_out * run.compute)
        if lin.lora_r:
            shared = _lora(saved, prefix, x, lin, run) or shared
    if shared and not x.kept:
        saved.add(f"{prefix} input (weight grads)", x.tokens * x.width * x.nbytes)


def _lora(saved: Saved, prefix: str, x: Input, lin: Linear, run: Numerics) -> bool:
    """One LoRA branch, `lora_B(lora_A(dropout(x))) * scaling`; returns whether lora_A keeps the
    group's input storage itself (the others are new tensors, counted here).

    peft casts x to the adapter's dtype first (for a 4-bit base, not where CUDA autocast is on:
    its bnb layer asks `torch.is_autocast_enabled()`, which is CUDA's, so on CPU it casts too);
    dropout > 0
    keeps its mask (in that dtype, when x requires grad; in the first adapted block of a
    frozen-embedding model it does not) and makes a new tensor; autocast then casts that to the
    compute dtype, a new tensor again. lora_A keeps its input, lora_B its input (r values a
    token), `* scaling` a 0-dim float64. Under autocast the float32 A and B are cast, and each
    copy is kept where its matmul's input requires grad (B's always does).
    """
    if lin.lora_dropout == 0 and not lin.quantized:
        return _fused_lora(saved, prefix, x, lin, run)
    lora, elements = run.trained, x.tokens * x.width
    cuda_autocast = run.autocast and run.device == "cuda"
    peft_casts = x.nbytes != lora and not (lin.quantized and cuda_autocast)
    after = lora if peft_casts else x.nbytes  # the dtype dropout and lora_A see
    if lin.lora_dropout > 0 and x.grad:
        dropout(saved, f"{prefix} LoRA dropout mask", elements, run.device, after)
    autocast_copy = run.autocast and after != run.compute
    if autocast_copy:
        saved.add(f"{prefix} lora_A input (cast)", elements * run.compute)
    elif lin.lora_dropout > 0:
        saved.add(f"{prefix} lora_A input (after dropout)", elements * after)
    elif peft_casts:
        saved.add(f"{prefix} lora_A input (cast)", elements * after)
    mid = run.compute if run.autocast else after
    saved.add(f"{prefix} lora_B input", x.tokens * lin.lora_r * mid)
    saved.add(f"{prefix} LoRA scaling", SCALAR_F64)
    if run.autocast and lora != run.compute:
        a_cast = lin.lora_r * x.width if x.grad else 0
        saved.add(f"{prefix} LoRA weight casts", (a_cast + lin.lora_r * lin.d_out) * run.compute)
    return not (autocast_copy or lin.lora_dropout > 0 or peft_casts)


def _fused_lora(saved: Saved, prefix: str, x: Input, lin: Linear, run: Numerics) -> bool:
    """A LoRA branch without dropout on a full-precision base: the lora strategy's fused layer
    (adapterkit_strategies._fused_lora) computes x W^T + s (x A^T) B^T in one autograd Function.

    It keeps its input in the compute dtype (the group's storage when the input is already in it;
    else a cast of its own), `x A^T` (r values a token), and, where the compute dtype is not the
    adapter's, its casts of A and B. No float64 scaling scalar, no float32 copy of the input.
    """
    compute = run.compute if run.autocast else x.nbytes
    if x.nbytes != compute:
        saved.add(f"{prefix} LoRA input (cast)", x.tokens * x.width * compute)
    saved.add(f"{prefix} lora_B input", x.tokens * lin.lora_r * compute)
    if run.trained != compute:
        saved.add(f"{prefix} LoRA weight casts", lin.lora_r * (x.width + lin.d_out) * compute)
    return x.nbytes == compute


def cuda_attention(
    a: Arch, b: int, length: int, out_keeps_input: bool = False, *, run: Numerics = FP32_RUN
) -> tuple[dict[str, int], bool]:
    """What SDPA keeps on CUDA, and whether its output is the storage the output projection
    reads (so that projection keeps nothing more for it). Half precision: `cuda_half_attention`.

    There is no flash kernel for float32, so one of two paths runs. A batch without padding
    passes no mask: with grouped-query attention (fewer k/v heads) transformers asks SDPA for
    `enable_gqa`, which only the math path has; it keeps q and k scaled by sqrt(scale), k and v
    expanded to every head, and the softmax probabilities [B, heads, L, L] (of each packed row:
    `run.segments` rows of L / segments), and returns a [B, heads, L, head_dim] tensor that the
    projection copies. Otherwise (no GQA, or a padded batch, for which transformers repeats k/v
    itself and passes a mask) the memory-efficient kernel runs: it keeps q, k, v, its output (a
    transposed view the projection reads as is), a log-sum-exp padded to 32 positions, its RNG
    state and, given a mask, a per-layer copy of it with the last dimension padded to 16. A
    batch of one row has no padding; for more rows the plan cannot know, and takes the larger of
    the two, counting the projection's copy of the math path's output when the projection keeps
    its input (`out_keeps_input`). Seen on an H100, torch 2.11.
    """
    if run.autocast:
        return cuda_half_attention(a, b, length, out_keeps_input, run=run)
    t = b * length
    q_dim = a.heads * a.head_dim
    seg = length // max(1, run.segments)
    lse = b * a.heads * math.ceil(length / CUDA_LSE_ALIGN) * CUDA_LSE_ALIGN * FP32
    efficient = {
        "sdpa q, k, v, output": 4 * t * q_dim * FP32,
        "sdpa log-sum-exp": lse,
        "sdpa rng state": PHILOX_STATE * max(1, run.segments),
    }
    if a.kv_heads < a.heads:
        unpadded = {
            "sdpa math: scaled q, k and v at every head": 3 * t * q_dim * FP32,
            "sdpa math: softmax probabilities": b * a.heads * run.segments * seg**2 * FP32,
        }
        unpadded_shares_output = False
    else:
        unpadded, unpadded_shares_output = efficient, run.segments == 1
    if b == 1:
        return unpadded, unpadded_shares_output
    bias = b * length * math.ceil(length / CUDA_BIAS_ALIGN) * CUDA_BIAS_ALIGN * FP32
    padded = {**efficient, "sdpa padding mask (aligned copy per layer)": bias}
    copy = 0 if unpadded_shares_output or not out_keeps_input else t * q_dim * FP32
    if sum(unpadded.values()) + copy > sum(padded.values()):
        return unpadded, unpadded_shares_output
    return padded, True


def cuda_half_attention(
    a: Arch, b: int, length: int, out_keeps_input: bool = False, *, run: Numerics = FP32_RUN
) -> tuple[dict[str, int], bool]:
    """SDPA on CUDA in bf16/fp16, from PyTorch's kernels (not validated on a GPU).

    Without a mask (one row, or packed rows, each its own causal SDPA call) the flash kernel
    runs, grouped-query attention included (`enable_gqa`): it keeps q, k and v as given (k and v
    at their own heads), its output (a transposed view the projection reads as is, unless packed
    rows are joined, which the projection then keeps as a copy), a float32 log-sum-exp per query
    and head, and its RNG seed and offset per call. With a padding mask (several rows, not
    packed) transformers repeats k/v to every head and the memory-efficient kernel runs: q, k,
    v, output, a log-sum-exp padded to 32 positions, its RNG state and a copy of the mask in the
    compute dtype, its last dimension padded to 16. For several rows the plan cannot know
    whether they are padded, and takes the larger.
    """
    t, e = b * length, run.compute
    q_dim, kv_dim = a.heads * a.head_dim, a.kv_heads * a.head_dim
    calls = max(1, run.segments)
    flash = {
        "sdpa q, k, v, output": 2 * t * q_dim * e + 2 * t * kv_dim * e,
        "sdpa log-sum-exp": b * a.heads * length * FP32,
        "sdpa rng state": PHILOX_STATE * calls,
    }
    joined = calls > 1
    if b == 1:
        return flash, not joined
    lse = b * a.heads * math.ceil(length / CUDA_LSE_ALIGN) * CUDA_LSE_ALIGN * FP32
    bias = b * length * math.ceil(length / CUDA_BIAS_ALIGN) * CUDA_BIAS_ALIGN * e
    padded = {
        "sdpa q, k, v, output": 4 * t * q_dim * e,
        "sdpa log-sum-exp": lse,
        "sdpa rng state": PHILOX_STATE,
        "sdpa padding mask (aligned copy per layer)": bias,
    }
    copy = t * q_dim * e if joined and out_keeps_input else 0
    if sum(flash.values()) + copy > sum(padded.values()):
        return flash, not joined
    return padded, True
