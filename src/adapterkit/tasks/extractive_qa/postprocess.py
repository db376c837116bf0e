"""From start/end logits to answers: the best span over all windows of a question, in characters.

In each window every span of context tokens (first <= last, at most `max_answer_length` tokens)
scores start logit + end logit; the `n_best` best of each window are kept (exactly: all spans are
scored, not the top starts times the top ends). Over a question's windows a span found twice (in
two overlapping windows) keeps its higher score, and the best `n_best` spans remain. A question the
context may not answer (`unanswerable`) compares the best span with the null score (start + end
logit at position 0, the lowest over the windows, as in the SQuAD 2.0 reference code): no answer
when null - best > `null_threshold`. The answer's `score` is its probability among the n-best
(softmax over their scores, and the null score when unanswerable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapterkit.tasks.extractive_qa.windows import NO_CHAR, decode

if TYPE_CHECKING:
    import torch

    from adapterkit.tasks.extractive_qa import Options


@dataclass(frozen=True)
class Span:
    logit: float  # start logit + end logit
    start: int  # character offsets in the context, [start, end)
    end: int


@dataclass(frozen=True)
class WindowSpans:
    """What one window contributes: its question, its null score, its best spans, its text."""

    question: int
    null: float
    spans: tuple[Span, ...]
    text: str  # the context slice the window covers, from character `base` on
    base: int


@dataclass(frozen=True)
class Answer:
    text: str | None  # None: the context does not answer the question
    start: int | None  # character offset of the answer in its context
    score: float  # probability among the n-best
    logit: float  # start + end logit of the answer (the null score for no answer)


def masked_logits(
    start: torch.Tensor, end: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 start/end logits with padding at the lowest float: batching cannot change a loss."""
    import torch

    pad = attention_mask.to(start.device) == 0
    low = torch.finfo(torch.float32).min
    return start.float().masked_fill(pad, low), end.float().masked_fill(pad, low)


def _top_spans(
    start: torch.Tensor, end: torch.Tensor, offsets: torch.Tensor, options: Options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores, first, last) [rows, k]: each window's k best valid spans (-inf where fewer)."""
    import torch

    length = start.shape[1]
    index = torch.arange(length, device=start.device)
    width = index[None, :] - index[:, None]  # last - first, [first, last]
    band = (width >= 0) & (width < options.max_answer_length)
    context = offsets[..., 0] != NO_CHAR
    valid = band[None] & context[:, :, None] & context[:, None, :]
    scores = (start[:, :, None] + end[:, None, :]).masked_fill(~valid, float("-inf"))
    k = min(options.n_best, length * length)
    top, flat = scores.reshape(len(start), -1).topk(k, dim=-1)
    return top, flat // length, flat % length


def window_spans(
    batch: dict[str, torch.Tensor], start: torch.Tensor, end: torch.Tensor, options: Options
) -> list[WindowSpans]:
    """Each window's best spans (as character offsets), its null score and its context text."""
    top, first, last = _top_spans(start, end, batch["offsets"], options)
    starts = batch["offsets"][:, :, 0].gather(1, first).tolist()
    ends = batch["offsets"][:, :, 1].gather(1, last).tolist()
    null = (start[:, 0] + end[:, 0]).tolist()
    codes, base = batch["context_codes"].tolist(), batch["context_base"].tolist()
    questions = batch["question"].tolist()
    out = []
    for r, scores in enumerate(top.tolist()):
        spans = tuple(
            Span(s, a, b)
            for s, a, b in zip(scores, starts[r], ends[r], strict=True)
            if math.isfinite(s)
        )
        out.append(WindowSpans(questions[r], null[r], spans, decode(codes[r]), base[r]))
    return out


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def best_answer(windows: list[WindowSpans], options: Options, unanswerable: bool) -> Answer:
    """The answer of one question from all its windows (see the module docstring)."""
    found: dict[tuple[int, int], tuple[Span, WindowSpans]] = {}
    for window in windows:
        for span in window.spans:
            key = (span.start, span.end)
            if key not in found or span.logit > found[key][0].logit:
                found[key] = (span, window)
    ranked = sorted(found.values(), key=lambda item: (-item[0].logit, item[0].start))
    ranked = ranked[: options.n_best]
    null = min(w.null for w in windows)
    logits = [span.logit for span, _ in ranked] + ([null] if unanswerable else [])
    probs = _softmax(logits) if logits else []
    if not ranked or (unanswerable and null - ranked[0][0].logit > options.null_threshold):
        return Answer(None, None, probs[-1] if unanswerable else 0.0, null)
    span, window = ranked[0]
    text = window.text[span.start - window.base : span.end - window.base]
    return Answer(text, span.start, probs[0], span.logit)


def answers_by_question(
    windows: list[WindowSpans], options: Options, unanswerable: bool
) -> dict[int, Answer]:
    """{question index: its answer}, over the windows of every batch together."""
    grouped: dict[int, list[WindowSpans]] = {}
    for window in windows:
        grouped.setdefault(window.question, []).append(window)
    return {q: best_answer(ws, options, unanswerable) for q, ws in grouped.items()}
