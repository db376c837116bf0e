"""Extractive question answering (SQuAD): the answer is a span of the context, found by start and
end heads on any encoder (or decoder) model.

Data (`readers`): SQuAD JSON (v1.1, or v2.0 with `is_impossible`) or JSONL rows in the Hugging
Face datasets layout. A context longer than a window is cut into overlapping windows (`windows`:
`max_length` tokens, `doc_stride` of them shared by neighbours); each window is trained on the
answer's first and last token, or on position 0 (`[CLS]`) when the answer is not wholly in it or
the question has none. The loss is start + end cross entropy per window, summed; `targets` counts
windows. The best span over all windows of a question is mapped back to characters
(`postprocess`); exact match and F1 are the official SQuAD script's (`scoring`), on 0..100.

The model is `AutoModelForQuestionAnswering`; its `qa_outputs` layer is the new head. Torch and
transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from adapterkit.errors import DataError, ModelError
from adapterkit.tasks import _batching, _labelled, _models
from adapterkit.tasks._loss import IGNORE, count_targets, summed_cross_entropy
from adapterkit.tasks.extractive_qa.postprocess import (
    Answer,
    WindowSpans,
    answers_by_question,
    masked_logits,
    window_spans,
)
from adapterkit.tasks.extractive_qa.readers import read_questions
from adapterkit.tasks.extractive_qa.scoring import squad_scores
from adapterkit.tasks.extractive_qa.windows import (
    collate_windows,
    encode_windows,
    gold_answers,
)

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = ["Answer", "ExtractiveQA", "Options", "read_questions", "squad_scores"]

log = logging.getLogger("adapterkit")
_KIND = "QuestionAnswering"
_OUTPUTS = 2  # qa_outputs: a start and an end logit per token


@dataclass
class Options:
    format: Annotated[
        Literal["auto", "squad", "jsonl"],
        Field(
            description="File format: squad (SQuAD JSON) or jsonl (one question a line, Hugging "
            "Face datasets layout); auto: .jsonl is JSONL, .json a SQuAD file."
        ),
    ] = "auto"
    max_length: Annotated[
        int, Field(ge=16, description="Tokens per window (question + a slice of the context).")
    ] = 384
    doc_stride: Annotated[
        int,
        Field(ge=0, description="Context tokens two neighbouring windows share (their overlap)."),
    ] = 128
    max_question_length: Annotated[
        int, Field(ge=1, description="Question tokens kept; a longer question is cut.")
    ] = 64
    max_answer_length: Annotated[
        int, Field(ge=1, description="Longest answer predicted, in tokens.")
    ] = 30
    n_best: Annotated[
        int, Field(ge=1, description="Best spans kept per window and per question (for score).")
    ] = 20
    unanswerable: Annotated[
        bool | None,
        Field(
            description="Whether a question may have no answer (SQuAD 2.0); None: true when "
            "the training data has such questions."
        ),
    ] = None
    null_threshold: Annotated[
        float,
        Field(
            description="Predict no answer when the null score exceeds the best span's by more "
            "than this (start + end logits); only with unanswerable."
        ),
    ] = 0.0


def _base_key_mapping(config: PretrainedConfig) -> dict[str, Any]:
    """`key_mapping` for a model whose QA class names its base other than its base model does.

    Llama's `LlamaForQuestionAnswering` calls the base `transformer`, while every Llama checkpoint
    stores it as `model.`: without the mapping the base would silently load random weights.
    """
    from transformers import AutoModelForQuestionAnswering
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    qa_classes: Any = AutoModelForQuestionAnswering._model_mapping
    base_classes: Any = MODEL_MAPPING
    try:
        qa = qa_classes[type(config)].base_model_prefix
        base = base_classes[type(config)].base_model_prefix
    except KeyError:  # no such class: load_pretrained says so
        return {}
    return {} if qa == base else {"key_mapping": {rf"^{base}\.": f"{qa}."}}


def _prediction(row: dict[str, Any], answer: Answer) -> dict[str, Any]:
    return {
        "id": row["id"],
        "question": row["question"],
        "answer": answer.text,
        "start": answer.start,
        "score": answer.score,
        "line": row.get("line"),
    }


class ExtractiveQA:
    name: ClassVar[str] = "extractive_qa"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Extractive question answering (SQuAD JSON or JSONL; SQuAD 2.0 unanswerable questions) "
        "with start/end heads on an encoder; long contexts in overlapping windows; exact match "
        "and F1 as the official SQuAD script computes them."
    )
    selection_metric: ClassVar[str] = "f1"
    higher_is_better: ClassVar[bool] = True

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForQuestionAnswering` on the meta device (a start and an end output)."""
        return _models.meta_model(_KIND, config, _OUTPUTS)

    def model_parts_of(self, model: nn.Module) -> ModelParts:
        """The new span head on a built model (`qa_outputs`)."""
        return _labelled.head_of(model)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        """The new span head, found on the model built from its config on the meta device."""
        return _labelled.head_parts(_KIND, source, _OUTPUTS)

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """Three float32 copies of the [batch, length, 2] start/end logits (see the causal LM's)."""
        return 3 * batch * length * _OUTPUTS * 4

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        model, tokenizer = _models.load_pretrained(
            _KIND,
            source,
            "a question-answering model",
            load_kwargs,
            num_labels=_OUTPUTS,
            **_base_key_mapping(_models.config_of(source)),
        )
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{source.name}: extractive QA needs a fast tokenizer (its character offsets map "
                "answers to tokens and back); this model has only a slow one"
            )
        return model, tokenizer

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Questions {"id", "question", "context", "answers", "impossible", "line", "where"}."""
        return read_questions(path, options)

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        """Training needs answers; `unanswerable` is read from the data unless the recipe set it."""
        if not rows:
            raise DataError("no training questions")
        if rows[0]["answers"] is None:
            raise DataError(
                f"{rows[0]['where']}: training questions need 'answers' (an empty list for one "
                "the context does not answer)"
            )
        if options.unanswerable is not None:
            return options
        return dataclasses.replace(options, unanswerable=any(r["impossible"] for r in rows))

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> list[dict]:
        """Each question's windows, with the answer tokens they are trained on."""
        windows = encode_windows(rows, tokenizer, options, labelled=True)
        if len(windows) > len(rows):
            log.info("%d questions in %d windows", len(rows), len(windows))
        return windows

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """Right-padded windows; offsets, context and gold answer code points serve evaluation."""
        return collate_windows(examples, tokenizer)

    # ---- loss and metrics -----------------------------------------------------------------------

    def _logits(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 (start, end) logits [windows, tokens], padding at the lowest float."""
        config = getattr(model, "config", None)
        inputs: dict[str, Any] = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
        }
        if "token_type_ids" in batch and (getattr(config, "type_vocab_size", 0) or 0) > 1:
            inputs["token_type_ids"] = batch["token_type_ids"]
        if hasattr(config, "use_cache"):
            inputs["use_cache"] = False  # a decoder would build a cache no one reads
        out = model(**inputs)
        return masked_logits(out.start_logits, out.end_logits, batch["attention_mask"])

    def _summed(self, start: torch.Tensor, end: torch.Tensor, batch: dict) -> torch.Tensor:
        return summed_cross_entropy(start, batch["start_positions"]) + summed_cross_entropy(
            end, batch["end_positions"]
        )

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Windows with a trained answer (all of a labelled file's)."""
        return count_targets(batch["start_positions"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Start plus end cross entropy, summed over the windows, in float32."""
        return self._summed(*self._logits(model, batch), batch)

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The start logits of each window, then the end logits, [2 x windows, tokens], padding at
        the lowest float (`Task.logits`: a softmax over each row is a span end's distribution)."""
        import torch

        return torch.cat(self._logits(model, batch))

    def _spans(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> tuple[list[tuple[float, int]], list[WindowSpans], dict[int, list[str] | None]]:
        """(summed loss, targets) per batch, every window's spans, each question's gold answers."""
        gold: dict[int, list[str] | None] = {}

        def one(batch: dict[str, torch.Tensor]) -> tuple[float, int, list[WindowSpans]]:
            start, end = self._logits(model, batch)
            labelled = (batch["start_positions"] != IGNORE).tolist()
            for q, codes, known in zip(
                batch["question"].tolist(), batch["answer_codes"].tolist(), labelled, strict=True
            ):
                gold.setdefault(q, gold_answers(codes) if known else None)
            loss = float(self._summed(start, end, batch))
            return loss, self.targets(batch), window_spans(batch, start, end, options)

        parts = _batching.map_batches(model, batches, one)
        return [(p[0], p[1]) for p in parts], [w for p in parts for w in p[2]], gold

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """eval_loss per window; exact match and F1 (0..100) over every question."""
        losses, windows, gold = self._spans(model, batches, options)
        if any(g is None for g in gold.values()):
            raise DataError("the eval data has questions without 'answers'; evaluation needs them")
        answers = answers_by_question(windows, options, bool(options.unanswerable))
        order = sorted(answers)
        count = sum(n for _, n in losses)
        return {
            "eval_loss": sum(x for x, _ in losses) / count if count else float("nan"),
            **squad_scores([answers[q].text for q in order], [gold[q] or [] for q in order]),
            "eval_questions": len(order),
            "eval_windows": len(windows),
        }

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {
            "max_length": options.max_length,
            "doc_stride": options.doc_stride,
            "unanswerable": bool(options.unanswerable),
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
        """Per question: {"id", "question", "answer" (None: unanswered), "start", "score", "line"}."""
        windows = encode_windows(rows, tokenizer, options, labelled=False)

        def spans(batch: dict[str, torch.Tensor]) -> list[WindowSpans]:
            return window_spans(batch, *self._logits(model, batch), options)

        found = _batching.per_example(
            model, windows, lambda chunk: collate_windows(chunk, tokenizer), spans, batch_size
        )
        answers = answers_by_question(found, options, bool(options.unanswerable))
        return [_prediction(row, answers[i]) for i, row in enumerate(rows)]
