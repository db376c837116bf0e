"""What both block families share: dropout masks, linear layers (base and LoRA branch) and the
attention kernels float32 SDPA takes on CUDA."""

from __future__ import annotations

import math

from adapterkit.plan.arch import (
    BOOL,
    CUDA_BIAS_ALIGN,
    CUDA_LSE_ALIGN,
    FP32,
    PHILOX_STATE,
    SCALAR_F64,
    Arch,
    Device,
    Linear,
    Saved,
)


def dropout(saved: Saved, name: str, elements: int, device: Device) -> None:
    """Dropout in training keeps its mask: on CPU torch multiplies by a float32 noise tensor (which
    autograd saves, 4 bytes an element); on CUDA the fused kernel saves a bool mask (1 byte)."""
    saved.add(name, elements * (FP32 if device == "cpu" else BOOL))


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
                dropout(saved, f"{prefix} LoRA dropout mask", tokens * d_in, device)
            saved.add(f"{prefix} lora_A input (after dropout)", tokens * d_in * FP32)
        saved.add(f"{prefix} lora_B input", tokens * x.lora_r * FP32)
        saved.add(f"{prefix} LoRA scaling", SCALAR_F64)


def cuda_attention(
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
