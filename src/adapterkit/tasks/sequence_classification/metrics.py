"""Classification metrics, and how label names are ordered.

`accuracy`, `macro_f1`, per class `precision/<label>`, `recall/<label>`, `f1/<label>`, and for two
labels `f1` of the positive class (label "1" when there is one, else the second label), as GLUE
reports for MRPC. A precision, recall or F1 whose denominator is zero (a class never predicted,
never present) is 0, and `macro_f1` is the mean of `f1/<label>` over every label the model knows.
"""

from __future__ import annotations


def label_key(label: str) -> tuple:
    """Sort integer labels by value ("2" before "10"), anything else as text."""
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


def positive_label(labels: list[str]) -> str | None:
    """The positive class of a binary task: "1" if it is a label, else the second; None otherwise."""
    if len(labels) != 2:
        return None
    return "1" if "1" in labels else labels[1]


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def classification_metrics(preds: list[int], truths: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1, macro F1 (+ positive-class F1 when binary).

    A ratio with a zero denominator is 0: precision of a class never predicted, recall of a class
    never present, F1 when precision + recall is 0. `macro_f1` averages `f1/<label>` over all of
    `labels`, present in this data or not. Plain floats, ready for JSON.
    """
    n = len(labels)
    tp, fp, fn = [0] * n, [0] * n, [0] * n
    for p, t in zip(preds, truths, strict=True):
        if p == t:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    metrics: dict[str, float] = {"accuracy": _ratio(sum(tp), len(truths))}
    f1s = []
    for i, name in enumerate(labels):
        p, r = _ratio(tp[i], tp[i] + fp[i]), _ratio(tp[i], tp[i] + fn[i])
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        metrics[f"precision/{name}"], metrics[f"recall/{name}"], metrics[f"f1/{name}"] = p, r, f1
        f1s.append(f1)
    metrics["macro_f1"] = sum(f1s) / n if n else 0.0
    positive = positive_label(list(labels))
    if positive is not None:
        metrics["f1"] = metrics[f"f1/{positive}"]
    return metrics
