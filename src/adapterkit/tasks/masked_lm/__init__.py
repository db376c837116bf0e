"""Masked language modelling for encoders (BERT family): unlabelled text, three masking modes.

Data: plain text (a document per blank-line separated block, or per line) or JSONL with the
document in a `text` field (`documents`). Each document is cut into examples of `max_length`
tokens at word boundaries. The masks (`masking`): BERT's 80/10/10 on single tokens, whole words,
or SpanBERT's geometric spans of whole words, all within a budget of `mlm_probability` of the
maskable tokens (`masking` says exactly how).

A mask is a pure function of a key and the example's tokens, never of hidden RNG state:
  - `collate` (evaluation, `adapterkit eval`, and training under a trainer that gives no epoch)
    keys each example by (eval_mask_seed, its index): the same masks in every evaluation of every
    run and strategy, so eval figures compare;
  - `collate_train(examples, ..., seed, epoch)` keys it by (the run's seed, the epoch, its index):
    fresh masks every epoch, reproduced exactly by a resumed run (the data position is all it
    needs).

The loss is the summed cross entropy over the masked tokens (the targets), with the head computed at
those positions only (`head`). Metrics: `eval_loss` (per masked token), `perplexity` (its exp) and
`accuracy` (arg-max prediction equals the original token). Torch is imported lazily.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from adapterkit.errors import ModelError, RecipeError
from adapterkit.tasks import _batching, _models
from adapterkit.tasks._loss import IGNORE, count_targets, loss_figures
from adapterkit.tasks.masked_lm import documents, head
from adapterkit.tasks.masked_lm.masking import MaskSpec, mask_example, rng_for

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = ["IGNORE", "MaskSpec", "MaskedLM", "Options", "mask_example"]

log = logging.getLogger("adapterkit")
_KIND = "MaskedLM"


@dataclass
class Options:
    masking: Annotated[
        Literal["token", "whole_word", "span"],
        Field(
            description="token: BERT's 80/10/10 on single tokens; whole_word: every sub-token of "
            "a chosen word; span: contiguous spans of whole words with Geo(span_p) lengths, "
            "clipped at max_span (SpanBERT), replaced span by span"
        ),
    ] = "token"
    mlm_probability: Annotated[
        float,
        Field(gt=0, lt=1, description="Share of each example's maskable tokens that is masked."),
    ] = 0.15
    span_p: Annotated[
        float, Field(gt=0, le=1, description="span: the geometric distribution's p (SpanBERT 0.2).")
    ] = 0.2
    max_span: Annotated[int, Field(ge=1, description="span: the longest span, in words.")] = 10
    max_length: Annotated[
        int,
        Field(ge=8, description="Tokens per example; longer documents become several examples."),
    ] = 128
    eval_mask_seed: Annotated[
        int, Field(description="Seed of the evaluation masks (the same in every run).")
    ] = 0
    documents: Annotated[
        Literal["paragraphs", "lines"],
        Field(description="Plain text: a document per blank-line separated block, or per line."),
    ] = "paragraphs"
    format: Annotated[
        Literal["auto", "text", "jsonl"],
        Field(description="File format; auto: JSONL for .jsonl/.json, plain text otherwise."),
    ] = "auto"
    text_field: Annotated[
        str, Field(min_length=1, description="JSONL: the field holding the document.")
    ] = "text"


def masked_batch(
    examples: list[dict], tokenizer: Any, options: Options, key: tuple[object, ...]
) -> dict[str, torch.Tensor]:
    """Examples masked with the generator of `(*key, index)` each, right-padded into a batch."""
    spec = MaskSpec.of(options, tokenizer)
    masked = []
    for e in examples:
        ids, labels = mask_example(e["input_ids"], e["word_ids"], spec, rng_for(*key, e["index"]))
        masked.append({"input_ids": ids, "labels": labels})
    return _batching.pad_batch(masked, tokenizer, {"labels": IGNORE})


class MaskedLM:
    name: ClassVar[str] = "masked_lm"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Masked language modelling of raw text with an encoder (BERT family): token, whole-word "
        "or span masking; masked-token loss, perplexity and accuracy."
    )
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForMaskedLM` from `config` on the meta device, in float32 (no weights)."""
        return _models.meta_model(_KIND, config)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        """The MLM head without its tied decoder; new when the checkpoint lacks it (`head`)."""
        return head.parts_of(self.meta_model(_models.config_of(source), options), source)

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """Three float32 copies (logits, log-softmax, gradient) of [masked tokens, vocab]: the
        head runs on the masked positions only, at most ceil(mlm_probability x length) a row."""
        masked = batch * max(1, math.ceil(options.mlm_probability * length))
        return 3 * masked * int(config.vocab_size) * 4

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        """The masked LM and its tokenizer; a checkpoint without an MLM head gets a new one."""
        config = _models.config_of(source)
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        if positions and options.max_length > positions:
            key = "task.options.max_length"
            raise RecipeError(
                key,
                [
                    f"{key}: {options.max_length} tokens is more than the {positions} positions "
                    f"of {source.name}; use at most {positions}"
                ],
            )
        meta = self.meta_model(config, options)
        kwargs = head.keep_decoder_unquantized(load_kwargs, meta)
        with head.quiet_missing_head_notice():
            model, tokenizer = _models.load_pretrained(
                _KIND, source, "a masked language model", kwargs
            )
        parts = head.parts_of(meta, source)
        if parts.new_head:
            log.info(
                "%s has no MLM head weights: %s newly initialised (the decoder stays tied to the "
                "input embeddings); the built-in strategies train a new head by default",
                source.name,
                ", ".join(parts.head),
            )
        if tokenizer.mask_token_id is None:
            raise ModelError(f"{source.name}: its tokenizer has no mask token; not a masked LM")
        if options.masking != "token" and not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{source.name}: masking={options.masking} needs a fast tokenizer (for the "
                "word of each sub-token); this model has only a slow one, use masking=token"
            )
        return model, tokenizer

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Documents: [{"text", "line"}, ...]; errors name the file and line."""
        return documents.read_documents(
            Path(path), options.format, options.documents, options.text_field
        )

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        return options  # nothing is derived from the data

    def encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, options: Options
    ) -> documents.Encoded:
        """Documents cut into examples {"input_ids", "word_ids", "index", "line"}, unmasked."""
        return documents.encode_documents(rows, tokenizer, options.max_length)

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """The examples with their evaluation masks, keyed by (eval_mask_seed, index)."""
        return masked_batch(examples, tokenizer, options, ("eval", options.eval_mask_seed))

    def collate_train(
        self, examples: list[dict], tokenizer: Any, options: Options, seed: int, epoch: int
    ) -> dict[str, torch.Tensor]:
        """A training batch of epoch `epoch` in a run seeded `seed`: masks keyed by (seed, epoch,
        index), drawn afresh each epoch and the same in a resumed run."""
        return masked_batch(examples, tokenizer, options, ("train", seed, epoch))

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Masked tokens in the batch."""
        return count_targets(batch["labels"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the masked tokens, in float32."""
        import torch.nn.functional as F

        logits, labels = head.masked_logits(model, batch)
        return F.cross_entropy(logits, labels, reduction="sum")

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """Per masked token over the whole set: eval_loss, perplexity and accuracy."""
        import torch.nn.functional as F

        def one(batch: dict[str, torch.Tensor]) -> tuple[float, int, int]:
            logits, labels = head.masked_logits(model, batch)
            loss = float(F.cross_entropy(logits, labels, reduction="sum"))
            return loss, int(labels.numel()), int((logits.argmax(-1) == labels).sum())

        parts = _batching.map_batches(model, batches, one)
        count = sum(p[1] for p in parts)
        hits = sum(p[2] for p in parts) / count if count else float("nan")
        return loss_figures(sum(p[0] for p in parts), count, accuracy=hits)

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {
            "mask_token": tokenizer.mask_token,
            "masking": options.masking,
            "eval_mask_seed": options.eval_mask_seed,
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
        """Fill-mask: for each row, the most likely token at each of its mask tokens.

        [{"text", "line", "fills": [{"token", "score"}, ...]}, ...]; a row without a mask token
        gets no fills. Rows are cut at max_length tokens.
        """
        return fill_masks(model, tokenizer, rows, options, batch_size)


def fill_masks(
    model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]], options: Options, size: int
) -> list[dict[str, Any]]:
    """`MaskedLM.predict`: the arg-max token and its probability at every mask token."""
    mask_id = int(tokenizer.mask_token_id)
    examples = []
    for row in rows:
        ids = tokenizer(str(row["text"]), truncation=True, max_length=options.max_length)
        ids = list(ids["input_ids"])
        examples.append({"input_ids": ids, "labels": [0 if t == mask_id else IGNORE for t in ids]})

    def fills(batch: dict[str, torch.Tensor]) -> list[list[dict[str, Any]]]:
        logits, _ = head.masked_logits(model, batch)
        probs = logits[:, : len(tokenizer)].softmax(-1).max(-1)  # the tokenizer's tokens only
        per_row = (batch["labels"] != IGNORE).sum(1).tolist()
        found, start = [], 0
        for n in per_row:
            ids, scores = probs.indices[start : start + n], probs.values[start : start + n]
            tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
            found.append(
                [{"token": t, "score": float(s)} for t, s in zip(tokens, scores, strict=True)]
            )
            start += n
        return found

    collate = lambda chunk: _batching.pad_batch(chunk, tokenizer, {"labels": IGNORE})  # noqa: E731
    filled = _batching.per_example(model, examples, collate, fills, size)
    return [
        {"text": row["text"], "line": row.get("line"), "fills": f}
        for row, f in zip(rows, filled, strict=True)
    ]
