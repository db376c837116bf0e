"""BERT-style encoder blocks (post-LayerNorm, GELU MLP, dropout): the tensors each op keeps."""

from __future__ import annotations

from adapterkit.plan.arch import FP32, INT64, Arch, Block, Device, Saved, Trainable
from adapterkit.plan.families.common import cuda_attention, dropout, linear_group

ROLES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def role(local: str) -> str | None:
    """The role of a block-relative module name (`attention.self.query` -> `query`)."""
    return local.removeprefix("attention.self.") if local in ROLES else None


def block(
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
    linear_group(saved, "q/k/v", t, h, qkv, device, grad_in)
    live = grad_in or any(x.trains or x.lora_r for x in qkv)
    if live:
        if device == "cpu" and a.attention_dropout > 0:
            saved.add("attention q, k, v (scaled copies)", 3 * t * h * FP32)
            saved.add("attention softmax + dropped probs", 2 * b * a.heads * length**2 * FP32)
            dropout(saved, "attention dropout mask", b * a.heads * length**2, device)
        elif device == "cuda":
            for name, nbytes in cuda_attention(a, b, length)[0].items():
                saved.add(name, nbytes)
        else:
            saved.add("sdpa q, k, v, output", 4 * t * h * FP32)
            saved.add("sdpa log-sum-exp", b * a.heads * length * FP32)
    out = blk.get("attention.output.dense")
    # CUDA's kernel returns a view the output dense reads as it is (kept once, above).
    shared = live and device == "cuda"
    linear_group(saved, "attention output dense", t, h, [out], device, live, input_kept=shared)
    live = live or out.trains or bool(out.lora_r)
    if live:
        dropout(saved, "hidden dropout mask", t * h, device)
    live = live or blk.norms_train
    if live:
        saved.add("layernorm input + mean, rstd", t * (h + 2) * FP32)
    inter_lin = blk.get("intermediate.dense")
    linear_group(saved, "intermediate dense", t, h, [inter_lin], device, live)
    live = live or inter_lin.trains or bool(inter_lin.lora_r)
    if live:
        saved.add("gelu input", t * inter * FP32)
    down = blk.get("output.dense")
    linear_group(saved, "output dense", t, inter, [down], device, live)
    live = live or down.trains or bool(down.lora_r)
    if live:
        dropout(saved, "hidden dropout mask", t * h, device)
        saved.add("layernorm input + mean, rstd", t * (h + 2) * FP32)
    return live


def below_blocks(outside: Saved, a: Arch, tr: Trainable, t: int, device: Device) -> None:
    """A trained embedding keeps the token ids and token types (from the batch) and the whole
    position-id buffer; the embedding LayerNorm its input and statistics; its dropout a mask."""
    if not tr.embeddings:
        return
    h = a.hidden
    outside.add("embedding token ids", t * INT64)
    outside.add("embedding token type ids", t * INT64)
    outside.add("embedding position ids (the whole buffer)", a.max_positions * INT64)
    outside.add("embedding layernorm input + mean, rstd", t * (h + 2) * FP32)
    if a.hidden_dropout > 0:
        dropout(outside, "embedding dropout mask", t * h, device)


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
    """Token classification: dropout, then the classifier on every token. Sequence
    classification: the pooler keeps the last hidden state whole ([CLS] is a view of it)."""
    t, h = b * length, a.hidden
    if tr.head and not tr.pooled_head:
        if a.hidden_dropout > 0 and grad:  # the mask only matters when grads flow further down
            dropout(outside, "classifier dropout mask", t * h, device)
        outside.add("classifier input", t * h * FP32)
    elif tr.head:
        outside.add("pooler input (last hidden state, whole)", t * h * FP32)
        outside.add("pooler tanh output", b * h * FP32)
        if a.hidden_dropout > 0:
            dropout(outside, "classifier dropout mask", b * h, device)
        outside.add("classifier input", b * h * FP32)


def transient(a: Arch, b: int, length: int, device: Device) -> int:
    """MLP: input, residual, dense and GELU outputs; attention: the block input and q, k, v, plus
    on CPU in training the math path's scores, softmax, dropped probabilities and noise."""
    t = b * length
    mlp = 2 * t * a.hidden * FP32 + 2 * t * a.intermediate * FP32
    attn = 4 * t * a.hidden * FP32
    if device == "cpu" and a.attention_dropout > 0:
        attn += 4 * b * a.heads * length**2 * FP32
    return max(mlp, attn)
