"""Generation metrics shared by the text-to-text tasks, computed by the field's own libraries.

- ``bleu`` and ``chrf``: sacreBLEU's corpus BLEU and chrF with its default settings (BLEU's
  ``13a`` tokenisation, exponential smoothing; chrF with character 6-grams, beta 2). Besides the
  score, ``bleu_signature`` / ``chrf_signature`` hold sacreBLEU's signature string
  (``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``) so a figure can be reproduced.
- ``rouge``: ROUGE-1, ROUGE-2 and ROUGE-L F-measures from Google's ``rouge-score`` with the Porter
  stemmer on; a row with several references takes the best reference per measure (rouge-score's
  ``score_multi``); the figure is the mean over rows. Keys ``rouge1``, ``rouge2``, ``rougeL``.
- ``exact_match`` and ``f1``: the official SQuAD v1.1 ``evaluate-v1.1.py`` (its normalisation:
  lower case, no punctuation, no articles, single spaces), the maximum over each row's
  references, averaged over rows.

Every figure is on a 0-100 scale, as sacreBLEU and ``evaluate-v1.1.py`` print them (ROUGE is
multiplied by 100 to match). ``references`` is one sequence of reference strings per row; rows may
have different numbers of references.

sacrebleu and rouge-score are imported lazily, so importing this module costs nothing.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from adapterkit.errors import RecipeError

__all__ = [
    "METRICS",
    "check_names",
    "normalize_answer",
    "score",
    "squad_exact_match",
    "squad_f1",
]

METRICS: tuple[str, ...] = ("bleu", "chrf", "rouge", "exact_match", "f1")
ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
_OPTION_KEY = "task.options.metrics"


def check_names(names: Sequence[str]) -> list[str]:
    """`names` as a list, or RecipeError naming `task.options.metrics` and the allowed names."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise RecipeError(
            _OPTION_KEY,
            [
                f"unknown metric {n!r}; allowed: {', '.join(METRICS)}"
                for n in dict.fromkeys(unknown)
            ],
        )
    return list(dict.fromkeys(names))


# ---- SQuAD v1.1 (exactly evaluate-v1.1.py's functions) ----------------------------------------


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (evaluate-v1.1.py)."""
    exclude = set(string.punctuation)
    text = s.lower()
    text = "".join(ch for ch in text if ch not in exclude)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(pred: str, gold: str) -> bool:
    """evaluate-v1.1.py's exact_match_score: equal after `normalize_answer`."""
    return normalize_answer(pred) == normalize_answer(gold)


def squad_f1(pred: str, gold: str) -> float:
    """evaluate-v1.1.py's f1_score: token F1 of the normalised answers (0 with no common token)."""
    pred_tokens = normalize_answer(pred).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _squad(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    em = sum(
        max(squad_exact_match(p, g) for g in refs)
        for p, refs in zip(predictions, references, strict=True)
    )
    f1 = sum(
        max(squad_f1(p, g) for g in refs) for p, refs in zip(predictions, references, strict=True)
    )
    total = len(predictions)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


# ---- sacreBLEU and rouge-score ----------------------------------------------------------------


def _streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-row references as sacreBLEU's reference streams; None where a row has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _sacrebleu(
    name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float | str]:
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF

    metric = BLEU() if name == "bleu" else CHRF()
    result = metric.corpus_score(list(predictions), _streams(references))  # type: ignore[arg-type]
    return {name: float(result.score), f"{name}_signature": str(metric.get_signature())}


def _rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(list(refs), pred)
        for key in ROUGE_TYPES:
            sums[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in sums.items()}


def score(
    names: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float | str]:
    """The metrics `names` (from METRICS) of `predictions` against per-row `references`.

    Returns {} when there are no rows. Raises RecipeError for an unknown name and ValueError when
    the row counts differ or a row has no reference.
    """
    wanted = check_names(names)
    if isinstance(references, str) or any(isinstance(r, str) for r in references):
        raise ValueError("references must be one sequence of reference strings per row")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference rows")
    if not predictions:
        return {}
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every row needs at least one reference")
    out: dict[str, float | str] = {}
    for name in wanted:
        if name in ("bleu", "chrf"):
            out.update(_sacrebleu(name, predictions, references))
        elif name == "rouge":
            out.update(_rouge(predictions, references))
        elif name == "exact_match":
            out["exact_match"] = _squad(predictions, references)["exact_match"]
        else:
            out["f1"] = _squad(predictions, references)["f1"]
    return out
