"""Generating with an encoder-decoder: greedy or beam search, decoded text, and its metrics.

One path for the eval metrics (`generated_metrics`), `predict` and `generate` (`texts_for`): the
encoded sources go through `model.generate` in batches (right-padded, with their attention mask),
with the task's `num_beams`, `max_new_tokens` and `length_penalty`, or sampled as
`adapterkit.sampling.Settings` say, and the new tokens are decoded without special tokens. Each row's output depends only on its own source (the encoder masks the padding, the
decoder is causal), so the batch size does not change what is generated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from adapterkit import sampling
from adapterkit.errors import DataError
from adapterkit.sampling import Settings
from adapterkit.tasks import _batching, _text_metrics
from adapterkit.tasks.seq2seq.models import decoder_start

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.tasks.seq2seq.options import Options

    Batch = dict[str, torch.Tensor]

GENERATE_BATCH = 16
"""Rows generated at a time for the eval metrics (the eval batch size does not reach here)."""


def generate_kwargs(
    model: nn.Module, tokenizer: Any, options: Options, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """`model.generate` arguments: deterministic search as the options say, the model's own
    decoder start, the tokenizer's end token."""
    start, pad = decoder_start(model)
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(max_new_tokens or options.max_new_tokens),
        "num_beams": options.num_beams,
        "do_sample": False,
        "decoder_start_token_id": start,
        "pad_token_id": pad,
        "eos_token_id": eos,
    }
    if options.num_beams > 1:  # transformers warns about a length penalty without beams
        kwargs["length_penalty"] = options.length_penalty
    return kwargs


def generate_texts(model: nn.Module, tokenizer: Any, batch: Batch, kwargs: dict[str, Any]) -> list:
    """The decoded output of each row of `batch` (on the model's device, under `inference`)."""
    out = cast(Any, model).generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
    )
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [t.strip() for t in texts]


def for_examples(
    model: nn.Module,
    tokenizer: Any,
    examples: list[dict],
    collate: Callable[[list[dict]], Batch],
    options: Options,
    batch_size: int = GENERATE_BATCH,
    max_new_tokens: int | None = None,
) -> list[str]:
    """The generated text of every example (its `input_ids`), in order: the options' search."""
    settings = Settings(max_new_tokens=max_new_tokens, batch_size=max(1, int(batch_size)))
    return texts_for(model, tokenizer, examples, collate, options, settings)


def texts_for(
    model: nn.Module,
    tokenizer: Any,
    examples: list[dict],
    collate: Callable[[list[dict]], Batch],
    options: Options,
    settings: Settings,
) -> list[str]:
    """The generated text of every example, in order, as `settings` say: greedy settings search
    as the options do (`num_beams`, `length_penalty`), sampling draws each row from its own
    generator keyed by its index in `examples` (`adapterkit.sampling`)."""
    settings = settings.resolved()  # one seed for every batch
    search = generate_kwargs(model, tokenizer, options)
    size = settings.batch_size
    out: list[str] = []
    with _batching.inference(model) as device:
        for i in range(0, len(examples), size):
            chunk = examples[i : i + size]
            batch = _batching.to_device(collate(chunk), device)
            kwargs = sampling.generate_kwargs(settings, range(i, i + len(chunk)), search)
            out.extend(generate_texts(model, tokenizer, batch, kwargs))
    return out


def generated_metrics(
    model: nn.Module,
    tokenizer: Any,
    examples: list[dict],
    collate: Callable[[list[dict]], Batch],
    options: Options,
) -> dict[str, Any]:
    """`options.metrics` on the first `max_eval_generate` examples' outputs against their whole
    references; {} when either is empty. `generated_rows` says how many rows were scored."""
    chosen = examples[: options.max_eval_generate]
    if not options.metrics or not chosen:
        return {}
    references = []
    for e in chosen:
        if not e.get("references"):
            raise DataError(
                f"line {e.get('line')} of the eval data has no target; the generation metrics "
                "need a reference for every row"
            )
        references.append(list(e["references"]))
    predictions = for_examples(model, tokenizer, chosen, collate, options)
    scores = _text_metrics.score(list(options.metrics), predictions, references)
    return {**scores, "generated_rows": len(chosen)}
