"""Sequence labelling (NER, POS, chunking): one tag per word, with any encoder or decoder model.

Data: CoNLL-style column files, one token a line, columns split on whitespace (or `separator`),
a blank line between sentences; `-DOCSTART-` lines are skipped. For example (CoNLL-2003):

    -DOCSTART- -X- -X- O

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O
    German JJ B-NP B-MISC

The token is column `token_column` (default 0), the tag column `tag_column` (default -1, the
last). A file with a single column has no tags: it can be predicted, not trained or evaluated on.

Words are tokenized with `is_split_into_words=True`; a word's tag is trained on its first
sub-token only (-100 on the rest and on special tokens), and a word's predicted tag is read from
its first sub-token. Words cut off by `max_length` (or that tokenize to nothing) are predicted
"O", so metrics always cover every word of the file. Entity precision/recall/F1 come from
seqeval (default, conlleval-compatible mode), which reads IOB/IOB2 tags (`B-PER`, `I-PER`, `O`);
for tags with no entity scheme (POS) read `accuracy`, the word-level tag accuracy.

Torch, transformers and seqeval are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from adapterkit.errors import DataError, ModelError, UserError
from adapterkit.tasks import _labelled
from adapterkit.tasks._common import (
    IGNORE,
    count_targets,
    inference,
    read_text,
    summed_cross_entropy,
    to_device,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

log = logging.getLogger("adapterkit")

OUTSIDE = "O"  # the tag of a word outside any entity; also what a truncated word is predicted
DOCSTART = "-DOCSTART-"
_KIND = "TokenClassification"


@dataclass
class Options:
    token_column: Annotated[
        int, Field(description="Column holding the word (0 = first; negative counts from the end).")
    ] = 0
    tag_column: Annotated[
        int, Field(description="Column holding the tag (-1 = last); a one-column file has no tags.")
    ] = -1
    max_length: Annotated[
        int,
        Field(ge=8, description="Sub-tokens per sentence; words past it are predicted 'O'."),
    ] = 128
    labels: Annotated[
        list[str] | None,
        Field(
            description="Tag names in head order; None = 'O' then the training tags, sorted. "
            "When given, a training tag not in it is an error."
        ),
    ] = None
    separator: Annotated[
        str | None,
        Field(min_length=1, description="Column separator; None = any run of whitespace."),
    ] = None


class Encoded(list):
    """The list `encode` returns; `.truncated_words` counts words cut off by `max_length`."""

    truncated_words: int = 0
    truncated_sentences: int = 0


# ---- reading ------------------------------------------------------------------------------------


def _column(index: int, ncols: int, what: str, path: Path, lineno: int) -> int:
    resolved = index + ncols if index < 0 else index
    if not 0 <= resolved < ncols:
        raise DataError(
            f"{path}:{lineno}: {what}={index} is out of range: the line has {ncols} column"
            f"{'s' if ncols != 1 else ''}; set task.options.{what}"
        )
    return resolved


def read_conll(path: Path, options: Any) -> list[dict[str, Any]]:
    """Sentences of a CoNLL-style column file: {"words", "tags" (or None), "line", "where"}."""
    path = Path(path)
    text = read_text(path, "a CoNLL-style file")

    rows: list[dict[str, Any]] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    ref: tuple[int, int] | None = None  # (number of columns, line) of the file's first token line
    tok_i = tag_i = 0

    def flush() -> None:
        nonlocal words, tags
        if words:
            rows.append(
                {
                    "words": words,
                    "tags": tags if tag_i != tok_i else None,
                    "line": start,
                    "where": f"{path}:{start}",
                }
            )
        words, tags = [], []

    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            flush()
            continue
        if options.separator is None:
            fields = line.split()
        else:
            fields = [f.strip() for f in line.split(options.separator)]
        if fields[0] == DOCSTART:
            flush()
            continue
        if ref is None:
            ref = (len(fields), lineno)
            tok_i = _column(options.token_column, len(fields), "token_column", path, lineno)
            tag_i = _column(options.tag_column, len(fields), "tag_column", path, lineno)
        elif len(fields) != ref[0]:
            raise DataError(
                f"{path}:{lineno}: {len(fields)} columns, but line {ref[1]} has {ref[0]}; "
                "every token line needs the same columns (a blank line ends a sentence)"
            )
        if not fields[tok_i] or not fields[tag_i]:
            raise DataError(f"{path}:{lineno}: an empty column; check task.options.separator")
        if not words:
            start = lineno
        words.append(fields[tok_i])
        tags.append(fields[tag_i])
    flush()
    if not rows:
        raise DataError(
            f"{path}: no sentences (the file is empty); write one token a line, "
            "a blank line between sentences"
        )
    return rows


# ---- mapping sub-token predictions back to words ------------------------------------------------


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
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    if not gold:
        nan = float("nan")
        return {"precision": nan, "recall": nan, "f1": nan, "accuracy": nan}
    with warnings.catch_warnings():
        # Tags with no entity scheme (POS): seqeval warns per tag per call; accuracy still holds.
        warnings.filterwarnings("ignore", message=".*seems not to be NE tag")
        return {
            "precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "f1": float(f1_score(gold, pred, zero_division=0)),
            "accuracy": float(accuracy_score(gold, pred)),
        }


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # Only the model's inputs: word_ids, n_words, ... ride in the batch for evaluation alone.
    # A decoder would otherwise build a key/value cache no one reads; models whose config has no
    # `use_cache` (DistilBERT, DeBERTa) are not handed the argument at all.
    extra = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
    return out.logits.float()


def _word_tokenizer(tokenizer: Any, source: ModelSource) -> Any:
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


class TokenClassification:
    name: ClassVar[str] = "token_classification"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Sequence labelling (NER, POS) of CoNLL column files with an encoder or decoder; "
        "entity F1 (seqeval) and tag accuracy. The embedded minilm-l6 is uncased, so it cannot "
        "see capitalisation, which costs NER accuracy; prefer a cased encoder for NER."
    )
    selection_metric: ClassVar[str] = "f1"
    higher_is_better: ClassVar[bool] = True

    # ---- model ----------------------------------------------------------------------------------

    def model_parts(self, source: ModelSource, options: Any) -> ModelParts:
        """The new tagging head (`classifier` for BERT, `score` for Llama), from the config."""
        return _labelled.head_parts(_KIND, source, len(options.labels or []))

    def load_model(
        self, source: ModelSource, options: Any, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        import torch

        if not options.labels:
            raise UserError(
                "token_classification: no label names; set task.options.labels or train on "
                "tagged data so they are read from it"
            )
        kwargs = {"dtype": torch.float32, **load_kwargs}
        try:
            model, tokenizer = _labelled.load_labelled_model(
                _KIND, source, list(options.labels), kwargs
            )
        except OSError as exc:
            raise ModelError(f"{source.path}: cannot load a token classifier ({exc})") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{source.name}: token classification needs a fast tokenizer (to map sub-tokens "
                "to words); this model has only a slow one"
            )
        return model, _word_tokenizer(tokenizer, source)

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Any) -> list[dict[str, Any]]:
        """Sentences: {"words", "tags" (None for a one-column file), "line", "where"}."""
        return read_conll(path, options)

    def setup(self, rows: list[dict[str, Any]], options: Any) -> Any:
        """Fill in `labels` from the training tags: "O" first, then the rest sorted."""
        for row in rows:
            if row.get("tags") is None:
                raise DataError(
                    f"{row.get('where', 'rows')}: training data needs a tag column; this file "
                    "has a single column (check task.options.token_column and tag_column)"
                )
        if options.labels is not None:
            labels = list(options.labels)
            duplicates = sorted({x for x in labels if labels.count(x) > 1})
            if duplicates:
                raise UserError(f"task.options.labels: duplicate labels {duplicates}")
            known = set(labels)
            for row in rows:
                for tag in row["tags"]:
                    if tag not in known:
                        raise DataError(
                            f"{row.get('where', 'rows')}: tag {tag!r} is not in "
                            f"task.options.labels {labels}"
                        )
            return options
        seen = {tag for row in rows for tag in row["tags"]}
        return dataclasses.replace(options, labels=[OUTSIDE, *sorted(seen - {OUTSIDE})])

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Any) -> Encoded:
        """Tokenize sentences; the tag goes on each word's first sub-token, -100 elsewhere."""
        return self._encode(rows, tokenizer, options, use_tags=True)

    def _encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, options: Any, use_tags: bool
    ) -> Encoded:
        if not options.labels:
            raise UserError("token_classification: label names are unknown; run setup first")
        index = {tag: i for i, tag in enumerate(options.labels)}
        out = Encoded()
        for i, row in enumerate(rows):
            words, tags = list(row["words"]), row.get("tags") if use_tags else None
            where = row.get("where", f"row {i}")
            word_labels = [IGNORE] * len(words)
            if tags is not None:
                if len(tags) != len(words):
                    raise DataError(f"{where}: {len(words)} words but {len(tags)} tags")
                for w, tag in enumerate(tags):
                    if tag not in index:
                        raise DataError(
                            f"{where}: tag {tag!r} is not one of the model's labels "
                            f"{list(options.labels)}"
                        )
                    word_labels[w] = index[tag]
            enc = tokenizer(
                words,
                is_split_into_words=True,
                truncation=True,
                max_length=options.max_length,
            )
            word_ids = [-1 if w is None else int(w) for w in enc.word_ids()]
            labels, previous = [], -1
            for w in word_ids:
                labels.append(word_labels[w] if w >= 0 and w != previous else IGNORE)
                previous = w
            kept = max(word_ids, default=-1) + 1
            if kept < len(words):
                out.truncated_words += len(words) - kept
                out.truncated_sentences += 1
            out.append(
                {
                    "input_ids": list(enc["input_ids"]),
                    "labels": labels,
                    "word_ids": word_ids,
                    "word_labels": word_labels,
                    "n_words": len(words),
                    "line": int(row.get("line", i)),
                }
            )
        if out.truncated_words:
            log.warning(
                "%d words in %d of %d sentences cut off by max_length=%d; they are not trained "
                "on and are predicted 'O'; raise max_length to keep them",
                out.truncated_words,
                out.truncated_sentences,
                len(rows),
                options.max_length,
            )
        return out

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Any
    ) -> dict[str, torch.Tensor]:
        """Right-pad; `word_ids` (-1 pad), `word_labels`, `n_words`, `line` serve evaluation."""
        import torch

        n, width = len(examples), max(len(e["input_ids"]) for e in examples)
        n_words = max(e["n_words"] for e in examples)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, width), int(pad), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        word_ids = torch.full((n, width), -1, dtype=torch.long)
        word_labels = torch.full((n, n_words), IGNORE, dtype=torch.long)
        for r, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[r, :k] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[r, :k] = 1
            labels[r, :k] = torch.tensor(e["labels"], dtype=torch.long)
            word_ids[r, :k] = torch.tensor(e["word_ids"], dtype=torch.long)
            word_labels[r, : e["n_words"]] = torch.tensor(e["word_labels"], dtype=torch.long)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "word_ids": word_ids,
            "word_labels": word_labels,
            "n_words": torch.tensor([e["n_words"] for e in examples], dtype=torch.long),
            "line": torch.tensor([e["line"] for e in examples], dtype=torch.long),
        }

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Labelled words in the batch (their first sub-tokens)."""
        return count_targets(batch["labels"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the labelled first sub-tokens, in float32."""
        return summed_cross_entropy(_logits(model, batch), batch["labels"])

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Any
    ) -> dict:
        """eval_loss per labelled word; entity P/R/F1 and tag accuracy over every word."""
        total, count = 0.0, 0
        gold: list[list[str]] = []
        pred: list[list[str]] = []
        with inference(model) as device:
            for batch in batches:
                batch = to_device(batch, device)
                logits = _logits(model, batch)
                total += float(summed_cross_entropy(logits, batch["labels"]))
                count += self.targets(batch)
                p, g = word_tags(logits, batch, list(options.labels))
                for r, (p_row, g_row) in enumerate(zip(p, g, strict=True)):
                    if g_row is None:
                        raise DataError(
                            f"the sentence at line {int(batch['line'][r])} of the eval data "
                            "has no tags; evaluation needs a tag column"
                        )
                    gold.append(g_row)
                    pred.append(p_row)
        return {
            "eval_loss": total / count if count else float("nan"),
            **tag_metrics(gold, pred),
            "eval_words": sum(len(g) for g in gold),
        }

    def manifest(self, options: Any, tokenizer: Any) -> dict[str, Any]:
        return {
            "labels": list(options.labels or []),
            "token_column": options.token_column,
            "tag_column": options.tag_column,
        }

    # ---- inference ------------------------------------------------------------------------------

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        options: Any,
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """A predicted tag per word of each sentence: [{"words", "tags", "line"}, ...]."""
        examples = self._encode(rows, tokenizer, options, use_tags=False)
        results: list[dict[str, Any]] = []
        with inference(model) as device:
            for start in range(0, len(examples), max(1, batch_size)):
                chunk = examples[start : start + max(1, batch_size)]
                batch = self.collate(chunk, tokenizer, options)
                logits = _logits(model, to_device(batch, device))
                tags, _ = word_tags(logits, batch, list(options.labels))
                for j, row_tags in enumerate(tags):
                    row = rows[start + j]
                    results.append(
                        {"words": list(row["words"]), "tags": row_tags, "line": row.get("line")}
                    )
        return results
