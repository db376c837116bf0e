"""BERT-style encoder blocks (post-LayerNorm, GELU MLP, dropout): the tensors each op keeps, in fp32
and under bf16/fp16 autocast (`Numerics`)."""

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
from adapterkit.planning.families.common import cuda_attention, dropout, linears, matmul_out

ROLES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
NUMERICS = True
"""The functions below take the step's Numerics (`run`) in place of the device."""


def role(local: str) -> str | None:
    """The role of a block-relative module name (`attention.self.query` -> `query`)."""
    return local.removeprefix("attention.self.") if local in ROLES else None


def _lives(x: Linear) -> bool:
    return x.trains or bool(x.lora_r)


def _layernorm(saved: Saved, t: int, h: int, x: int, w: int) -> None:
    """LayerNorm keeps its input (`x` bytes an element; its output has that dtype too) and two
    per-token statistics (mean, rstd): float32 when the input or the weight (`w` bytes) is, else
    in the input's half dtype."""
    stats = FP32 if FP32 in (x, w) else x
    saved.add("layernorm input + mean, rstd", t * h * x + 2 * t * stats)


def _attention(saved: Saved, a: Arch, live: bool, b: int, length: int, run: Numerics) -> None:
    """In training with attention dropout > 0, CPU SDPA takes the math path (the fused CPU kernel
    has no dropout), in float32 whatever its inputs (it upcasts half ones): it keeps the scaled
    query, the scaled key, the value, the softmax output, the dropout mask and the dropped
    probabilities (three B x heads x L x L tensors). On CUDA: `cuda_attention`. Otherwise the
    fused kernel keeps q, k, v and its output in the compute dtype and a float32 log-sum-exp."""
    t, h = b * length, a.hidden
    if not live:
        return
    if run.device == "cpu" and a.attention_dropout > 0:
        saved.add("attention q, k, v (scaled copies)", 3 * t * h * FP32)
        saved.add("attention softmax + dropped probs", 2 * b * a.heads * length**2 * FP32)
        dropout(saved, "attention dropout mask", b * a.heads * length**2, run.device)
    elif run.device == "cuda":
        for name, nbytes in cuda_attention(a, b, length, run=run)[0].items():
            saved.add(name, nbytes)
    else:
        saved.add("sdpa q, k, v, output", 4 * t * h * run.compute)
        saved.add("sdpa log-sum-exp", b * a.heads * length * FP32)


def block(
    saved: Saved, a: Arch, blk: Block, grad_in: bool, b: int, length: int, run: Numerics
) -> bool:
    """One BERT encoder block (post-LayerNorm); returns whether its output requires grad.

    q/k/v read the block input (the previous LayerNorm's output, in the embeddings' dtype);
    attention: `_attention`; the output dense reads its result in the compute dtype. Each hidden
    dropout keeps its mask (the dense output's dtype); each LayerNorm `_layernorm`; GELU its input.
    """
    t, h, inter = b * length, a.hidden, a.intermediate
    qkv = [blk.get("query"), blk.get("key"), blk.get("value")]
    r = run.residual
    linears(saved, "q/k/v", Input(t, h, r, grad_in), qkv, run)
    live = grad_in or any(_lives(x) for x in qkv)
    _attention(saved, a, live, b, length, run)
    out = blk.get("attention.output.dense")
    # CUDA's kernel returns a view the output dense reads as it is (kept once, above).
    kept = live and run.device == "cuda"
    context = Input(t, h, run.compute, live, kept)
    linears(saved, "attention output dense", context, [out], run)
    dense = matmul_out(run, run.compute, [out])
    live = live or _lives(out)
    if live:
        dropout(saved, "hidden dropout mask", t * h, run.device, dense)
    live = live or blk.norms_train
    x = max(dense, r)  # the residual sum: LayerNorm's input and output dtype
    if live:
        _layernorm(saved, t, h, x, blk.norm_bytes)
    inter_lin = blk.get("intermediate.dense")
    linears(saved, "intermediate dense", Input(t, h, x, live), [inter_lin], run)
    gelu = matmul_out(run, x, [inter_lin])
    live = live or _lives(inter_lin)
    if live:
        saved.add("gelu input", t * inter * gelu)
    down = blk.get("output.dense")
    linears(saved, "output dense", Input(t, inter, gelu, live), [down], run)
    dense = matmul_out(run, gelu, [down])
    live = live or _lives(down)
    if live:
        dropout(saved, "hidden dropout mask", t * h, run.device, dense)
        _layernorm(saved, t, h, max(dense, x), blk.norm_bytes)
    return live


def below_blocks(outside: Saved, a: Arch, tr: Trainable, t: int, run: Numerics) -> None:
    """A trained embedding keeps the token ids and token types (from the batch) and the whole
    position-id buffer; the embedding LayerNorm its input and statistics, its dropout a mask, all
    in the embeddings' dtype (a trained LayerNorm trains with them)."""
    if not tr.embeddings:
        return
    h, e = a.hidden, run.residual
    outside.add("embedding token ids", t * INT64)
    outside.add("embedding token type ids", t * INT64)
    outside.add("embedding position ids (the whole buffer)", a.max_positions * INT64)
    outside.add("embedding layernorm input + mean, rstd", t * (h + 2) * e)
    if a.hidden_dropout > 0:
        dropout(outside, "embedding dropout mask", t * h, run.device, e)


def above_blocks(
    outside: Saved,
    a: Arch,
    tr: Trainable,
    grad: bool,
    attends: bool,
    b: int,
    length: int,
    run: Numerics,
) -> None:  # fmt: skip
    """Token classification: dropout, then the classifier on every token. Sequence
    classification: the pooler keeps the last hidden state whole ([CLS] is a view of it; under
    autocast a float32 one is cast, [CLS] rows only). Under autocast, the casts of float32 head
    weights are kept where their input requires grad."""
    t, h, e = b * length, a.hidden, run.compute
    casts = run.autocast and tr.head_bytes != e
    if tr.head and not tr.pooled_head:
        if a.hidden_dropout > 0 and grad:  # the mask only matters when grads flow further down
            dropout(outside, "classifier dropout mask", t * h, run.device, run.residual)
        outside.add("classifier input", t * h * e)
        if casts and grad:
            outside.add("classifier weight cast", h * tr.head_out * e)
    elif tr.head:
        whole = run.residual == e or not run.autocast
        outside.add("pooler input (last hidden state, whole)" if whole else "pooler input (cast)",
                    (t if whole else b) * h * e)  # fmt: skip
        outside.add("pooler tanh output", b * h * e)
        if a.hidden_dropout > 0:
            dropout(outside, "classifier dropout mask", b * h, run.device, e)
        outside.add("classifier input", b * h * e)
        if casts:
            outside.add("head weight casts", (h * h if grad else 0) * e + h * tr.head_out * e)


def transient(a: Arch, b: int, length: int, run: Numerics) -> int:
    """MLP: input, residual, dense and GELU outputs; attention: the block input and q, k, v, plus
    on CPU in training the math path's scores, softmax, dropped probabilities and noise (and its
    float32 copies of half q, k, v)."""
    t, e, r = b * length, run.compute, run.residual
    mlp = 2 * t * a.hidden * r + 2 * t * a.intermediate * e
    attn = t * a.hidden * r + 3 * t * a.hidden * e
    if run.device == "cpu" and a.attention_dropout > 0:
        attn += 4 * b * a.heads * length**2 * FP32
        attn += 3 * t * a.hidden * FP32 if e != FP32 else 0
    return max(mlp, attn)
