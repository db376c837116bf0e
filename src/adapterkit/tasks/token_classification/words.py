"""Words and sub-tokens: a word's tag sits on its first sub-token, and is read back from there.

Words are tokenized with `is_split_into_words=True`; a word's tag is trained on its first
sub-token only (-100 on the rest and on special tokens). Words cut off by `max_length` (or that
tokenize to nothing) are predicted "O", so metrics always cover every word of the file. Entity
precision/recall/F1 come from seqeval (default, conlleval-compatible mode), which reads IOB/IOB2
tags (`B-PER`, `I-PER`, `O`); tags with no entity scheme (POS) are scored by `accuracy`, the
word-level tag accuracy, alone (`scoring`). Torch, transformers and seqeval are imported lazily.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from adapterkit.tasks._loss import IGNORE

if TYPE_CHECKING:
    import torch

    from adapterkit.storage.sources import ModelSource

OUTSIDE = "O"  # the tag of a word outside any entity; also what a truncated word is predicted


def first_subtoken_labels(word_ids: list[int], word_labels: list[int]) -> list[int]:
    """Per sub-token: its word's label on the word's first sub-token, IGNORE elsewhere (-1 = none)."""
    labels, previous = [], -1
    for w in word_ids:
        labels.append(word_labels[w] if w >= 0 and w != previous else IGNORE)
        previous = w
    return labels


def first_subtokens(word_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of each word's first sub-token, from a (batch, seq) word-id tensor (-1 = none)."""
    import torch

    previous = torch.cat([torch.full_like(word_ids[:, :1], -1), word_ids[:, :-1]], dim=1)
    return (word_ids >= 0) & (word_ids != previous)


def word_tags(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], labels: list[str]
) -> tuple[list[list[str]], list[list[str] | None]]:
    """(predicted, gold) tags per word for each sentence of a batch.

    A word's prediction is the argmax at its first sub-token; a word with no sub-token left (cut
    off by truncation, or tokenized to nothing) is predicted "O". Gold is None for an untagged
    sentence.
    """
    word_ids = batch["word_ids"].cpu()
    best = logits.argmax(dim=-1).cpu()
    first = first_subtokens(word_ids)
    n_words = batch["n_words"].cpu().tolist()
    word_labels = batch["word_labels"].cpu()
    preds: list[list[str]] = []
    golds: list[list[str] | None] = []
    for r, n in enumerate(n_words):
        pred = [OUTSIDE] * n
        positions = first[r].nonzero().flatten().tolist()
        for w, tag_id in zip(
            word_ids[r, positions].tolist(), best[r, positions].tolist(), strict=True
        ):
            pred[w] = labels[tag_id]
        preds.append(pred)
        gold_ids = word_labels[r, :n].tolist()
        golds.append(None if all(g == IGNORE for g in gold_ids) else [labels[g] for g in gold_ids])
    return preds, golds


def tag_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval, default mode) and word-level tag accuracy."""
    from seqeval import metrics as seqeval_metrics

    scores: Any = seqeval_metrics  # its annotations say zero_division is a str; 0 is documented
    if not gold:
        nan = float("nan")
        return {"precision": nan, "recall": nan, "f1": nan, "accuracy": nan}
    with warnings.catch_warnings():
        # Tags with no entity scheme (POS): seqeval warns per tag per call; accuracy still holds.
        warnings.filterwarnings("ignore", message=".*seems not to be NE tag")
        return {
            "precision": float(scores.precision_score(gold, pred, zero_division=0)),
            "recall": float(scores.recall_score(gold, pred, zero_division=0)),
            "f1": float(scores.f1_score(gold, pred, zero_division=0)),
            "accuracy": float(scores.accuracy_score(gold, pred)),
        }


def word_tokenizer(tokenizer: Any, source: ModelSource) -> Any:
    """A tokenizer that reads pre-split words as in running text.

    Byte-level BPE tokenizers (GPT-2, RoBERTa, Qwen) tokenize each pre-split word as if it
    started the text ("cat", not "Ġcat") unless loaded with `add_prefix_space=True`, so they are
    reloaded with it; WordPiece, SentencePiece and word-level tokenizers are left as they are.
    """
    if getattr(tokenizer, "add_prefix_space", None) is not False:
        return tokenizer
    pre = repr(getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None))
    if "ByteLevel" not in pre:
        return tokenizer
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(source.path, add_prefix_space=True)
    reloaded.pad_token = tokenizer.pad_token
    return reloaded
