"""Documents to fixed-size blocks of tokens, and blocks to batches with no padding.

Each document is tokenised without special tokens and ended with the end-of-document token; the
documents are concatenated into one stream, in file order, and cut into blocks of S = block_size
tokens. Block k is `stream[k(S-1) : k(S-1) + S]`: it starts with the last token of the block before
it, which is context only (a block's first position is never a target). So every token of the
stream but the very first is a target exactly once, whatever S is, and the eval's token count and
perplexity cover the whole file. What is left at the end is a shorter block, the remainder:
`remainder: keep` trains and evaluates it (when it holds a target), `drop` leaves it out.

A batch of full blocks is one [B, S] tensor with no padding. A batch holding the shorter remainder
is packed instead (`causal_lm.packing.pack`): one [1, T] row, position ids restarting at each block
and attention kept inside each block, so no padding is computed there either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError, RecipeError
from adapterkit.tasks.causal_lm import packing

if TYPE_CHECKING:
    import torch

    from adapterkit.tasks.text import Options


class Encoded(list):
    """The blocks `encode` returns: `.tokens` in the stream, `.dropped_tokens` left out."""

    documents: int = 0
    tokens: int = 0
    dropped_tokens: int = 0


def end_token_id(tokenizer: Any, options: Options) -> int:
    """The id of the token that ends each document: `options.end_token`, or the tokenizer's eos."""
    token = options.end_token or tokenizer.eos_token
    key = "task.options.end_token"
    if not token:
        problem = f"{key}: the tokenizer has no end-of-sequence token; name the one to use"
        raise RecipeError("task.options", [problem])
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        problem = f"{key}: {token!r} is not a token of the model's tokenizer"
        raise RecipeError("task.options", [problem])
    return int(tid)


def texts_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each row's `text`; a row without a string there (rows built in Python) is a DataError."""
    texts = []
    for i, row in enumerate(rows):
        text = row.get("text")
        if not isinstance(text, str):
            raise DataError(f"rows[{i}]: a row needs 'text', a string; got {row!r:.80}")
        texts.append(text)
    return texts


def token_stream(texts: Sequence[str], tokenizer: Any, end: int) -> list[int]:
    """The documents' tokens, each document followed by `end`, concatenated in order."""
    # verbose=False: a document longer than the model's positions is fine here (it is cut).
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    stream: list[int] = []
    for doc in ids:
        stream.extend(doc)
        stream.append(end)
    return stream


def cut(stream: Sequence[int], size: int, keep_remainder: bool) -> tuple[list[list[int]], int]:
    """(blocks, dropped): blocks of `size` tokens overlapping by one, and how many target tokens
    the dropped remainder held (0 when it is kept)."""
    step = size - 1
    blocks: list[list[int]] = []
    start = 0
    while start + size <= len(stream):
        blocks.append(list(stream[start : start + size]))
        start += step
    rest = len(stream) - start - 1  # targets left after the last full block
    if rest > 0 and keep_remainder:
        blocks.append(list(stream[start:]))
        rest = 0
    return blocks, max(rest, 0)


def encode(rows: Sequence[Mapping[str, Any]], tokenizer: Any, options: Options) -> Encoded:
    """The rows' documents as blocks `{"input_ids": [...]}` (every token is its own label)."""
    texts = texts_of(rows)
    stream = token_stream(texts, tokenizer, end_token_id(tokenizer, options))
    blocks, dropped = cut(stream, options.block_size, options.remainder == "keep")
    out = Encoded({"input_ids": b} for b in blocks)
    out.documents, out.tokens, out.dropped_tokens = len(texts), len(stream), dropped
    return out


def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Blocks of one length as a [B, S] batch; with a shorter one among them, packed [1, T]."""
    import torch

    if len({len(e["input_ids"]) for e in examples}) > 1:
        return packing.pack(
            [{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in examples]
        )
    ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
