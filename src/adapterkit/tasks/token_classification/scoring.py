"""Which metric scores a tagger, and picks its best checkpoint: entity F1 or word accuracy.

`task.options.metric`:
  entity_f1        entity precision/recall/F1 (seqeval) and word accuracy; selects by `f1`. For
                   tags in an entity scheme: IOB/IOB2 (`B-PER`, `I-PER`, `O`), IOBES, BILOU.
  token_accuracy   word accuracy alone; selects by `accuracy`. For tags that mark no spans
                   (part-of-speech, morphology), where entity F1 means nothing.
  auto             entity_f1 when every tag but `O` has an entity prefix (`B-`, `I-`, `E-`,
                   `S-`, `L-`, `U-`), else token_accuracy. `setup` settles it from the training
                   tags, so the adapter's manifest records the metric used.

Word accuracy counts each word of the file once: its tag read at its first sub-token, a word cut
off by `max_length` predicted "O" (so wrong, for tags without "O").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

Metric = Literal["auto", "entity_f1", "token_accuracy"]

SELECTS_BY = {"entity_f1": "f1", "token_accuracy": "accuracy"}  # the eval figure that picks best/
_ENTITY_PREFIXES = frozenset("BIESLU")
_OUTSIDE = "O"


def entity_scheme(labels: Sequence[str]) -> bool:
    """Whether the tags look like an entity scheme: each but "O" is `X-name`, X one of BIESLU."""
    tags = [t for t in labels if t != _OUTSIDE]
    return bool(tags) and all(len(t) > 2 and t[1] == "-" and t[0] in _ENTITY_PREFIXES for t in tags)


def chosen(metric: str, labels: Sequence[str] | None) -> str:
    """`metric`, with auto settled by the labels; auto before the labels are known: entity_f1."""
    if metric != "auto":
        return metric
    return "token_accuracy" if labels and not entity_scheme(labels) else "entity_f1"


def selection(metric: str, labels: Sequence[str] | None) -> tuple[str, bool]:
    """(the eval figure that picks best/, higher is better) for these options."""
    return SELECTS_BY[chosen(metric, labels)], True


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """The share of words whose predicted tag is the gold one, over every word of every sentence."""
    pairs: list[tuple[Any, Any]] = [
        (g, p) for gs, ps in zip(gold, pred, strict=True) for g, p in zip(gs, ps, strict=True)
    ]
    if not pairs:
        return float("nan")
    return sum(g == p for g, p in pairs) / len(pairs)
