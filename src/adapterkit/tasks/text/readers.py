"""Reading raw text: plain-text files of documents, or JSONL with the text in one field.

    text   UTF-8 plain text; a document is a run of non-blank lines (documents are separated by
           one or more blank lines, `documents: paragraphs`), or every non-blank line is one
           (`documents: lines`). A document's lines are kept as they are, joined with "\\n".
    jsonl  one JSON object a line, the document in `text_field` (other fields are ignored)

chosen by the file extension (.jsonl/.json: JSONL, anything else: text) unless `format` says
otherwise. Every row is `{"text": str}`. A file with no document, text that is not UTF-8 or holds
NUL bytes, and a JSONL line without a string in `text_field` are DataErrors naming the file and
line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_jsonl, split_lines

if TYPE_CHECKING:
    from collections.abc import Iterator

    from adapterkit.tasks.text import Options

_JSONL = (".jsonl", ".json")


def file_format(path: Path, options: Options) -> str:
    """ "text" or "jsonl": `options.format`, or from the file's extension."""
    if options.format != "auto":
        return options.format
    return "jsonl" if path.suffix.lower() in _JSONL else "text"


def read_documents(path: Path, options: Options) -> list[dict[str, Any]]:
    """The file's documents as rows `{"text": ...}`, in file order."""
    path = Path(path)
    if file_format(path, options) == "jsonl":
        rows = [{"text": _field(path, n, r, options.text_field)} for n, r in read_jsonl(path)]
    else:
        rows = [{"text": doc} for doc in _documents(_text(path), options.documents)]
    if not rows:
        raise DataError(
            f"{path}: no documents (the file is empty or only blank lines); write the text "
            "to train on, documents separated by a blank line"
        )
    return rows


def _text(path: Path) -> str:
    """The file as UTF-8 text (a byte order mark dropped); bad bytes name their line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; give the path of a text or JSONL file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = raw[: exc.start].count(b"\n") + 1
        msg = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise line_error(path, lineno, msg) from None
    if "\x00" in text:
        lineno = text[: text.index("\x00")].count("\n") + 1
        raise line_error(path, lineno, "a NUL byte: this is not a text file")
    return text


def _documents(text: str, documents: str) -> Iterator[str]:
    """Each document of a plain-text file: a paragraph (blank-line separated) or a line."""
    paragraph: list[str] = []
    for _, line in split_lines(text):
        if not line.strip():
            if paragraph:
                yield "\n".join(paragraph)
            paragraph = []
        elif documents == "lines":
            yield line
        else:
            paragraph.append(line)
    if paragraph:
        yield "\n".join(paragraph)


def _field(path: Path, lineno: int, record: dict[str, Any], field: str) -> str:
    """The document text of one JSONL object; a missing, non-string or blank field is an error."""
    if field not in record:
        found = ", ".join(repr(k) for k in record) or "none"
        msg = (
            f"no field {field!r} (fields found: {found}); set task.options.text_field to the "
            "field that holds the text"
        )
        raise line_error(path, lineno, msg)
    value = record[field]
    if not isinstance(value, str):
        raise line_error(path, lineno, f"{field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise line_error(path, lineno, f"empty text in {field!r}; remove the line or fill it in")
    return value
