"""Batched generation for the causal LM task, and the metrics of what it generates.

Prompts are left-padded (the attention mask marks the padding; transformers derives the position ids
from it), decoded greedily (`num_beams` 1), with beam search or by seeded sampling
(`adapterkit.sampling`: each prompt draws from its own generator, so the batch size does not change
a sample), and stop at eos or the template's end-of-turn token. The reply is the new tokens up to that stop token, decoded without special tokens
and stripped, exactly as `CausalLM.generate` answers one prompt.

`generated_metrics` generates for the first `max_eval_generate` encoded eval examples (their prompt
is the part of `input_ids` before the first target) and scores the replies against each example's
`references` with `adapterkit.tasks._text_metrics`.

Torch is imported inside the functions, so importing this module stays instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from adapterkit.sampling import Settings
from adapterkit.tasks import _batching, _text_metrics
from adapterkit.tasks._loss import IGNORE
from adapterkit.tasks.causal_lm import chat
from adapterkit.tasks.causal_lm.chat import end_of_turn_ids

if TYPE_CHECKING:
    import torch
    from torch import nn


def prompt_of(example: dict[str, Any]) -> list[int]:
    """The prompt of an encoded example: its `input_ids` before the first target label."""
    labels = example["labels"]
    start = next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))
    return list(example["input_ids"][:start])


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """[B, W] input_ids with each prompt on the right, and its attention mask."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return ids[:end]


def search_of(tokenizer: Any, options: Any, beams: int) -> dict[str, Any]:
    """The `GenerationConfig` fields of the task's search: `options.max_new_tokens`, `beams`
    beams, stopping at eos or an end-of-turn token, padding with the pad token (else the stop)."""
    stops = end_of_turn_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return {
        "max_new_tokens": int(options.max_new_tokens),
        "num_beams": int(beams),
        "eos_token_id": stops,
        "pad_token_id": int(pad_id),
    }


def generate_ids(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: Settings,
    search: dict[str, Any],
) -> list[list[int]]:
    """The generated token ids after each prompt, up to (without) the first stop token
    (`search["eos_token_id"]`), in order.

    `settings.batch_size` prompts at a time, left-padded with `search["pad_token_id"]`, in eval
    mode without gradients (`_batching.inference`); greedy (`search`'s beams) or sampled, each
    prompt from its own generator keyed by its index in `prompts` (`sampling.generate_kwargs`).
    """
    from adapterkit import sampling

    settings = settings.resolved()  # one seed for every batch
    stops = set(search["eos_token_id"])
    size = settings.batch_size
    out: list[list[int]] = []
    with _batching.inference(model) as device:
        for i in range(0, len(prompts), size):
            chunk = prompts[i : i + size]
            ids, mask = _left_padded(chunk, search["pad_token_id"])
            generated = cast(Any, model).generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                **sampling.generate_kwargs(settings, range(i, i + len(chunk)), search),
            )
            for row in generated[:, ids.shape[1] :].tolist():
                out.append(_until_stop(row, stops))
    return out


def generate_replies(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    options: Any,
    settings: Settings,
    beams: int = 1,
) -> list[str]:
    """The decoded reply to each prompt (special tokens skipped, whitespace stripped), as
    `settings` say; greedy settings search with `beams` beams."""
    search = search_of(tokenizer, options, beams)
    return [
        tokenizer.decode(ids, skip_special_tokens=True).strip()
        for ids in generate_ids(model, prompts, settings, search)
    ]


def new_tokens(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    options: Any,
    batch_size: int,
) -> list[list[int]]:
    """The generated token ids after each prompt, up to (without) the first stop token.

    Uses `options.max_new_tokens` and `options.num_beams`, `batch_size` prompts at a time
    (`generate_ids` with greedy settings).
    """
    settings = Settings(batch_size=max(1, int(batch_size)))
    return generate_ids(model, prompts, settings, search_of(tokenizer, options, options.num_beams))


def replies(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    options: Any,
    batch_size: int,
) -> list[str]:
    """The decoded reply to each prompt (special tokens skipped, whitespace stripped): greedy,
    or `options.num_beams` beams."""
    settings = Settings(batch_size=max(1, int(batch_size)))
    return generate_replies(model, tokenizer, prompts, options, settings, options.num_beams)


def row_predictions(
    model: nn.Module,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    messages: list[chat.Messages],
    options: Any,
    settings: Settings,
) -> list[dict[str, Any]]:
    """`CausalLM.generate_rows`: per row (with its `messages`, the system prompt added), its line,
    its last user turn as "prompt", the reply as "prediction" (greedy with `options.num_beams`, or
    sampled) and its "references" where it has any."""
    parts = [chat.prompt_and_references(r, m) for r, m in zip(rows, messages, strict=True)]
    prompts = [chat.token_ids(tokenizer, chat.chat_text(tokenizer, t, True)) for t, _ in parts]
    texts = generate_replies(model, tokenizer, prompts, options, settings, options.num_beams)
    out = []
    for row, (turns, refs), text in zip(rows, parts, texts, strict=True):
        user = next(t["content"] for t in reversed(turns) if t["role"] == "user")
        item = {"line": row.get("line"), "prompt": user, "prediction": text}
        out.append({**item, "references": refs} if refs else item)
    return out


def references_of(example: dict[str, Any], tokenizer: Any) -> list[str]:
    """The example's `references`, or else its decoded target tokens (without end-of-turn)."""
    refs = example.get("references")
    if refs:
        return list(refs)
    stops = set(end_of_turn_ids(tokenizer))
    targets = [t for t in example["labels"] if t != IGNORE and t not in stops]
    return [tokenizer.decode(targets, skip_special_tokens=True).strip()]


def generated_metrics(
    model: nn.Module, tokenizer: Any, examples: list[dict[str, Any]], options: Any
) -> dict[str, Any]:
    """`options.metrics` of the replies to the first `options.max_eval_generate` examples.

    Adds `generated_rows` (how many were generated); {} without metrics or rows.
    """
    names = _text_metrics.check_names(list(options.metrics or []))
    chosen = examples[: int(options.max_eval_generate)]
    if not names or not chosen:
        return {}
    prompts = [prompt_of(e) for e in chosen]
    texts = replies(model, tokenizer, prompts, options, options.generate_batch_size)
    refs = [references_of(e, tokenizer) for e in chosen]
    return {**_text_metrics.score(names, texts, refs), "generated_rows": len(chosen)}
