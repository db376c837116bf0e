"""T5's span-corruption objective on unlabelled text, for encoder-decoder models (`noise`).

Data (`documents`): plain text or JSONL documents, cut into chunks of `max_length - 1` tokens.
Each chunk is corrupted when it is batched: spans of mean length `mean_noise_span_length` covering
`noise_density` of its tokens become sentinels in the encoder's input, and the decoder learns to
list them (T5: density 0.15, mean span 3). The corruption is a pure function of a key and the
chunk's index, never of hidden RNG state:
  - `collate` (evaluation, `adapterkit eval`, and training under a trainer that gives no epoch)
    keys each chunk by (`eval_seed`, its index): the same corruption in every evaluation of
    every run and strategy, so eval figures compare;
  - `collate_train(examples, ..., seed, epoch)` keys it by (the run's seed, the epoch, its index):
    a fresh corruption every epoch, reproduced exactly by a resumed run.

The loss is the summed cross entropy over the target tokens (sentinels, the spans, the end token);
eval reports `eval_loss`, `perplexity` and `accuracy` (the arg-max prediction of each target token,
teacher-forced). The model, its head and the decoder inputs are the seq2seq task's. Torch is
imported lazily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from adapterkit.errors import ModelError
from adapterkit.tasks import _batching
from adapterkit.tasks._loss import IGNORE, loss_figures, summed_cross_entropy
from adapterkit.tasks.seq2seq import documents, encoding, models, noise

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = ["Options", "SpanCorruption", "sentinel_ids"]

MAX_SENTINELS = 100  # T5's tokenizers have <extra_id_0> ... <extra_id_99>


@dataclass
class Options:
    max_length: Annotated[
        int, Field(ge=4, description="Tokens of text per example (a longer document is cut).")
    ] = 512
    noise_density: Annotated[
        float, Field(gt=0, lt=1, description="Share of each example's tokens that are noise.")
    ] = 0.15
    mean_noise_span_length: Annotated[
        float, Field(ge=1, description="Mean length of a noise span (T5: 3).")
    ] = 3.0
    format: Annotated[
        Literal["auto", "text", "jsonl"],
        Field(description="File format; auto: .jsonl/.json are JSONL, anything else plain text."),
    ] = "auto"
    documents: Annotated[
        Literal["paragraphs", "lines"],
        Field(description="In plain text, a document is a paragraph or each non-blank line."),
    ] = "paragraphs"
    text_field: Annotated[
        str, Field(min_length=1, description="The JSONL field holding a document's text.")
    ] = "text"
    eval_seed: Annotated[
        int, Field(description="Seed of the evaluation corruption (the same in every run).")
    ] = 0


def sentinel_ids(tokenizer: Any) -> list[int]:
    """The ids of `<extra_id_0>`, `<extra_id_1>`, ... the tokenizer has, in order."""
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    out = []
    for i in range(MAX_SENTINELS):
        token_id = vocab.get(f"<extra_id_{i}>")
        if token_id is None or token_id == unk:
            break
        out.append(int(token_id))
    return out


def _spec(tokenizer: Any) -> tuple[list[int], int]:
    sentinels = sentinel_ids(tokenizer)
    if not sentinels:
        raise ModelError(
            "span corruption needs a tokenizer with T5's sentinel tokens <extra_id_0>, "
            "<extra_id_1>, ... (T5, mT5); this one has none"
        )
    if tokenizer.eos_token_id is None:
        raise ModelError("span corruption needs a tokenizer with an end token (eos)")
    return sentinels, int(tokenizer.eos_token_id)


def corrupted_batch(
    examples: list[dict], tokenizer: Any, options: Options, key: tuple
) -> dict[str, torch.Tensor]:
    """Each chunk corrupted as keyed by (key, its index), right-padded like a seq2seq batch."""
    sentinels, eos = _spec(tokenizer)
    pairs = []
    for e in examples:
        tokens = list(e["input_ids"])
        rng = noise.rng_for(*key, e["index"])
        mask = noise.noise_mask(
            len(tokens), options.noise_density, options.mean_noise_span_length, rng, len(sentinels)
        )
        source, target = noise.corrupt(tokens, mask, sentinels, eos)
        pairs.append({"input_ids": source, "labels": target})
    return encoding.collate(pairs, tokenizer)


class SpanCorruption:
    name: ClassVar[str] = "span_corruption"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "T5's span corruption on unlabelled text for encoder-decoders: sentinels replace spans "
        "in the input, the decoder lists them (density 0.15, mean span 3)."
    )
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    # ---- model (the seq2seq task's) -------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        return models.meta_model(config)

    def model_parts_of(self, model: nn.Module) -> ModelParts:
        return models.parts_of(model)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        return models.model_parts(source)

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """The decoder's logits over the longest target: the noise tokens, a sentinel per span
        and the end token."""
        noise_tokens = math.ceil(length * options.noise_density)
        spans = math.ceil(noise_tokens / options.mean_noise_span_length)
        return encoding.logits_bytes(batch, noise_tokens + spans + 1, config)

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        model, tokenizer = models.load(source, load_kwargs)
        _spec(tokenizer)
        return model, tokenizer

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Documents {"text", "line", "where"}."""
        return documents.read_documents(
            Path(path), options.format, options.documents, options.text_field
        )

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        return options

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> list[dict]:
        """Chunks {"input_ids" (uncorrupted), "index", "line"} of at most max_length - 1 tokens."""
        return documents.chunks(rows, tokenizer, options.max_length)

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """The chunks with their evaluation corruption, keyed by (eval_seed, index)."""
        return corrupted_batch(examples, tokenizer, options, ("eval", options.eval_seed))

    def collate_train(
        self, examples: list[dict], tokenizer: Any, options: Options, seed: int, epoch: int
    ) -> dict[str, torch.Tensor]:
        """A training batch of epoch `epoch` of a run seeded `seed`: keyed by (seed, epoch, index)."""
        return corrupted_batch(examples, tokenizer, options, ("train", seed, epoch))

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        return encoding.targets(batch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return encoding.loss(model, batch)

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder logits at the target tokens, [targets, vocabulary] (`Task.logits`)."""
        return encoding.target_logits(model, batch)

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """eval_loss per target token, perplexity, and the teacher-forced token accuracy."""

        def one(batch: dict[str, torch.Tensor]) -> tuple[float, int, int]:
            logits = encoding.logits(model, batch)
            labels = batch["labels"].to(logits.device)
            hits = int(((logits.argmax(-1) == labels) & (labels != IGNORE)).sum())
            return float(summed_cross_entropy(logits, labels)), encoding.targets(batch), hits

        parts = _batching.map_batches(model, batches, one)
        count = sum(p[1] for p in parts)
        hits = sum(p[2] for p in parts) / count if count else float("nan")
        return loss_figures(sum(p[0] for p in parts), count, accuracy=hits)

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {"prompt_format": "span_corruption", "eos_token": tokenizer.eos_token}

    # ---- inference ------------------------------------------------------------------------------

    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str,
        options: Options,
        max_new_tokens: int = 32,
    ) -> str:
        """The spans the model fills in for the sentinels of `prompt` ("the <extra_id_0> is
        happy"), as `<extra_id_0> cat </s>`-style text, sentinels kept (greedy)."""
        from adapterkit.tasks.seq2seq import generation
        from adapterkit.tasks.seq2seq.options import Options as Seq2SeqOptions

        ids = encoding.token_ids(tokenizer, [prompt], options.max_length)[0]
        batch = encoding.collate([{"input_ids": ids}], tokenizer)
        kwargs = generation.generate_kwargs(model, tokenizer, Seq2SeqOptions(), max_new_tokens)
        with _batching.inference(model) as device:
            out = model.generate(**_batching.to_device(batch, device), **kwargs)  # type: ignore[operator]
        drop = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        return tokenizer.decode([t for t in out[0].tolist() if t not in drop]).strip()
