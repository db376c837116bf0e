"""Unlabelled text for span corruption: documents from plain text or JSONL, cut into token chunks.

Plain text: a document per blank-line separated paragraph (`documents: paragraphs`) or per
non-blank line (`lines`). JSONL: one object a line, the document in `text_field`. Each document is
tokenized without special tokens and cut into chunks of at most `max_length - 1` tokens (room for
the end token after corruption); a chunk of fewer than two tokens cannot be corrupted and is
dropped. Rows are {"text", "line", "where"}; errors name the file and line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_jsonl, read_text, split_lines

log = logging.getLogger("adapterkit")


def _paragraphs(path: Path, text: str, per_line: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    block: list[str] = []
    start = 0
    for lineno, line in [*split_lines(text), (-1, "")]:
        if line.strip() and not per_line:
            start = start or lineno
            block.append(line.strip())
            continue
        if line.strip():  # a document per line
            rows.append({"text": line.strip(), "line": lineno, "where": f"{path}:{lineno}"})
        elif block:
            rows.append({"text": " ".join(block), "line": start, "where": f"{path}:{start}"})
            block, start = [], 0
    return rows


def read_documents(path: Path, fmt: str, documents: str, text_field: str) -> list[dict[str, Any]]:
    """Documents of a plain-text or JSONL file (`fmt` "auto" tells them by the extension)."""
    path = Path(path)
    if fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() in (".jsonl", ".json")):
        rows = []
        for lineno, record in read_jsonl(path, "a JSONL file of documents"):
            value = record.get(text_field)
            if not isinstance(value, str) or not value.strip():
                found = ", ".join(repr(k) for k in record) or "none"
                raise line_error(
                    path,
                    lineno,
                    f"no text in field {text_field!r} (fields found: {found}); "
                    "set task.options.text_field",
                )
            rows.append({"text": value.strip(), "line": lineno, "where": f"{path}:{lineno}"})
        return rows
    rows = _paragraphs(path, read_text(path, "a text file"), per_line=documents == "lines")
    if not rows:
        raise DataError(f"{path}: no text (the file is empty or blank); write one document a line")
    return rows


def chunks(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """{"input_ids" (the uncorrupted tokens), "index", "line"} per chunk of every document."""
    if not rows:
        return []
    room = max_length - 1
    enc = tokenizer([str(r["text"]) for r in rows], add_special_tokens=False)
    out: list[dict[str, Any]] = []
    dropped = 0
    for row, ids in zip(rows, enc["input_ids"], strict=True):
        for start in range(0, len(ids), room):
            piece = list(ids[start : start + room])
            if len(piece) < 2:
                dropped += 1
                continue
            out.append({"input_ids": piece, "index": len(out), "line": int(row.get("line", 0))})
    if dropped:
        log.warning("%d chunks of a single token dropped: too short to corrupt", dropped)
    return out
