"""Reading a written GGUF file back with an independent reader and comparing it with its source.

The reader is transformers' own GGUF loader (`from_pretrained(dir, gguf_file=name)`, which
de-quantizes every tensor and undoes llama.cpp's Q/K permutation) and its GGUF tokenizer builder:
code adapterkit did not write. Four things are compared, on held-out token rows (the caller's)
plus `sample_texts` (plain text, digits, code, special tokens, a chat rendered with the template):

- logits against the source: the largest absolute difference and the mean KL(source || GGUF) per
  token (float64 from float32 forward passes), within the type's `TOLERANCES`;
- logits against the source rounded to the type in memory (`rounded_copy`): within float32 noise
  (`CONTENT_MAX_ABS`). This separates what the type costs from what an export got wrong: a lost
  adapter layer, a wrong permutation or a missing head shows here even when it would hide inside
  the bf16/q8_0 tolerance;
- token ids: every sample text encodes to the same ids;
- the chat template string, and the bos/eos/pad tokens.

The tolerances were set from the measured error of a LoRA adapter merged into the embedded
SmolLM2-135M (logits up to about 30 in magnitude; benchmarks/export_gguf.py), with a margin of
about 4x on max |diff| and 5x or more on KL: f16 ~0.06 / 2e-6, bf16 ~2.3 / 2e-3, q8_0 ~1.4 / 2e-3
(the GGUF-derived base alone rounds better in bf16, ~0.3 / 1e-4, its weights lying on a 4-bit grid).
For scale: that adapter moves the base's logits by KL 0.09.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapterkit.errors import GGUFError


@dataclass(frozen=True)
class Tolerance:
    """The most a GGUF of one type may differ from its source on held-out rows."""

    max_abs: float  # largest |logit difference| over every row, position and vocabulary entry
    mean_kl: float  # mean KL(source || GGUF) per token, in nats


TOLERANCES: dict[str, Tolerance] = {
    "f16": Tolerance(max_abs=0.5, mean_kl=1e-4),
    "bf16": Tolerance(max_abs=8.0, mean_kl=1e-2),
    "q8_0": Tolerance(max_abs=8.0, mean_kl=1e-2),
}

CONTENT_MAX_ABS = 1e-3
"""The most the file's logits may differ from `rounded_copy`'s (the source rounded to the type in
memory): float32 arithmetic noise, nothing more."""

SAMPLE_TEXTS: tuple[str, ...] = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers: 3 33 333 3333 3.14159 and 1,000,000 - dates like 2024-05-17.",
    "def add(a, b):\n    return a + b  # sums two numbers\n\n\tindented\tline",
    "Unicode: café, naïve, Ünïcödé, 日本語, emoji 🦙🚀, and “quotes”.",
    "  leading spaces, trailing spaces   \n\n\nnew lines",
)
CHAT = (
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Name three colours."},
    {"role": "assistant", "content": "Red, green and blue."},
    {"role": "user", "content": "And two animals?"},
)


def sample_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizers are compared on: `SAMPLE_TEXTS`, each special token between words,
    and (with a chat template) a conversation rendered with and without the generation prompt."""
    texts: list[str] = list(SAMPLE_TEXTS)
    specials = [t for t in tokenizer.all_special_tokens if t]
    if specials:
        texts.append("start " + " middle ".join(specials) + " end")
    if getattr(tokenizer, "chat_template", None):
        for gen in (True, False):
            messages = list(CHAT) if gen else list(CHAT[1:3])
            texts.append(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            )
    return texts


def token_rows(tokenizer: Any, texts: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """Token id rows for the logit comparison (special tokens added as the tokenizer adds them)."""
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    return [r for r in rows if r]


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """While transformers reads the file back: no progress bars or info logs, and gguf's
    `get_tensor_name_map` memoised. transformers builds that (pure, read-only) name table once per
    submodule, about 400 times for SmolLM2, which was a quarter of the read; the answers are the
    same, only computed once."""
    import functools

    import gguf
    from transformers.utils import logging as hf_logging

    level, name_map = hf_logging.get_verbosity(), gguf.get_tensor_name_map
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = name_map
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(level)


def read_back(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from the GGUF file through transformers' loader, in float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        with _reading():
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise GGUFError(f"{path}: transformers cannot read the written file back: {exc}") from exc
    return model.eval(), tokenizer


def rounded_copy(model: Any, type: str) -> Any:
    """A copy of `model` holding what the file should: every weight the writer stores as `type`
    (each with 2 or more dimensions; 1-D tensors stay float32) quantized to it and back with
    gguf.quants, q8_0 falling back to f16 as in the writer. Reading the file back must give this
    model's logits; what remains against the source is the type's own rounding. (llama.cpp's Q/K
    permutation moves whole rows, so it does not change how a row rounds.)"""
    import copy

    import gguf
    import torch

    kinds = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
    reference = copy.deepcopy(model).float()
    with torch.no_grad():
        for param in reference.parameters():  # a tied weight is listed once
            if param.ndim < 2:
                continue
            array = param.detach().cpu().numpy()
            kind = gguf.GGMLQuantizationType[kinds[type]]
            try:
                data = gguf.quants.quantize(array, kind)
            except gguf.QuantError:
                kind = gguf.GGMLQuantizationType.F16
                data = gguf.quants.quantize(array, kind)
            back = gguf.quants.dequantize(data, kind).reshape(array.shape)
            param.copy_(torch.from_numpy(back))
    return reference.eval()


def compare_logits(source: Any, other: Any, rows: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Largest |logit difference| and mean KL(source || other) per token over `rows`."""
    import torch

    max_abs, kl_sum, tokens = 0.0, 0.0, 0
    device = next(source.parameters()).device
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([list(row)], device=device)
            a = source(input_ids=ids).logits[0].double().cpu()
            b = other(input_ids=ids.cpu()).logits[0].double()
            max_abs = max(max_abs, (a - b).abs().max().item())
            log_a, log_b = a.log_softmax(-1), b.log_softmax(-1)
            kl_sum += (log_a.exp() * (log_a - log_b)).sum().item()
            tokens += len(row)
    return {
        "rows": len(rows),
        "tokens": tokens,
        "max_abs_logit_diff": max_abs,
        "mean_kl": max(kl_sum / max(tokens, 1), 0.0),
    }


def compare_tokenizers(source: Any, other: Any, texts: Sequence[str]) -> dict[str, Any]:
    """Whether `other` encodes every text to the same ids, keeps the chat template and the
    special tokens; the first differing texts are listed."""
    differing = [
        t
        for t in texts
        if source(t, add_special_tokens=True)["input_ids"]
        != other(t, add_special_tokens=True)["input_ids"]
    ]
    specials = {
        name: [getattr(source, name, None), getattr(other, name, None)]
        for name in ("bos_token", "eos_token", "pad_token")
    }
    return {
        "texts": len(texts),
        "ids_equal": not differing,
        "differing_texts": differing[:3],
        "chat_template_kept": getattr(source, "chat_template", None)
        == getattr(other, "chat_template", None),
        "special_tokens_kept": all(a == b for a, b in specials.values()),
        "special_tokens": specials,
    }


def verify_gguf(
    path: Path, model: Any, tokenizer: Any, type: str, rows: Sequence[Sequence[int]] = ()
) -> dict[str, Any]:
    """Read `path` back and compare it with `model` and `tokenizer`; the report (`passed` says
    whether logits are within `TOLERANCES[type]` of the source and within `CONTENT_MAX_ABS` of the
    source rounded to `type`, and the tokenizer and chat template are kept). The logits are
    compared on `rows` (held-out token ids) and on `sample_texts(tokenizer)`."""
    import transformers

    texts = sample_texts(tokenizer)
    back_model, back_tokenizer = read_back(path)
    all_rows = [list(r) for r in rows] + token_rows(tokenizer, texts)
    logits = compare_logits(model.eval(), back_model, all_rows)
    logits["held_out_rows"] = len(rows)
    content = compare_logits(rounded_copy(model, type), back_model, all_rows)
    content["limit"] = CONTENT_MAX_ABS
    content["matches"] = content["max_abs_logit_diff"] <= CONTENT_MAX_ABS
    tokens = compare_tokenizers(tokenizer, back_tokenizer, texts)
    tolerance = TOLERANCES[type]
    within = (
        logits["max_abs_logit_diff"] <= tolerance.max_abs and logits["mean_kl"] <= tolerance.mean_kl
    )
    return {
        "reader": f"transformers {transformers.__version__} GGUF loader (from_pretrained gguf_file)",
        "type": type,
        "logits": logits,
        "tolerance": asdict(tolerance),
        "logits_within_tolerance": within,
        "content": content,
        "tokenizer": tokens,
        "passed": within
        and content["matches"]
        and tokens["ids_equal"]
        and tokens["chat_template_kept"]
        and tokens["special_tokens_kept"],
    }


def failure_message(path: Path, report: dict[str, Any]) -> str:
    """Why a report did not pass, with the figures, for a GGUFError."""
    logits, tol, tok = report["logits"], report["tolerance"], report["tokenizer"]
    reasons = []
    if not report["logits_within_tolerance"]:
        reasons.append(
            f"logits differ beyond the {report['type']} tolerance: max |diff| "
            f"{logits['max_abs_logit_diff']:.4g} (limit {tol['max_abs']:g}), mean KL "
            f"{logits['mean_kl']:.3g} (limit {tol['mean_kl']:g}) over {logits['tokens']} tokens"
        )
    if not report["content"]["matches"]:
        reasons.append(
            f"the file does not hold the source's weights rounded to {report['type']}: max "
            f"|diff| {report['content']['max_abs_logit_diff']:.4g} against the rounded source "
            f"(limit {report['content']['limit']:g})"
        )
    if not tok["ids_equal"]:
        reasons.append(f"token ids differ, e.g. for {tok['differing_texts'][0]!r}")
    if not tok["chat_template_kept"]:
        reasons.append("the chat template read back differs")
    if not tok["special_tokens_kept"]:
        reasons.append(f"special tokens differ: {tok['special_tokens']}")
    return (
        f"{path}: the GGUF read back does not match its source: {'; '.join(reasons)}. "
        "Nothing was written; pass --force to keep the file anyway."
    )
