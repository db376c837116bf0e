"""Sequence labelling (NER, POS, chunking): one tag per word, with any encoder or decoder model.

Data: CoNLL-style column files (`conll`), for example (CoNLL-2003):

    -DOCSTART- -X- -X- O

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O

and Universal Dependencies CoNLL-U files (`conllu`: `.conllu`, fields by name, FORM and UPOS).
A word's tag is trained on, and predicted from, its first sub-token (`words`); the metric is
entity precision/recall/F1 (seqeval) with word-level tag `accuracy`, or word accuracy alone for
tags that mark no spans, such as part-of-speech (`scoring`, `task.options.metric`).

Torch, transformers and seqeval are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from adapterkit.errors import DataError, ModelError
from adapterkit.tasks import _batching, _labelled, _models
from adapterkit.tasks._labelled import LabelSet
from adapterkit.tasks._loss import IGNORE, count_targets, summed_cross_entropy
from adapterkit.tasks.token_classification import scoring
from adapterkit.tasks.token_classification.conll import DOCSTART, read_conll
from adapterkit.tasks.token_classification.conllu import is_field_name, read_conllu
from adapterkit.tasks.token_classification.words import (
    OUTSIDE,
    first_subtoken_labels,
    first_subtokens,
    tag_metrics,
    word_tags,
    word_tokenizer,
)

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = [
    "DOCSTART",
    "IGNORE",
    "OUTSIDE",
    "Encoded",
    "Options",
    "TokenClassification",
    "first_subtokens",
    "read_conll",
    "read_conllu",
    "tag_metrics",
    "word_tags",
]

log = logging.getLogger("adapterkit")
_KIND = "TokenClassification"
_WHAT = "token classifier"


@dataclass
class Options:
    token_column: Annotated[
        int | str,
        Field(
            description="Column holding the word (0 = first; negative counts from the end); in a "
            "CoNLL-U file the field name FORM (or LEMMA)."
        ),
    ] = 0
    tag_column: Annotated[
        int | str,
        Field(
            description="Column holding the tag (-1 = last; a one-column file has no tags); in a "
            "CoNLL-U file the field name UPOS or XPOS (or FEATS, DEPREL)."
        ),
    ] = -1
    format: Annotated[
        Literal["auto", "conll", "conllu"],
        Field(
            description="conll: whitespace-separated columns; conllu: Universal Dependencies "
            "CoNLL-U. auto: conllu for a .conllu file or when the columns are CoNLL-U field names."
        ),
    ] = "auto"
    metric: Annotated[
        scoring.Metric,
        Field(
            description="entity_f1 (seqeval; selects by f1) or token_accuracy (word accuracy, for "
            "POS; selects by accuracy). auto: entity_f1 when the tags are B-/I-/... and O."
        ),
    ] = "auto"
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
        Field(
            min_length=1,
            description="Column separator of a conll file; None = any run of whitespace.",
        ),
    ] = None


def format_of(path: Path, options: Options) -> str:
    """The file format: `options.format`, or for auto conllu when the file ends in .conllu or
    either column is a CoNLL-U field name, else conll."""
    if options.format != "auto":
        return options.format
    named = is_field_name(options.token_column) or is_field_name(options.tag_column)
    return "conllu" if named or str(path).lower().endswith(".conllu") else "conll"


class Encoded(list):
    """The list `encode` returns; `.truncated_words` counts words cut off by `max_length`."""

    truncated_words: int = 0
    truncated_sentences: int = 0


def _word_labels(row: dict[str, Any], tags: list[str] | None, known: LabelSet, where: str) -> list:
    """The head's output per word (IGNORE for every word of an untagged sentence)."""
    if tags is None:
        return [IGNORE] * len(row["words"])
    if len(tags) != len(row["words"]):
        raise DataError(f"{where}: {len(row['words'])} words but {len(tags)} tags")
    return [known.id_of(tag, where) for tag in tags]


class TokenClassification:
    name: ClassVar[str] = "token_classification"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Sequence labelling (NER, POS) of CoNLL column files and UD CoNLL-U files with an "
        "encoder or decoder; entity F1 (seqeval) or word accuracy (task.options.metric). The "
        "embedded minilm-l6 is uncased, so it cannot see capitalisation, which costs NER "
        "accuracy; prefer a cased encoder for NER."
    )
    selection_metric: ClassVar[str] = "f1"
    higher_is_better: ClassVar[bool] = True

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForTokenClassification` on the meta device, one output per tag."""
        return _models.meta_model(_KIND, config, _labelled.num_labels(options))

    def model_parts_of(self, model: nn.Module) -> ModelParts:
        """The new tagging head on a built model (`classifier` for BERT, `score` for Llama)."""
        return _labelled.head_of(model)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        """The new tagging head, found on the model built from its config on the meta device."""
        return _labelled.head_parts(_KIND, source, _labelled.num_labels(options))

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """Three float32 copies of the [batch, length, tags] logits (see the causal LM's)."""
        return 3 * batch * length * _labelled.num_labels(options) * 4

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        model, tokenizer = _labelled.load_labelled_model(_KIND, source, options, load_kwargs, _WHAT)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{source.name}: token classification needs a fast tokenizer (to map sub-tokens "
                "to words); this model has only a slow one"
            )
        return model, word_tokenizer(tokenizer, source)

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Sentences: {"words", "tags" (None for an untagged file), "line", "where"}.

        CoNLL-U rows also hold their `sent_id` (None without that comment).
        """
        if format_of(path, options) == "conllu":
            return read_conllu(path, options)
        return read_conll(path, options)

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        """Fill in `labels` from the training tags ("O" first, then the rest sorted) and settle
        `metric: auto` by them."""
        for row in rows:
            if row.get("tags") is None:
                raise DataError(
                    f"{row.get('where', 'rows')}: training data needs a tag column; this file "
                    "has none (a single column, or '_' for every tag of a CoNLL-U file; check "
                    "task.options.token_column and tag_column)"
                )
        if options.labels is not None:
            labels = LabelSet.given(options.labels, noun="tag", among="in")
            labels.check((tag, row.get("where", "rows")) for row in rows for tag in row["tags"])
        else:
            seen = (tag for row in rows for tag in row["tags"])
            labels = LabelSet.infer(seen, first=OUTSIDE)
        names = list(labels.names)
        return dataclasses.replace(
            options, labels=names, metric=scoring.chosen(options.metric, names)
        )

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> Encoded:
        """Tokenize sentences; the tag goes on each word's first sub-token, -100 elsewhere."""
        return self._encode(rows, tokenizer, options, use_tags=True)

    def _encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, options: Options, use_tags: bool
    ) -> Encoded:
        known = LabelSet(tuple(_labelled.require_labels(options, _WHAT)), noun="tag")
        out = Encoded()
        for i, row in enumerate(rows):
            where = row.get("where", f"row {i}")
            words = list(row["words"])
            word_labels = _word_labels(row, row.get("tags") if use_tags else None, known, where)
            enc = tokenizer(
                words, is_split_into_words=True, truncation=True, max_length=options.max_length
            )
            word_ids = [-1 if w is None else int(w) for w in enc.word_ids()]
            kept = max(word_ids, default=-1) + 1
            if kept < len(words):
                out.truncated_words += len(words) - kept
                out.truncated_sentences += 1
            out.append(
                {
                    "input_ids": list(enc["input_ids"]),
                    "labels": first_subtoken_labels(word_ids, word_labels),
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
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """Right-pad; `word_ids` (-1 pad), `word_labels`, `n_words`, `line` serve evaluation."""
        batch = _batching.pad_batch(examples, tokenizer, {"labels": IGNORE, "word_ids": -1})
        n_words = max(e["n_words"] for e in examples)
        batch["word_labels"] = _batching.pad([e["word_labels"] for e in examples], IGNORE, n_words)
        batch["n_words"] = _batching.column(examples, "n_words")
        batch["line"] = _batching.column(examples, "line")
        return batch

    # ---- loss and metrics -----------------------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float32 logits [rows, sub-tokens, tags], from the model's inputs alone.

        word_ids, n_words, ... ride in the batch for evaluation only. A decoder would otherwise
        build a key/value cache no one reads; models whose config has no `use_cache` (DistilBERT,
        DeBERTa) are not handed the argument at all.
        """
        extra = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
        return out.logits.float()

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Labelled words in the batch (their first sub-tokens)."""
        return count_targets(batch["labels"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the labelled first sub-tokens, in float32."""
        return summed_cross_entropy(self._logits(model, batch), batch["labels"])

    def selection(self, options: Options) -> tuple[str, bool]:
        """Selects by `f1` (metric entity_f1) or `accuracy` (token_accuracy); see `scoring`."""
        return scoring.selection(options.metric, options.labels)

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """eval_loss per labelled word; tag accuracy over every word, and entity P/R/F1 unless
        the metric is token_accuracy."""
        labels = list(options.labels or [])

        def one(batch: dict[str, torch.Tensor]) -> tuple[float, int, list, list]:
            logits = self._logits(model, batch)
            loss = float(summed_cross_entropy(logits, batch["labels"]))
            pred, gold = word_tags(logits, batch, labels)
            for r, tags in enumerate(gold):
                if tags is None:
                    raise DataError(
                        f"the sentence at line {int(batch['line'][r])} of the eval data "
                        "has no tags; evaluation needs a tag column"
                    )
            return loss, self.targets(batch), pred, gold

        parts = _batching.map_batches(model, batches, one)
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        pred = [row for p in parts for row in p[2]]
        gold = [row for p in parts for row in p[3]]
        if scoring.chosen(options.metric, labels) == "token_accuracy":
            scores = {"accuracy": scoring.token_accuracy(gold, pred)}
        else:
            scores = tag_metrics(gold, pred)
        return {
            "eval_loss": total / count if count else float("nan"),
            **scores,
            "eval_words": sum(len(g) for g in gold),
        }

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
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
        options: Options,
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """A predicted tag per word of each sentence: [{"words", "tags", "line"}, ...], and the
        `sent_id` of a CoNLL-U sentence."""
        examples = self._encode(rows, tokenizer, options, use_tags=False)
        labels = list(options.labels or [])

        def tags(batch: dict[str, torch.Tensor]) -> list[list[str]]:
            return word_tags(self._logits(model, batch), batch, labels)[0]

        tagged = _batching.per_example(
            model, examples, lambda chunk: self.collate(chunk, tokenizer, options), tags, batch_size
        )
        return [
            {"words": list(row["words"]), "tags": t, "line": row.get("line")}
            | ({"sent_id": row["sent_id"]} if "sent_id" in row else {})
            for row, t in zip(rows, tagged, strict=True)
        ]
