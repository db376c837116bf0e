"""Exact match and F1 of predicted answers, as the official SQuAD scripts compute them.

A question with answers scores the best over its gold answers of `evaluate-v1.1.py`'s exact match
and token F1 (the SQuAD normalisation: lower case, no punctuation, no articles, single spaces; the
functions are `adapterkit.tasks._text_metrics`'s), a missing answer counting as the empty string.
A question its context does not answer (SQuAD 2.0) scores 1 on both when no answer (or one that
normalises to nothing) is predicted, else 0, as `evaluate-v2.0.py` does. Both are means x 100.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapterkit.tasks._text_metrics import normalize_answer, squad_exact_match, squad_f1


def question_scores(predicted: str | None, gold: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one question, each 0..1; `gold` empty = unanswerable."""
    text = predicted or ""
    if not gold:
        right = float(normalize_answer(text) == "")
        return right, right
    exact = max(float(squad_exact_match(text, g)) for g in gold)
    return exact, max(squad_f1(text, g) for g in gold)


def squad_scores(
    predicted: Sequence[str | None], gold: Sequence[Sequence[str]]
) -> dict[str, float]:
    """{"exact_match", "f1"} on 0..100 over every question; nan for none."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} questions")
    if not gold:
        return {"exact_match": float("nan"), "f1": float("nan")}
    pairs = [question_scores(p, g) for p, g in zip(predicted, gold, strict=True)]
    return {
        "exact_match": 100.0 * sum(e for e, _ in pairs) / len(pairs),
        "f1": 100.0 * sum(f for _, f in pairs) / len(pairs),
    }
