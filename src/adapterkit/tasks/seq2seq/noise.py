"""T5's span corruption: which tokens are noise, and the input and target it makes of a text.

`noise_mask` is T5's `random_spans_noise_mask` (Raffel et al., 2020, section 3.1.4; the
`t5.data.preprocessors` code): round(length x density) noise tokens (at least one, and at least
one token left), split into round(noise / mean span length) spans; the noise and the non-noise
tokens are each cut into that many non-empty segments uniformly at random, and the segments
alternate, non-noise first. The input keeps the non-noise tokens and puts one sentinel
(`<extra_id_0>`, `<extra_id_1>`, ...) where each noise span was; the target lists each sentinel
followed by the tokens it stands for. Both end with the end token.

Every draw comes from a `random.Random` the caller seeds (`rng_for`), so a corruption is a pure
function of its key and the tokens: the same on every machine and in a resumed run.
"""

from __future__ import annotations

import itertools
import random

__all__ = ["corrupt", "noise_mask", "rng_for", "segments"]


def rng_for(*key: object) -> random.Random:
    """A generator seeded by `key`, its parts joined as text (stable across runs and machines)."""
    return random.Random("/".join(str(k) for k in key))


def segments(items: int, count: int, rng: random.Random) -> list[int]:
    """`items` cut into `count` non-empty segments, uniformly at random: their lengths."""
    cuts = sorted(rng.sample(range(1, items), count - 1))
    bounds = [0, *cuts, items]
    return [b - a for a, b in itertools.pairwise(bounds)]


def noise_mask(
    length: int, density: float, mean_span: float, rng: random.Random, max_spans: int
) -> list[bool]:
    """Which of `length` tokens are noise (True), in spans of mean length `mean_span`, at most
    `max_spans` of them (the sentinels there are). `length` must be at least 2."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = max(round(noise / mean_span), 1)
    spans = min(spans, noise, length - noise, max_spans)
    mask: list[bool] = []
    for keep, drop in zip(
        segments(length - noise, spans, rng), segments(noise, spans, rng), strict=True
    ):
        mask += [False] * keep + [True] * drop
    return mask


def corrupt(
    tokens: list[int], mask: list[bool], sentinels: list[int], eos: int
) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of `tokens` with the noise spans `mask` marks replaced by
    `sentinels` in order: `a b <0> e <1> </s>` and `<0> c d <1> f </s>`."""
    inputs: list[int] = []
    target: list[int] = []
    span = -1
    for i, (token, noisy) in enumerate(zip(tokens, mask, strict=True)):
        if not noisy:
            inputs.append(token)
            continue
        if i == 0 or not mask[i - 1]:
            span += 1
            inputs.append(sentinels[span])
            target.append(sentinels[span])
        target.append(token)
    return [*inputs, eos], [*target, eos]
