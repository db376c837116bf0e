"""Text and text-pair classification (sentiment, topic, spam; paraphrase, entailment).

Data: TSV, CSV or JSONL with a text column, an optional second text column and a label column
(`readers`). The model is `AutoModelForSequenceClassification` with a fresh head of one output per
label, for encoders (BERT: `classifier` + `pooler`) and decoders (Llama: `score`, read at each
row's last real token, which is why the pad token is written into the config). Padding is on the
right. Metrics (`metrics`): `eval_loss` (mean cross entropy per labelled row over the whole set),
accuracy, per-class and macro F1.

Torch and transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from adapterkit.errors import DataError
from adapterkit.tasks import _batching, _labelled, _models
from adapterkit.tasks._labelled import LabelSet
from adapterkit.tasks._loss import IGNORE, count_targets, summed_cross_entropy
from adapterkit.tasks.sequence_classification.metrics import (
    classification_metrics,
    label_key,
    positive_label,
)
from adapterkit.tasks.sequence_classification.readers import read_rows

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = [
    "IGNORE",
    "Options",
    "SequenceClassification",
    "classification_metrics",
    "positive_label",
]

_KIND = "SequenceClassification"


@dataclass
class Options:
    # Recipes may write numeric labels (`labels: [0, 1]`); they are label names, i.e. strings.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(coerce_numbers_to_str=True)

    text_column: Annotated[
        str, Field(min_length=1, description="Column (or JSON field) holding the text.")
    ] = "sentence"
    text_pair_column: Annotated[
        str | None,
        Field(
            description="Column of a second text for pair tasks (e.g. sentence2 for MRPC/RTE, with "
            "text_column sentence1); None for single texts."
        ),
    ] = None
    label_column: Annotated[
        str, Field(min_length=1, description="Column (or JSON field) holding the label.")
    ] = "label"
    format: Annotated[
        Literal["auto", "tsv", "csv", "jsonl"],
        Field(
            description="File format; auto picks it from the extension (.tsv, .csv, .jsonl/.json)."
        ),
    ] = "auto"
    max_length: Annotated[
        int, Field(ge=8, description="Tokens per example (both texts); longer ones are cut.")
    ] = 128
    labels: Annotated[
        list[str] | None,
        Field(
            description="Label names in head order; None takes the sorted distinct labels of the "
            "training data (numerically when all are integers)."
        ),
    ] = None


def _prediction(row: dict[str, Any], score: float, best: int, labels: list[str]) -> dict:
    item = {
        "label": labels[best] if best < len(labels) else str(best),
        "score": float(score),
        "line": row.get("line"),
        "text": row["text"],
    }
    if row.get("text_pair") is not None:
        item["text_pair"] = row["text_pair"]
    return item


class SequenceClassification:
    name: ClassVar[str] = "sequence_classification"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Text or text-pair classification (TSV/CSV/JSONL) with a new head; accuracy, F1."
    )
    selection_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForSequenceClassification` on the meta device, one output per label."""
        return _models.meta_model(_KIND, config, _labelled.num_labels(options))

    def model_parts_of(self, model: nn.Module) -> ModelParts:
        """The new head on a built model (`classifier` + pooler for BERT, `score` for Llama)."""
        return _labelled.head_of(model)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        """The new head, found on the model built from its config on the meta device."""
        return _labelled.head_parts(_KIND, source, _labelled.num_labels(options))

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """Three float32 copies of the [batch, labels] logits (see the causal LM's), negligible."""
        return 3 * batch * _labelled.num_labels(options) * 4

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        return _labelled.load_labelled_model(
            _KIND, source, options, load_kwargs, "sequence classifier"
        )

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Rows {"text", "text_pair", "label" (str or None), "line", "where"}; errors name file:line."""
        return read_rows(path, options)

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        """Fill in the label names from the training rows, or check the rows against given ones."""
        if not rows:
            raise DataError("no training rows")
        where = rows[0].get("where", "training data")
        if rows[0]["label"] is None:
            raise DataError(
                f"{where}: training rows need labels, and there is no "
                f"{options.label_column!r} column; set task.options.label_column"
            )
        if options.labels is None:
            labels = LabelSet.infer((r["label"] for r in rows), key=label_key)
            if len(labels.names) < 2:
                raise DataError(
                    f"{where}: every training row has the label {rows[0]['label']!r}; a "
                    "classifier needs at least two labels"
                )
        else:
            labels = LabelSet.given(options.labels)
            if len(labels.names) < 2:
                raise DataError("task.options.labels: a classifier needs at least two labels")
            labels.check((r["label"], r.get("where", "training data")) for r in rows)
        return dataclasses.replace(options, labels=list(labels.names))

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> list[dict]:
        """Token ids (+ token type ids for BERT-style pairs) and a label id (-100 when unlabelled).

        A label the model does not know (one the training data never had) is a DataError.
        """
        return self._encode(rows, tokenizer, options, with_labels=True)

    def _encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, options: Options, with_labels: bool
    ) -> list[dict]:
        if not rows:
            return []
        known = LabelSet(tuple(options.labels or ()))
        label_ids = []
        for r in rows:
            label = r.get("label") if with_labels else None
            label_ids.append(IGNORE if label is None else known.id_of(label, r.get("where", "row")))
        pairs = [r.get("text_pair") for r in rows]
        has_pair = [p is not None for p in pairs]
        if any(has_pair) and not all(has_pair):
            bad = rows[has_pair.index(False)]
            raise DataError(f"{bad.get('where', 'row')}: a second text is missing")
        enc = tokenizer(
            [r["text"] for r in rows],
            pairs if all(has_pair) else None,
            truncation=True,
            max_length=options.max_length,
        )
        keep = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{**{k: enc[k][i] for k in keep}, "label": label_ids[i]} for i in range(len(rows))]

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """Right-pad with the pad token; `attention_mask` marks real tokens; `labels` per row."""
        fields = {"token_type_ids": 0} if "token_type_ids" in examples[0] else {}
        batch = _batching.pad_batch(examples, tokenizer, fields)
        batch["labels"] = _batching.column(examples, "label")
        return batch

    # ---- loss and metrics -----------------------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float32 logits [rows, labels]; labels are never passed in (the loss is ours)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # Only models with segment embeddings take token types (BERT yes, Llama and RoBERTa no).
        if "token_type_ids" in batch and (getattr(model.config, "type_vocab_size", 0) or 0) > 1:
            inputs["token_type_ids"] = batch["token_type_ids"]
        return model(**inputs).logits.float()

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        return count_targets(batch["labels"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the labelled rows, in float32."""
        return summed_cross_entropy(self._logits(model, batch), batch["labels"])

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """Loss, accuracy and F1 over every labelled row of all batches (batch size does not matter)."""

        def one(batch: dict[str, torch.Tensor]) -> tuple[float, list[int], list[int]]:
            logits, labels = self._logits(model, batch), batch["labels"]
            keep = labels != IGNORE
            loss = float(summed_cross_entropy(logits, labels))
            return loss, logits.argmax(-1)[keep].tolist(), labels[keep].tolist()

        parts = _batching.map_batches(model, batches, one)
        preds = [p for _, batch_preds, _ in parts for p in batch_preds]
        truths = [t for _, _, batch_truths in parts for t in batch_truths]
        if not truths:
            raise DataError(
                "the eval data has no labelled rows; evaluation needs the label column "
                f"{options.label_column!r}"
            )
        return {
            "eval_loss": sum(loss for loss, _, _ in parts) / len(truths),
            **classification_metrics(preds, truths, list(options.labels or [])),
        }

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {
            "labels": list(options.labels or []),
            "text_column": options.text_column,
            "text_pair_column": options.text_pair_column,
            "label_column": options.label_column,
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
        """Per row: {"label", "score" (its softmax probability), "line", "text"[, "text_pair"]}."""
        examples = self._encode(rows, tokenizer, options, with_labels=False)

        def best(batch: dict[str, torch.Tensor]) -> list[tuple[float, int]]:
            score, index = self._logits(model, batch).softmax(-1).max(-1)
            return list(zip(score.tolist(), index.tolist(), strict=True))

        scored = _batching.per_example(
            model, examples, lambda chunk: self.collate(chunk, tokenizer, options), best, batch_size
        )
        labels = list(options.labels or [])
        return [_prediction(r, s, b, labels) for r, (s, b) in zip(rows, scored, strict=True)]
