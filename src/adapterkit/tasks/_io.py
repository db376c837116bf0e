"""Reading data files for the built-in tasks: whole text, lines, JSONL; errors name file and line.

Every reader raises DataError (exit status 2) with a message that starts `path:line:` when a line
is at fault, or `path:` when the file as a whole is (missing, unreadable, empty).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapterkit.errors import DataError


def line_error(path: Path, lineno: int, msg: str) -> DataError:
    """A DataError that names the file and line: `path:lineno: msg`."""
    return DataError(f"{path}:{lineno}: {msg}")


def read_text(path: Path, kind: str, encoding: str = "utf-8") -> str:
    """The whole file as text; a missing or unreadable file is a DataError.

    `kind` completes "give the path of ..." (e.g. "a JSONL file"); `encoding` "utf-8-sig" drops a
    byte order mark.
    """
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; give the path of {kind}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from exc


def split_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) without line ends; only "\\n" (and "\\r\\n") end a line.

    Not `str.splitlines`, which also breaks at U+2028, form feeds and lone carriage returns: a
    JSON string may hold those raw, and a line number must be the one an editor shows.
    """
    return [(i, line.removesuffix("\r")) for i, line in enumerate(text.split("\n"), start=1)]


def read_jsonl(path: Path, kind: str = "a JSONL file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file, in order.

    A byte order mark is dropped. A line that is not JSON, or not a JSON object, names its line
    (and the column the JSON parser gave); a file with no object at all is an error too. Lazy, so
    a caller that checks each object as it comes reports the first bad line, whatever is wrong.
    """
    path = Path(path)
    text = read_text(path, kind, encoding="utf-8-sig")
    found = False
    for lineno, line in split_lines(text):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = (
                "a JSON array is not read, write one object a line (JSONL)"
                if line.lstrip().startswith("[")
                else "each line must be one JSON object"
            )
            msg = f"invalid JSON ({exc.msg} at column {exc.colno}); {hint}"
            raise line_error(path, lineno, msg) from None
        if not isinstance(record, dict):
            raise line_error(path, lineno, f"expected a JSON object, got {type(record).__name__}")
        found = True
        yield lineno, record
    if not found:
        raise DataError(f"{path}: no examples (the file is empty); write one JSON object a line")
