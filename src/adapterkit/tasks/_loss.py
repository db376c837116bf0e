"""The summed loss the built-in tasks train on, and the count of targets it is divided by.

Summed, not averaged: the trainer divides by the number of targets across an accumulation window,
so batch size and accumulation do not change the gradient. Torch is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE = -100  # label value cross_entropy skips: a prompt token, a later sub-token, no label


def count_targets(labels: torch.Tensor) -> int:
    """How many labels are trained on (not IGNORE)."""
    return int((labels != IGNORE).sum())


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy summed over every label that is not IGNORE.

    `logits` is [..., classes] and `labels` the same leading shape [...]; both are flattened, and
    the labels are moved to the logits' device.
    """
    import torch.nn.functional as F

    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.to(logits.device).reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def loss_figures(total: float, count: int, **extra: float) -> dict[str, float | int]:
    """The eval figures of a summed loss over `count` targets: eval_loss (the mean per target over
    the whole set, so the eval batch size does not change it), its perplexity (inf past exp's
    float range), any `extra` figures, and eval_tokens."""
    import math

    mean = total / count if count else float("nan")
    return {
        "eval_loss": mean,
        "perplexity": math.exp(mean) if count and mean < 700 else float("inf"),
        **extra,
        "eval_tokens": count,
    }
