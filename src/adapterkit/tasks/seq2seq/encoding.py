"""Source/target pairs as token ids, batches, and the summed loss on the target tokens.

The source (with the task prefix) is the encoder's input, the tokenized target its labels, ended
by the tokenizer's own post-processing (T5: `</s>`; BART: `<s> ... </s>`); a tokenizer with
separate target vocabulary (Marian) tokenizes it as a target. The decoder reads the labels shifted
right behind the model's decoder start token, so position t predicts label t: every label is a
loss term (padding is IGNORE). Torch is imported inside the functions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError
from adapterkit.tasks import _batching
from adapterkit.tasks._loss import IGNORE, count_targets, summed_cross_entropy
from adapterkit.tasks.seq2seq.models import decoder_start

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

log = logging.getLogger("adapterkit")


class Encoded(list):
    """The list `encode` returns; how many sources and targets were cut to their lengths."""

    cut_sources: int = 0
    cut_targets: int = 0


def token_ids(tokenizer: Any, texts: list[str], max_length: int, target: bool = False) -> list:
    """Token ids of each text (special tokens added), cut to `max_length`."""
    if not texts:
        return []
    key = "text_target" if target else "text"
    enc = tokenizer(**{key: texts}, truncation=True, max_length=max_length)
    return [list(ids) for ids in enc["input_ids"]]


def _cut(tokenizer: Any, texts: list[str], ids: list[list[int]], limit: int, target: bool) -> int:
    """How many texts `max_length` cut (their full length is over `limit`)."""
    long = [i for i, row in enumerate(ids) if len(row) >= limit]
    if not long:
        return 0
    full = token_ids(tokenizer, [texts[i] for i in long], 10**9, target)
    return sum(len(row) > limit for row in full)


def encode_sources(
    tokenizer: Any, rows: list[dict[str, Any]], prefix: str, max_length: int
) -> tuple[list[list[int]], int]:
    """The encoder input of every row, and how many were cut."""
    texts = [prefix + str(row["source"]) for row in rows]
    ids = token_ids(tokenizer, texts, max_length)
    return ids, _cut(tokenizer, texts, ids, max_length, target=False)


def encode_pairs(
    rows: list[dict[str, Any]], tokenizer: Any, prefix: str, max_length: int, max_target: int
) -> Encoded:
    """{"input_ids", "labels", "references", "line"} per row; a row without a target is refused."""
    for i, row in enumerate(rows):
        if not row.get("references"):
            where = row.get("where", f"row {i}")
            raise DataError(
                f"{where}: no target; training and evaluation need one (a file without "
                "targets can only be predicted)"
            )
    sources, cut_sources = encode_sources(tokenizer, rows, prefix, max_length)
    targets = [str(row["references"][0]) for row in rows]
    labels = token_ids(tokenizer, targets, max_target, target=True)
    out = Encoded(
        {
            "input_ids": src,
            "labels": lab,
            "references": [str(r) for r in row["references"]],
            "line": int(row.get("line", i)),
        }
        for i, (row, src, lab) in enumerate(zip(rows, sources, labels, strict=True))
    )
    out.cut_sources = cut_sources
    out.cut_targets = _cut(tokenizer, targets, labels, max_target, target=True)
    if out.cut_sources or out.cut_targets:
        log.warning(
            "of %d rows, %d sources were cut to max_length=%d and %d targets to "
            "max_target_length=%d tokens; raise them to train on the whole texts",
            len(rows),
            out.cut_sources,
            max_length,
            out.cut_targets,
            max_target,
        )
    return out


def collate(examples: list[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Right-padded sources with their attention mask; labels right-padded with IGNORE (a batch
    to generate from may have none)."""
    batch = _batching.pad_batch(examples, tokenizer)
    if all("labels" in e for e in examples):
        batch["labels"] = _batching.pad([e["labels"] for e in examples], IGNORE)
    return batch


def decoder_inputs(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The labels shifted right behind the decoder start token, IGNORE read as padding."""
    start, pad = decoder_start(model)
    shifted = labels.new_full(labels.shape, pad)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill(shifted == IGNORE, pad)


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 decoder logits [rows, target tokens, vocabulary] (no key/value cache)."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_inputs(model, batch["labels"]),
        use_cache=False,
    )
    return out.logits.float()


def target_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 decoder logits at the target tokens only, [targets, vocabulary] (the rows a merged
    model's logits are compared on: `Task.logits`)."""
    out = logits(model, batch)
    return out[batch["labels"].to(out.device) != IGNORE]


def targets(batch: dict[str, torch.Tensor]) -> int:
    """Target tokens in the batch (every label but padding)."""
    return count_targets(batch["labels"])


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross entropy summed over the target tokens, in float32."""
    return summed_cross_entropy(logits(model, batch), batch["labels"])


def logits_bytes(batch: int, length: int, config: PretrainedConfig) -> int:
    """Three float32 copies of the decoder's [batch, length, vocabulary] logits (the logits, the
    float32 copy the loss reads, and its softmax for backward)."""
    return 3 * batch * length * int(getattr(config, "vocab_size", 0) or 0) * 4
