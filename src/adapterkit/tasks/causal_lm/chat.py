"""Chat rows and the chat template: validating a row into messages, rendering it into token ids.

A row is `{"instruction", "input" (optional), "output"}` or `{"messages": [...]}` whose last turn
is the assistant's; either may add `"references"` (a list of strings the generation metrics score
the reply against; default: the response itself). Rendering uses the tokenizer's own chat
template, exactly as generation does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapterkit.errors import ModelError
from adapterkit.tasks._io import line_error, read_jsonl

# End-of-turn tokens of common chat templates; used together with the tokenizer's eos token, so a
# template whose turns end with something other than eos (Llama 3's <|eot_id|>) is handled too.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]


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
        raise line_error(
            path,
            lineno,
            f'missing field "{key}"; each line needs "instruction" and '
            '"output" (plus optional "input"), or "messages"',
        )
    value = row[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise line_error(path, lineno, f'"{key}" must be a string, got {type(value).__name__}')
    return value


def _check_messages(msgs: Any, path: Path, lineno: int) -> Messages:
    if not isinstance(msgs, list) or not msgs:
        raise line_error(path, lineno, '"messages" must be a non-empty list of {role, content}')
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise line_error(
                path, lineno, f'messages[{i}] must be an object with a string "content"'
            )
        if m.get("role") not in _ROLES:
            roles = ", ".join(_ROLES)
            msg = f"messages[{i}].role must be one of {roles}, got {m.get('role')!r}"
            raise line_error(path, lineno, msg)
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise line_error(
            path, lineno, "the last message must be the assistant's (the response to train on)"
        )
    if not any(m["role"] == "user" for m in out[:-1]):
        raise line_error(path, lineno, "messages need a user turn before the last assistant turn")
    return out


def row_messages(row: dict, path: Path, lineno: int) -> Messages:
    """Validate one row and return it as chat messages (without a system prompt option)."""
    if "messages" in row:
        return _check_messages(row["messages"], path, lineno)
    instruction = _check_text(row, "instruction", path, lineno)
    extra = _check_text(row, "input", path, lineno, required=False)
    output = _check_text(row, "output", path, lineno)
    user = instruction + ("\n\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def prompt_row_messages(row: dict, path: Path, lineno: int) -> Messages:
    """Validate a row to generate for: a training row, or one without the response (no "output",
    or "messages" ending with a user turn). Its messages; the last is the assistant's only when the
    row has a response."""
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
        if msgs[-1].get("role") == "user":  # checked as if a reply followed
            return _check_messages([*msgs, _NO_REPLY], path, lineno)[:-1]
        return row_messages(row, path, lineno)
    if "messages" not in row and "output" not in row:
        return row_messages({**row, "output": ""}, path, lineno)[:-1]
    return row_messages(row, path, lineno)


_NO_REPLY = {"role": "assistant", "content": ""}


def read_rows(path: Path, check: Callable[[dict, Path, int], Messages]) -> list[dict[str, Any]]:
    """[{"messages", "line"[, "references"]}] per JSONL row, its messages validated by `check`
    (`row_messages`, or `prompt_row_messages` for a file to generate for)."""
    rows = []
    for lineno, row in read_jsonl(path):
        item: dict[str, Any] = {"messages": check(row, path, lineno), "line": lineno}
        refs = row_references(row, path, lineno)
        if refs is not None:
            item["references"] = refs
        rows.append(item)
    return rows


def prompt_and_references(row: dict, msgs: Messages) -> tuple[Messages, list[str]]:
    """The turns before the reply, and what the reply is scored against: the row's references,
    else its response; none for a row with neither."""
    if msgs[-1]["role"] != "assistant":
        return msgs, list(row.get("references") or [])
    return msgs[:-1], list(row.get("references") or [msgs[-1]["content"]])


def row_references(row: dict, path: Path, lineno: int) -> list[str] | None:
    """The row's optional "references" (what generation metrics score against; default: the
    response): a non-empty list of strings, or None when the row has none."""
    refs = row.get("references")
    if refs is None:
        return None
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise line_error(path, lineno, '"references" must be a non-empty list of strings')
    return list(refs)


def chat_text(tokenizer: Any, messages: Messages, prompt: bool) -> str:
    """The conversation rendered by the tokenizer's chat template (with the generation prompt)."""
    if not tokenizer.chat_template:
        raise ModelError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "use an instruct/chat model or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of rendered text; the template wrote the special tokens, adding them would double BOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_and_full(tokenizer: Any, msgs: Messages, i: int) -> tuple[list[int], list[int]]:
    """Token ids of the generation prompt and of the whole conversation, the first a prefix."""
    prompt_text = chat_text(tokenizer, msgs[:-1], prompt=True)
    full_text = chat_text(tokenizer, msgs, prompt=False)
    if not full_text.startswith(prompt_text):
        raise ModelError(
            f"row {i}: the chat template's generation prompt is not the start of the rendered "
            "conversation, so the response cannot be located; use a template whose generation "
            "prompt is a prefix of the conversation"
        )
    prompt, full = token_ids(tokenizer, prompt_text), token_ids(tokenizer, full_text)
    if full[: len(prompt)] != prompt:
        # A merge across the boundary (e.g. a response starting with whitespace): tokenize the
        # two parts apart, which is also exactly what the model sees when it generates.
        full = prompt + token_ids(tokenizer, full_text[len(prompt_text) :])
    return prompt, full
