"""Questions as windows: a long context is cut into overlapping windows of at most `max_length`
tokens (question, then a slice of the context), `doc_stride` tokens shared by neighbours.

Each window knows the character span of every context token (the fast tokenizer's offsets; -1
for the question, special and padding tokens), the characters of the context it covers, and its
trained answer: the first answer's first and last token when the answer lies wholly inside the
window, else position 0 (the `[CLS]` token: "no answer here"), which is also the answer of a
question the context does not answer. Batches are tensors only, so the context slice and the gold
answers ride along as Unicode code points (`context_codes`, `answer_codes`; -2 separates two
answers, -1 pads) and evaluation reads the answer text back from them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError, RecipeError
from adapterkit.tasks import _batching
from adapterkit.tasks._loss import IGNORE

if TYPE_CHECKING:
    import torch

    from adapterkit.tasks.extractive_qa import Options

log = logging.getLogger("adapterkit")

NO_CHAR = -1  # the offset of a token that is not in the context; pads code point lists too
ANSWER_SEP = -2  # between two gold answers in `answer_codes`
_CHUNK = 256  # questions tokenized at once


class Windows(list):
    """The list `encode` returns; `.questions` rows made it, `.cut_questions` of them cut short."""

    questions: int = 0
    cut_questions: int = 0


def check_lengths(tokenizer: Any, options: Options) -> None:
    """A window must hold the longest question, the special tokens and more than the stride."""
    specials = int(tokenizer.num_special_tokens_to_add(pair=True))
    room = options.max_length - options.max_question_length - specials
    if room <= options.doc_stride:
        raise RecipeError(
            "task.options",
            [
                f"max_length {options.max_length} leaves {room} context tokens after a question "
                f"of max_question_length {options.max_question_length} and {specials} special "
                f"tokens; that must be more than doc_stride {options.doc_stride}: raise "
                "max_length or lower max_question_length or doc_stride"
            ],
        )


def _cut_question(tokenizer: Any, question: str, limit: int) -> tuple[str, bool]:
    """The question cut after its first `limit` tokens (at a character boundary)."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= limit:
        return question, False
    return question[: offsets[limit - 1][1]], True


def answer_tokens(offsets: list[list[int]], start: int, end: int) -> tuple[int, int]:
    """(first, last) token of the characters [start, end) in a window; (0, 0) when the window
    does not hold all of them. `offsets` are [char start, char end] per token, -1 off context."""
    inside = [i for i, (s, _) in enumerate(offsets) if s != NO_CHAR]
    if not inside or start < offsets[inside[0]][0] or end > offsets[inside[-1]][1]:
        return 0, 0
    first = next(i for i in inside if offsets[i][1] > start)
    last = next(i for i in reversed(inside) if offsets[i][0] < end)
    return first, last


def _codes(text: str) -> list[int]:
    return [ord(ch) for ch in text]


def _answer_codes(answers: list[dict[str, Any]] | None) -> list[int]:
    out: list[int] = []
    for n, answer in enumerate(answers or []):
        out += ([ANSWER_SEP] if n else []) + _codes(answer["text"])
    return out


def _window(enc: Any, f: int, row: dict[str, Any], index: int, labelled: bool) -> dict[str, Any]:
    """One window of question `index`: its tokens, offsets, context slice and trained answer."""
    sequence = enc.sequence_ids(f)
    offsets = [
        [int(s), int(e)] if sequence[t] == 1 else [NO_CHAR, NO_CHAR]
        for t, (s, e) in enumerate(enc["offset_mapping"][f])
    ]
    inside = [o for o in offsets if o[0] != NO_CHAR]
    if not inside:
        raise DataError(f"{row['where']}: the context has no tokens this tokenizer keeps")
    base, stop = inside[0][0], inside[-1][1]
    answers = row["answers"]
    if not labelled or answers is None:
        start = end = IGNORE
    elif not answers:
        start = end = 0
    else:
        first = answers[0]
        start, end = answer_tokens(offsets, first["start"], first["start"] + len(first["text"]))
    example = {"input_ids": list(enc["input_ids"][f])}
    if "token_type_ids" in enc:
        example["token_type_ids"] = list(enc["token_type_ids"][f])
    return {
        **example,
        "start_positions": start,
        "end_positions": end,
        "offsets": offsets,
        "question": index,
        "context_base": base,
        "context_codes": _codes(row["context"][base:stop]),
        "answer_codes": _answer_codes(answers if labelled else None),
    }


def encode_windows(
    rows: list[dict[str, Any]], tokenizer: Any, options: Options, labelled: bool
) -> Windows:
    """Every question's windows, in order; `question` in each is the row's index in `rows`."""
    check_lengths(tokenizer, options)
    out = Windows()
    out.questions = len(rows)
    for at in range(0, len(rows), _CHUNK):
        chunk = rows[at : at + _CHUNK]
        questions = []
        for row in chunk:
            text, cut = _cut_question(tokenizer, row["question"], options.max_question_length)
            questions.append(text)
            out.cut_questions += cut
        enc = tokenizer(
            questions,
            [row["context"] for row in chunk],
            truncation="only_second",
            max_length=options.max_length,
            stride=options.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for f, i in enumerate(enc["overflow_to_sample_mapping"]):
            out.append(_window(enc, f, chunk[i], at + i, labelled))
    if out.cut_questions:
        log.warning(
            "%d of %d questions longer than max_question_length=%d tokens were cut short",
            out.cut_questions,
            len(rows),
            options.max_question_length,
        )
    return out


def _pad_codes(rows: list[list[int]]) -> torch.Tensor:
    """int32 [len(rows), longest] code points, NO_CHAR after each row."""
    import torch

    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(1, width)), NO_CHAR, dtype=torch.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
    return out


def collate_windows(examples: list[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Right-padded windows; `offsets` [rows, tokens, 2] is NO_CHAR off the context."""
    import torch

    fields = {"token_type_ids": 0} if "token_type_ids" in examples[0] else {}
    batch = _batching.pad_batch(examples, tokenizer, fields)
    width = batch["input_ids"].shape[1]
    offsets = torch.full((len(examples), width, 2), NO_CHAR, dtype=torch.long)
    for i, e in enumerate(examples):
        offsets[i, : len(e["offsets"])] = torch.tensor(e["offsets"], dtype=torch.long)
    batch["offsets"] = offsets
    for key in ("start_positions", "end_positions", "question", "context_base"):
        batch[key] = _batching.column(examples, key)
    batch["context_codes"] = _pad_codes([e["context_codes"] for e in examples])
    batch["answer_codes"] = _pad_codes([e["answer_codes"] for e in examples])
    return batch


def decode(codes: list[int]) -> str:
    """The text of a row of code points (padding dropped)."""
    return "".join(chr(c) for c in codes if c >= 0)


def gold_answers(codes: list[int]) -> list[str]:
    """The gold answer texts packed by `_answer_codes` (none for an unanswerable question)."""
    texts, current = [], []
    for c in codes:
        if c == ANSWER_SEP:
            texts.append(decode(current))
            current = []
        elif c >= 0:
            current.append(c)
    return [*texts, decode(current)] if current or texts else []
