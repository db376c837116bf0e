"""Raw text in, encoder-sized examples out: reading documents and cutting them into sequences.

    text   UTF-8 plain text; a document is a run of non-blank lines (documents are separated by
           blank lines, `documents: paragraphs`), or every non-blank line is one (`lines`).
    jsonl  one JSON object a line, the document in `text_field`; other fields are ignored.

The format follows the extension (.jsonl/.json: JSONL) unless `format` says. The same file layout
and option names as the `text` task's reader. Each document is tokenized without special tokens and
cut into pieces of at most `max_length` tokens with the model's [CLS] ... [SEP] around them; a cut
moves back to the start of a word, so no word is split between two examples (unless one word is
longer than a whole piece). Examples carry their `index` (position in the encoded list): the key
of their masks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_jsonl, read_text, split_lines

log = logging.getLogger("adapterkit")
_JSONL = (".jsonl", ".json")


def read_documents(path: Path, fmt: str, documents: str, text_field: str) -> list[dict[str, Any]]:
    """Rows `{"text", "line"}` (the document's first line), in file order; a file without any
    document, or a JSONL line without a non-blank string in `text_field`, is a DataError."""
    path = Path(path)
    if fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() in _JSONL):
        rows = [
            {"text": _field(path, lineno, record, text_field), "line": lineno}
            for lineno, record in read_jsonl(path, "a JSONL file of documents")
        ]
    else:
        text = read_text(path, "a text file", encoding="utf-8-sig")
        rows = list(_documents(text, documents))
    if not rows:
        raise DataError(
            f"{path}: no documents (the file is empty or only blank lines); write the text to "
            "train on, documents separated by a blank line"
        )
    return rows


def _documents(text: str, documents: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    paragraph: list[str] = []
    first = 0
    for lineno, line in split_lines(text):
        if not line.strip():
            if paragraph:
                out.append({"text": "\n".join(paragraph), "line": first})
            paragraph = []
        elif documents == "lines":
            out.append({"text": line, "line": lineno})
        else:
            first = first if paragraph else lineno
            paragraph.append(line)
    if paragraph:
        out.append({"text": "\n".join(paragraph), "line": first})
    return out


def _field(path: Path, lineno: int, record: dict[str, Any], field: str) -> str:
    if field not in record:
        found = ", ".join(repr(k) for k in record) or "none"
        raise line_error(
            path,
            lineno,
            f"no field {field!r} (fields found: {found}); set task.options.text_field to the "
            "field that holds the text",
        )
    value = record[field]
    if not isinstance(value, str):
        raise line_error(path, lineno, f"{field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise line_error(path, lineno, f"empty text in {field!r}; remove the line or fill it in")
    return value


# ---- encoding ------------------------------------------------------------------------------------


class Encoded(list):
    """The list `encode_documents` returns; counts of documents split and pieces dropped."""

    split_documents: int = 0
    dropped: int = 0  # pieces with no maskable token (only special or unknown tokens)


def _cuts(word_ids: list[int], room: int) -> list[tuple[int, int]]:
    """(start, end) pieces of at most `room` tokens, each cut moved back to a word's start."""
    pieces, start, n = [], 0, len(word_ids)
    while start < n:
        end = min(start + room, n)
        if end < n:
            back = end
            while back > start and word_ids[back] >= 0 and word_ids[back] == word_ids[back - 1]:
                back -= 1
            end = back if back > start else end  # a word longer than a piece is cut
        pieces.append((start, end))
        start = end
    return pieces


def _wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids that open and close an example ([CLS] and [SEP] for BERT)."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    return ([] if cls is None else [int(cls)]), ([] if sep is None else [int(sep)])


def encode_documents(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> Encoded:
    """Examples {"input_ids", "word_ids" (-1 on special tokens), "index", "line"}."""
    head, tail = _wrap(tokenizer)
    room = max_length - len(head) - len(tail)
    special = {int(i) for i in tokenizer.all_special_ids}
    texts = [str(row["text"]) for row in rows]
    enc = tokenizer(texts, add_special_tokens=False, verbose=False) if texts else None
    out = Encoded()
    for i, row in enumerate(rows):
        ids = list(enc["input_ids"][i]) if enc is not None else []
        words = _word_ids(enc, i, len(ids))
        pieces = _cuts(words, room)
        out.split_documents += len(pieces) > 1
        for start, end in pieces:
            piece = ids[start:end]
            if all(t in special for t in piece):
                out.dropped += 1
                continue
            out.append(
                {
                    "input_ids": head + piece + tail,
                    "word_ids": [-1] * len(head) + words[start:end] + [-1] * len(tail),
                    "index": len(out),
                    "line": int(row.get("line", i)),
                }
            )
    _report(out, len(rows), max_length)
    return out


def _word_ids(enc: Any, i: int, n: int) -> list[int]:
    """Word ids of row `i` (-1 for none); a slow tokenizer has none: each token is a word."""
    if enc is None or not getattr(enc, "is_fast", False):
        return list(range(n))
    return [-1 if w is None else int(w) for w in enc.word_ids(i)]


def _report(out: Encoded, documents: int, max_length: int) -> None:
    if out.split_documents:
        log.info(
            "%d of %d documents are longer than max_length=%d tokens and were cut into several "
            "examples (at word boundaries); %d examples in all",
            out.split_documents,
            documents,
            max_length,
            len(out),
        )
    if out.dropped:
        log.warning(
            "%d pieces of text dropped: they hold only special or unknown tokens, nothing to mask",
            out.dropped,
        )
