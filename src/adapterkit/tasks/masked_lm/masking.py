"""Which tokens of an example are masked, and what they become: tokens, whole words or spans.

The budget of an example is `round(probability x maskable tokens)`, at least 1; special tokens
([CLS], [SEP], [PAD], [UNK], [MASK], ...) are never maskable.

    token       `budget` tokens drawn uniformly without replacement (BERT, Devlin et al. 2019);
                each becomes [MASK] (80%), a random token (10%) or stays (10%), token by token.
    whole_word  whole words (all their sub-tokens, from the tokenizer's word ids) drawn in random
                order and kept while they fit the budget (BERT's whole word masking); 80/10/10 per
                token as above.
    span        spans of whole words with geometric lengths, Geo(span_p) clipped at `max_span`
                words, each starting at a uniformly drawn word (SpanBERT, Joshi et al. 2020), until
                the budget is spent; a span is cut short to fit it, never overlaps or touches
                another span (so each masked run is one span) and never crosses a non-maskable
                token. 80/10/10 per span: all its tokens become [MASK], or random tokens, or stay.

Whole words and spans never exceed the budget, except that an example always has one masked word
(a word longer than the budget is then masked whole). Every draw comes from the `random.Random`
`rng_for(...)` builds from a key, so a mask is a pure function of its key and the example's tokens:
no RNG state outside the key is read, written or needs saving. Pure Python, no torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapterkit.tasks._loss import IGNORE

MODES = ("token", "whole_word", "span")
MASK, RANDOM, KEEP = "mask", "random", "keep"
SPAN_ATTEMPTS_PER_WORD = 10
"""Span starts tried per word of the example before the span mode stops short of its budget."""


@dataclass(frozen=True)
class MaskSpec:
    """How to mask: the mode and its numbers, and the tokenizer's mask token and vocabulary."""

    mode: str
    probability: float
    mask_id: int
    vocab_size: int  # random replacements are drawn from the non-special ids below it
    special: frozenset[int]
    span_p: float = 0.2
    max_span: int = 10

    @classmethod
    def of(cls, options: Any, tokenizer: Any) -> MaskSpec:
        """The spec for a task's options (`masking`, `mlm_probability`, `span_p`, `max_span`)."""
        return cls(
            mode=options.masking,
            probability=options.mlm_probability,
            mask_id=int(tokenizer.mask_token_id),
            vocab_size=len(tokenizer),
            special=frozenset(int(i) for i in tokenizer.all_special_ids),
            span_p=options.span_p,
            max_span=options.max_span,
        )


def rng_for(*key: object) -> random.Random:
    """A generator seeded by `key` (its parts joined as text: stable across runs and machines)."""
    return random.Random(":".join(str(part) for part in key))


def budget(maskable: int, probability: float) -> int:
    """Tokens to mask among `maskable` ones: round(probability x maskable), at least 1 (0 of 0)."""
    return max(1, round(probability * maskable)) if maskable else 0


def words_of(
    ids: Sequence[int], word_ids: Sequence[int], special: frozenset[int]
) -> list[list[int]]:
    """The maskable positions grouped into words, in order: a word is a run of consecutive
    positions with the same word id (-1: none, each such token is a word of its own)."""
    words: list[list[int]] = []
    for pos, (token, word) in enumerate(zip(ids, word_ids, strict=True)):
        if token in special:
            continue
        prev = words[-1][-1] if words else -2
        if word >= 0 and prev == pos - 1 and word_ids[prev] == word:
            words[-1].append(pos)
        else:
            words.append([pos])
    return words


def geometric(p: float, rng: random.Random) -> int:
    """A draw of Geo(p) on 1, 2, 3, ... (the number of trials up to the first success)."""
    u = 1.0 - rng.random()  # in (0, 1]
    return 1 + int(math.log(u) / math.log1p(-p)) if p < 1 else 1


def choose_words(words: list[list[int]], limit: int, rng: random.Random) -> list[list[int]]:
    """Whole words in random order, each kept while the total stays within `limit` tokens."""
    order = list(range(len(words)))
    rng.shuffle(order)
    chosen, total = [], 0
    for w in order:
        if total + len(words[w]) <= limit:
            chosen.append(words[w])
            total += len(words[w])
        if total == limit:
            break
    if not chosen and words:  # every word is longer than the budget: one of them, whole
        chosen = [words[order[0]]]
    return chosen


def _span_at(
    words: list[list[int]], start: int, length: int, taken: set[int], room: int
) -> list[int]:
    """Word indices of a span of up to `length` words from `start`: contiguous positions, within
    `room` tokens, touching no `taken` word; [] when its first word cannot be used."""
    if {start - 1, start} & taken:
        return []
    span: list[int] = []
    used = 0
    for w in range(start, min(start + length, len(words))):
        contiguous = not span or words[w][0] == words[span[-1]][-1] + 1
        if not contiguous or w in taken or w + 1 in taken or used + len(words[w]) > room:
            break
        span.append(w)
        used += len(words[w])
    return span


def choose_spans(
    words: list[list[int]], limit: int, spec: MaskSpec, rng: random.Random
) -> list[list[int]]:
    """Spans of whole words (geometric lengths, clipped) until `limit` tokens are masked."""
    taken: set[int] = set()
    spans: list[list[int]] = []
    room = limit
    for _ in range(SPAN_ATTEMPTS_PER_WORD * len(words)):
        if room <= 0:
            break
        length = min(geometric(spec.span_p, rng), spec.max_span)
        span = _span_at(words, rng.randrange(len(words)), length, taken, room)
        if span:
            taken.update(span)
            spans.append([pos for w in span for pos in words[w]])
            room -= len(spans[-1])
    if not spans and words:  # no span fitted: one word, whole
        spans = [words[rng.randrange(len(words))]]
    return spans


def _action(rng: random.Random) -> str:
    draw = rng.random()
    return MASK if draw < 0.8 else RANDOM if draw < 0.9 else KEEP


def _random_token(spec: MaskSpec, rng: random.Random) -> int:
    while True:
        token = rng.randrange(spec.vocab_size)
        if token not in spec.special:
            return token


def choose(
    ids: Sequence[int], word_ids: Sequence[int], spec: MaskSpec, rng: random.Random
) -> list[list[int]]:
    """The groups of positions to mask (one token, word or span each), in position order."""
    words = words_of(ids, word_ids, spec.special)
    limit = budget(sum(len(w) for w in words), spec.probability)
    if spec.mode == "token":
        flat = [pos for w in words for pos in w]
        groups = [[pos] for pos in rng.sample(flat, limit)]
    elif spec.mode == "whole_word":
        groups = choose_words(words, limit, rng)
    else:
        groups = choose_spans(words, limit, spec, rng)
    return sorted(groups)


def mask_example(
    ids: Sequence[int], word_ids: Sequence[int], spec: MaskSpec, rng: random.Random
) -> tuple[list[int], list[int]]:
    """(input_ids, labels): the masked input, and the original token at each masked position
    (IGNORE elsewhere)."""
    inputs, labels = list(ids), [IGNORE] * len(ids)
    for group in choose(ids, word_ids, spec, rng):
        shared = _action(rng) if spec.mode == "span" else None  # a span is replaced as a whole
        for pos in group:
            action = shared or _action(rng)
            labels[pos] = ids[pos]
            if action == MASK:
                inputs[pos] = spec.mask_id
            elif action == RANDOM:
                inputs[pos] = _random_token(spec, rng)
    return inputs, labels
