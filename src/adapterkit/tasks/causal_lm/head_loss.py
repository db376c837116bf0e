"""The LM head and its cross entropy on the target positions only, in chunks of rows.

The plain loss builds float32 logits [B, L, V] for every position (prompt and padding too) and keeps
them, a shifted copy and log_softmax's output for backward. Here the model runs with its head
handing back the final hidden states, those of the target positions are gathered, and `ChunkedHeadCE` computes the summed cross
entropy `chunk_rows(V)` rows at a time: forward keeps only the per-chunk logsumexp's scalar sum; backward
recomputes each chunk's logits and returns dh = (softmax - onehot) @ W, and dW (and db) only when
the head's weight trains (`head`/`full`, tied embeddings). The logits and dh matmuls run in
autocast's dtype when autocast is on (as the plain head would, and as Liger's fused loss does), in
float32 otherwise; the softmax, the loss and dW are float32 always, and the softmax is taken in
place, so one float32 chunk of logits is all a chunk holds. Torch is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterkit.tasks._loss import IGNORE

if TYPE_CHECKING:
    import torch
    from torch import nn

CHUNK: int | None = None
"""Target rows per chunk (the chunk's [rows, V] float32 logits are the loss's largest tensor);
None: as many as keep that tensor near CHUNK_BYTES, see `chunk_rows`."""
CHUNK_BYTES = 64 * 2**20


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for a vocabulary of `vocab`: `CHUNK` when set, else the power of two that
    keeps one float32 [rows, vocab] chunk at most CHUNK_BYTES (256 rows, 48 MiB, for SmolLM2's
    49,152 tokens), within [128, 4096] so each chunk is still one large matrix multiply."""
    if CHUNK is not None:
        return CHUNK
    fits = max(1, CHUNK_BYTES // (4 * max(1, vocab)))
    return max(128, min(4096, 1 << (fits.bit_length() - 1)))


# Config attributes that change logits after the head; such models take the plain path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _function() -> Any:
    """The autograd Function, built once (torch is imported only when a loss is computed)."""
    global _FN
    if _FN is None:
        _FN = _build()
    return _FN


_FN: Any = None


def _logits(h: Any, w: Any, b: Any, dtype: Any) -> Any:
    """A chunk's logits in float32, the matmul in `dtype` (`w` already in it)."""
    z = (h.to(dtype) @ w.t()).float()
    return z + b.float() if b is not None else z


def _exp_shifted_(z: Any) -> Any:
    """exp(z - max z) in place, per row; returns the row maxima [C, 1]."""
    top = z.amax(-1, keepdim=True)
    z.sub_(top).exp_()
    return top


def _build() -> Any:
    import torch

    class ChunkedHeadCE(torch.autograd.Function):
        """sum_i [logsumexp(h_i W^T + b) - (h_i W^T + b)[t_i]] over rows i, CHUNK rows at a time."""

        @staticmethod
        def forward(
            ctx: Any, h: Any, weight: Any, bias: Any, targets: Any, chunk: int, dtype: Any
        ) -> Any:
            with torch.autocast(h.device.type, enabled=False):
                w = weight.to(dtype)
                total = torch.zeros((), dtype=torch.float32, device=h.device)
                for s in range(0, h.shape[0], chunk):
                    z = _logits(h[s : s + chunk], w, bias, dtype)
                    picked = z.gather(1, targets[s : s + chunk, None]).squeeze(1)
                    top = _exp_shifted_(z)
                    total += (z.sum(-1).log() + top.squeeze(1) - picked).sum()
                    del z  # freed before the next chunk's logits exist
            ctx.save_for_backward(h, weight, bias, targets)
            ctx.chunk, ctx.dtype = chunk, dtype
            return total

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            h, weight, bias, targets = ctx.saved_tensors
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            with torch.autocast(h.device.type, enabled=False):
                w = weight.to(ctx.dtype)
                dh = torch.empty_like(h) if need_h else None
                dw = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
                db = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
                g = grad.float()
                for s in range(0, h.shape[0], ctx.chunk):
                    hc = h[s : s + ctx.chunk]
                    p = _logits(hc, w, bias, ctx.dtype)
                    _exp_shifted_(p)
                    p.div_(p.sum(-1, keepdim=True))  # the softmax, in place
                    rows = torch.arange(p.shape[0], device=p.device)
                    p[rows, targets[s : s + ctx.chunk]] -= 1.0
                    p *= g
                    if dh is not None:
                        dh[s : s + ctx.chunk] = (p.to(ctx.dtype) @ w).to(h.dtype)
                    if dw is not None:
                        dw.addmm_(p.t(), hc.float())
                    if db is not None:
                        db += p.sum(0)
                    del p  # freed before the next chunk's logits exist
            dw = dw.to(weight.dtype) if dw is not None else None
            db = db.to(bias.dtype) if db is not None and bias is not None else None
            return dh, dw, db, None, None, None

    return ChunkedHeadCE


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype of the head's matmuls: autocast's when it is on (as the plain head under autocast
    would run), else float32. The softmax and the loss are float32 either way."""
    import torch

    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.float32


def chunked_head_ce(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Summed cross entropy of `head(hidden)` [N, V] against `targets` [N], `chunk` (default
    `chunk_rows(V)`) rows at a time, never all N at once."""
    rows = max(1, chunk or chunk_rows(int(head.weight.shape[0])))
    dtype = compute_dtype(hidden)
    targets = targets.to(hidden.device)
    return _function().apply(hidden, head.weight, head.bias, targets, rows, dtype)


def lm_head(model: nn.Module) -> nn.Linear | None:
    """The LM head of a causal LM (peft-wrapped or not), or None where the chunked loss does not
    apply: a head that is not a plain float linear layer (quantized, adapted, or dispatched by
    accelerate hooks), or a model that transforms its logits after the head."""
    import torch
    from torch import nn

    wrapper: Any = model
    base: Any = wrapper.get_base_model() if hasattr(wrapper, "get_base_model") else wrapper
    head: Any = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not nn.Linear or hasattr(head, "_hf_hook") or "forward" in vars(head):
        return None
    if not torch.is_floating_point(head.weight):
        return None
    config = getattr(base, "config", None)
    if any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS):
        return None
    return head


def target_loss(
    model: nn.Module, head: nn.Linear, batch: dict[str, torch.Tensor], chunk: int | None = None
) -> torch.Tensor:
    """The summed shifted cross entropy of a (padded or packed) batch through the chunked head.

    The whole model runs (its hooks, peft's and accelerate's wrappers included) with the head's
    forward replaced, for the call, by one that hands back its input: the final hidden states,
    with no logits computed. A packed batch (one with `position_ids`) runs with no attention mask,
    so attention follows the position ids (each row restarts at 0); a padded one with its mask.
    """
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    else:
        kwargs["attention_mask"] = batch["attention_mask"]
    seen: list[torch.Tensor] = []

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden)
        return hidden

    head.forward = capture  # type: ignore[method-assign]
    try:
        model(**kwargs)
    finally:
        del head.forward
    (hidden,) = seen
    labels = batch["labels"][:, 1:].to(hidden.device)
    keep = labels != IGNORE
    return chunked_head_ce(hidden[:, :-1][keep], head, labels[keep], chunk)
