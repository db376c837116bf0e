"""How text is generated: greedy or seeded sampling, the settings `generate` and `predict` take.

`Settings` holds what a user chooses (`adapterkit generate` / `predict` flags, `api.generate`
keywords): `max_new_tokens`, `batch_size`, and `temperature` (0, the default: greedy, or the task's
own search such as beams), `top_p` and `seed` for sampling. A task that generates passes its own
search (stop tokens, padding, beams, decoder start) to `generate_kwargs`, which returns the
arguments of transformers' `model.generate`: a `GenerationConfig`, and when sampling, a logits
processor that draws the tokens.

Sampling is reproducible across batch sizes: every prompt draws from its own `torch.Generator`,
seeded from (`seed`, the prompt's index in the whole list), so a prompt's sample depends on the
seed, its index and its own logits, never on which prompts share its batch. transformers 5 cannot do
this by itself: its sampling step draws `torch.multinomial` over the whole batch from the global
RNG (no generator argument), so a seeded `do_sample=True` would repeat only for the same batches.
The processor therefore applies transformers' own `TemperatureLogitsWarper` and `TopPLogitsWarper`,
draws each row's token from its generator, and leaves only that token possible; the search itself
stays greedy (`do_sample=False`), which then takes it. Samples repeat on the same kind of device
(a CUDA generator draws other numbers than a CPU one). A model's own `generation_config` sampling
defaults (`top_k`, its temperature) are not applied: what the settings say is what is sampled.

Torch and transformers are imported inside the functions, so importing this module stays instant.
"""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from adapterkit.errors import UserError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_NEW_TOKENS = 128


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to generate and how; checked on creation (a UserError names the bad value)."""

    max_new_tokens: int | None = None  # None: the task's option `max_new_tokens`, else 128
    batch_size: int = 8  # prompts generated at once (left- or right-padded as the task needs)
    temperature: float = 0.0  # 0: greedy (the task's search); > 0: sampling at this temperature
    top_p: float = 1.0  # sampling: the smallest set of tokens with this much probability
    seed: int | None = None  # sampling: None draws a fresh seed (`resolved` says which)

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(
                f"temperature must be 0 (greedy) or above (sampling), got {self.temperature}"
            )
        if not (0.0 < self.top_p <= 1.0):  # also refuses NaN
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        elif self.top_p < 1.0 and self.temperature == 0:
            problems.append(
                f"top_p {self.top_p} samples, but temperature 0 is greedy: give a temperature "
                "above 0 (1 samples the model's own distribution)"
            )
        if problems:
            raise UserError("; ".join(problems))

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn (temperature > 0) rather than searched for."""
        return self.temperature > 0

    @property
    def chosen(self) -> bool:
        """Whether anything differs from the defaults (a task that does not generate refuses)."""
        return self != Settings(batch_size=self.batch_size)

    def resolved(self) -> Settings:
        """These settings with a seed: a fresh one when sampling without one (say it, to repeat)."""
        if self.sampling and self.seed is None:
            return dataclasses.replace(self, seed=secrets.randbelow(2**31))
        return self

    def new_tokens(self, options: Any) -> int:
        """`max_new_tokens`, else the task options' own, else 128."""
        if self.max_new_tokens is not None:
            return int(self.max_new_tokens)
        return int(getattr(options, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS)


def row_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`'s generator: a hash of both, so seeds 1 and 2 share no rows."""
    return random.Random(f"adapterkit:{seed}:{index}").getrandbits(63)


class RowSampler:
    """A transformers logits processor: temperature and top-p (transformers' own warpers), then
    one token drawn per row from that row's generator; the scores returned allow only it.

    `rows` are the indices (in the whole list of prompts) of the batch's rows, in order.
    """

    def __init__(self, settings: Settings, rows: Sequence[int]) -> None:
        if settings.seed is None:
            raise ValueError("RowSampler needs a seed (Settings.resolved() draws one)")
        self.settings = settings
        self.rows = list(rows)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        import torch
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        if scores.shape[0] != len(self.rows):
            raise ValueError(f"{scores.shape[0]} rows of scores for {len(self.rows)} prompts")
        if self.generators is None:
            seed = int(self.settings.seed or 0)
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(row_seed(seed, r))
                for r in self.rows
            ]
        scores = TemperatureLogitsWarper(self.settings.temperature)(input_ids, scores)
        if self.settings.top_p < 1.0:
            scores = TopPLogitsWarper(self.settings.top_p)(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        picks = torch.cat(
            [
                torch.multinomial(p, 1, generator=g)
                for p, g in zip(probs, self.generators, strict=True)
            ]
        )
        only = torch.full_like(scores, -math.inf)
        return only.scatter_(1, picks[:, None], 0.0)


def generate_kwargs(settings: Settings, rows: Sequence[int], search: dict[str, Any]) -> dict:
    """`model.generate` arguments for a batch of the prompts numbered `rows`.

    `search`: the task's `GenerationConfig` fields (max_new_tokens, num_beams, eos_token_id,
    pad_token_id, ...). Greedy settings keep them; sampling searches one beam (no length penalty)
    and adds the `RowSampler`. `settings.max_new_tokens`, when given, replaces the task's.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    fields = {**search, "do_sample": False}
    if settings.max_new_tokens is not None:
        fields["max_new_tokens"] = int(settings.max_new_tokens)
    kwargs: dict[str, Any] = {}
    if settings.sampling:
        fields["num_beams"] = 1
        fields.pop("length_penalty", None)
        kwargs["logits_processor"] = LogitsProcessorList([RowSampler(settings.resolved(), rows)])
    kwargs["generation_config"] = GenerationConfig(**fields)
    return kwargs


class Keywords(TypedDict, total=False):
    """The sampling keywords of `api.generate` (and `api.predict`): these `Settings` fields."""

    temperature: float
    top_p: float
    seed: int | None
