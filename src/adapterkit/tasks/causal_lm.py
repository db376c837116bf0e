"""Instruction tuning of a causal language model with its own chat template.

Data: JSONL, one example a line, either

    {"instruction": "...", "input": "... (optional)", "output": "..."}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}  # last: assistant

Each row is rendered with the tokenizer's chat template, exactly as `generate` renders a prompt.
Only the final assistant turn's content and its end-of-turn token are trained on; the system
prompt, the user turn, the assistant header and anything the template adds after the end-of-turn
token (ChatML's trailing newline) are masked with -100.

Torch and transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from adapterkit.errors import DataError, ModelError
from adapterkit.strategy import ModelParts
from adapterkit.tasks._common import (
    IGNORE,
    count_targets,
    inference,
    read_text,
    summed_cross_entropy,
    to_device,
)
from adapterkit.tasks._common import line_error as _fail

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.storage.sources import ModelSource

log = logging.getLogger("adapterkit")

# End-of-turn tokens of common chat templates; used together with the tokenizer's eos token, so a
# template whose turns end with something other than eos (Llama 3's <|eot_id|>) is handled too.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_ROLES = ("system", "user", "assistant")


@dataclass
class Options:
    max_length: Annotated[
        int,
        Field(ge=8, description="Tokens per example (prompt + response); longer ones are cut."),
    ] = 512
    system_prompt: Annotated[
        str | None,
        Field(description="System message for every example; None keeps the template's default."),
    ] = None


class Encoded(list):
    """The list `encode` returns; `.dropped` counts rows left with no response token to train."""

    dropped: int = 0


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that can end an assistant turn: eos first, then known end-of-turn specials."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in _END_OF_TURN:
        tid = vocab.get(tok)
        if tid is not None and tid not in ids:
            ids.append(int(tid))
    return ids


def _check_text(row: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    if key not in row:
        if not required:
            return ""
        raise _fail(
            path,
            lineno,
            f'missing field "{key}"; each line needs "instruction" and '
            '"output" (plus optional "input"), or "messages"',
        )
    value = row[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _fail(path, lineno, f'"{key}" must be a string, got {type(value).__name__}')
    return value


def _row_messages(row: dict, path: Path, lineno: int) -> list[dict[str, str]]:
    """Validate one row and return it as chat messages (without a system prompt option)."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _fail(path, lineno, '"messages" must be a non-empty list of {role, content}')
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise _fail(
                    path, lineno, f'messages[{i}] must be an object with a string "content"'
                )
            if m.get("role") not in _ROLES:
                raise _fail(
                    path,
                    lineno,
                    f"messages[{i}].role must be one of {', '.join(_ROLES)}, got {m.get('role')!r}",
                )
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "assistant":
            raise _fail(
                path, lineno, "the last message must be the assistant's (the response to train on)"
            )
        if not any(m["role"] == "user" for m in out[:-1]):
            raise _fail(path, lineno, "messages need a user turn before the last assistant turn")
        return out
    instruction = _check_text(row, "instruction", path, lineno)
    extra = _check_text(row, "input", path, lineno, required=False)
    output = _check_text(row, "output", path, lineno)
    user = instruction + ("\n\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


class CausalLM:
    name: ClassVar[str] = "causal_lm"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Instruction tuning of a causal LM with its chat template; loss on the response only."
    )
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    # ---- model ----------------------------------------------------------------------------------

    def model_parts(self, source: ModelSource, options: Any) -> ModelParts:
        """The output-embeddings module's name, found on a weightless (meta device) model."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(source.path, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{source.path}: not a loadable model config ({exc})") from exc
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        head = model.get_output_embeddings()
        for name, module in model.named_modules():
            if module is head and name:
                return ModelParts(head=(name,), new_head=False)
        raise ModelError(f"{type(model).__name__} has no output embeddings to call its LM head")

    def load_model(
        self, source: ModelSource, options: Any, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"dtype": torch.float32, **load_kwargs}
        try:
            model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source.path)
        except OSError as exc:
            raise ModelError(f"{source.path}: cannot load a causal LM from it ({exc})") from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Any) -> list[dict[str, Any]]:
        """Rows as chat messages: [{"messages": [...]}, ...]; errors name the file and line."""
        path = Path(path)
        text = read_text(path, "a JSONL file")
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _fail(
                    path,
                    lineno,
                    f"invalid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object",
                ) from None
            if not isinstance(row, dict):
                raise _fail(path, lineno, f"expected a JSON object, got {type(row).__name__}")
            rows.append({"messages": _row_messages(row, path, lineno)})
        if not rows:
            raise DataError(
                f"{path}: no examples (the file is empty); write one JSON object a line"
            )
        return rows

    def _messages(self, row: dict[str, Any], options: Any, index: int = 0) -> list[dict[str, str]]:
        # Rows from `read` are already messages; rows built in Python are checked here.
        msgs = row["messages"] if "messages" in row else _row_messages(row, Path("rows"), index)
        if options.system_prompt is not None and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": options.system_prompt}, *msgs]
        return msgs

    def _text(self, tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
        if not tokenizer.chat_template:
            raise ModelError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                "use an instruct/chat model or set tokenizer.chat_template"
            )
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    def _ids(self, tokenizer: Any, text: str) -> list[int]:
        # The template writes the special tokens itself; adding them again would double BOS.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> list[int]:
        return self._ids(tokenizer, self._text(tokenizer, messages, prompt))

    def _prompt_and_full(self, tokenizer: Any, msgs: list[dict[str, str]], i: int) -> tuple:
        """Token ids of the generation prompt and of the whole conversation, the first a prefix."""
        prompt_text = self._text(tokenizer, msgs[:-1], prompt=True)
        full_text = self._text(tokenizer, msgs, prompt=False)
        if not full_text.startswith(prompt_text):
            raise ModelError(
                f"row {i}: the chat template's generation prompt is not the start of the rendered "
                "conversation, so the response cannot be located; use a template whose generation "
                "prompt is a prefix of the conversation"
            )
        prompt, full = self._ids(tokenizer, prompt_text), self._ids(tokenizer, full_text)
        if full[: len(prompt)] != prompt:
            # A merge across the boundary (e.g. a response starting with whitespace): tokenize the
            # two parts apart, which is also exactly what the model sees when it generates.
            full = prompt + self._ids(tokenizer, full_text[len(prompt_text) :])
        return prompt, full

    def setup(self, rows: list[dict[str, Any]], options: Any) -> Any:
        return options  # nothing is derived from the data

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Any) -> Encoded:
        """Tokenize rows into {"input_ids", "labels"}; returns an `Encoded` list with `.dropped`."""
        eot = set(end_of_turn_ids(tokenizer))
        out = Encoded()
        for i, row in enumerate(rows):
            msgs = self._messages(row, options, i)
            prompt, full = self._prompt_and_full(tokenizer, msgs, i)
            # The response ends at the first end-of-turn token after the prompt; what follows
            # (a newline the template adds) is not something the model should learn to emit.
            end = next((j for j in range(len(prompt), len(full)) if full[j] in eot), None)
            if end is None:  # a template that does not close the turn: teach eos ourselves
                full = [*full, int(tokenizer.eos_token_id)]
                end = len(full) - 1
            ids = full[: end + 1]
            labels = [IGNORE] * len(prompt) + ids[len(prompt) :]
            ids, labels = ids[: options.max_length], labels[: options.max_length]
            if all(x == IGNORE for x in labels):
                out.dropped += 1
                continue
            out.append({"input_ids": ids, "labels": labels})
        if out.dropped:
            log.warning(
                "%d of %d examples dropped: their prompt fills max_length=%d, leaving no response "
                "token to train on; raise max_length or shorten the prompts",
                out.dropped,
                len(rows),
                options.max_length,
            )
        return out

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Any
    ) -> dict[str, torch.Tensor]:
        """Right-pad; padding is marked by the attention mask and -100 labels, never by token id."""
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(examples), width), int(pad), dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for r, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[r, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.tensor(e["labels"], dtype=torch.long)
            mask[r, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        # Position t predicts token t+1, so the first label is never a target.
        return count_targets(batch["labels"][:, 1:])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the shifted targets, in float32."""
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        return summed_cross_entropy(out.logits[:, :-1, :].float(), batch["labels"][:, 1:])

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Any
    ) -> dict:
        """Mean loss per target token over the whole set (so batch size does not change it)."""
        total, count = 0.0, 0
        with inference(model) as device:
            for batch in batches:
                batch = to_device(batch, device)
                total += float(self.loss(model, batch))
                count += self.targets(batch)
        mean = total / count if count else float("nan")
        return {
            "eval_loss": mean,
            "perplexity": math.exp(mean) if count and mean < 700 else float("inf"),
            "eval_tokens": count,
        }

    def manifest(self, options: Any, tokenizer: Any) -> dict[str, Any]:
        return {
            "prompt_format": "chat_template",
            "chat_template": tokenizer.chat_template,
            "system_prompt": options.system_prompt,
            "eos_token": tokenizer.eos_token,
        }

    # ---- inference ------------------------------------------------------------------------------

    def generate(
        self, model: nn.Module, tokenizer: Any, prompt: str, options: Any, max_new_tokens: int = 128
    ) -> str:
        """Greedy reply to `prompt`, rendered as in training; stops at the end-of-turn token."""
        import torch

        msgs = self._messages({"messages": [{"role": "user", "content": prompt}]}, options)
        ids = self._render(tokenizer, msgs, prompt=True)
        with inference(model) as device:
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end_of_turn_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
