"""Reading CoNLL-style column files: one token a line, a blank line between sentences.

Columns are split on whitespace (or `separator`); `-DOCSTART-` lines are skipped. The token is
column `token_column`, the tag column `tag_column` (numbers: field names are for CoNLL-U files,
see conllu.py); both are resolved against the file's first token line, and every token line must
have as many columns as that one. A file with a single column has no tags: it can be predicted,
not trained or evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_text, split_lines

if TYPE_CHECKING:
    from adapterkit.tasks.token_classification import Options

DOCSTART = "-DOCSTART-"

TokenLines = list[tuple[int, list[str]]]  # (line number, fields) of one sentence's token lines


def column_number(value: int | str, what: str, path: Path) -> int:
    """`token_column`/`tag_column` as a column number; a name (a CoNLL-U field) is an error here."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    raise DataError(
        f"{path}: task.options.{what}={value!r} is not a column number; a CoNLL-style column "
        "file takes 0 = first, -1 = last (field names such as FORM and UPOS are for CoNLL-U "
        "files: name the file .conllu or set task.options.format: conllu)"
    )


def _column(index: int, ncols: int, what: str, path: Path, lineno: int) -> int:
    resolved = index + ncols if index < 0 else index
    if not 0 <= resolved < ncols:
        raise line_error(
            path,
            lineno,
            f"{what}={index} is out of range: the line has {ncols} column"
            f"{'s' if ncols != 1 else ''}; set task.options.{what}",
        )
    return resolved


@dataclass(frozen=True)
class _Layout:
    """The columns as the file's first token line has them."""

    ncols: int
    line: int
    token: int
    tag: int

    @classmethod
    def of(cls, path: Path, lineno: int, fields: list[str], options: Options) -> _Layout:
        ncols = len(fields)
        token_column = column_number(options.token_column, "token_column", path)
        tag_column = column_number(options.tag_column, "tag_column", path)
        token = _column(token_column, ncols, "token_column", path, lineno)
        tag = _column(tag_column, ncols, "tag_column", path, lineno)
        return cls(ncols, lineno, token, tag)

    def check(self, path: Path, lineno: int, fields: list[str]) -> None:
        if len(fields) != self.ncols:
            raise line_error(
                path,
                lineno,
                f"{len(fields)} columns, but line {self.line} has {self.ncols}; every token line "
                "needs the same columns (a blank line ends a sentence)",
            )
        if not fields[self.token] or not fields[self.tag]:
            raise line_error(path, lineno, "an empty column; check task.options.separator")


def _sentences(text: str, separator: str | None) -> list[TokenLines]:
    """The token lines of each sentence; blank and -DOCSTART- lines end a sentence."""
    sentences: list[TokenLines] = [[]]
    for lineno, line in split_lines(text):
        if line.strip():
            fields = (
                line.split() if separator is None else [f.strip() for f in line.split(separator)]
            )
            if fields[0] != DOCSTART:
                sentences[-1].append((lineno, fields))
                continue
        if sentences[-1]:
            sentences.append([])
    return [s for s in sentences if s]


def read_conll(path: Path, options: Options) -> list[dict[str, Any]]:
    """Sentences of a CoNLL-style column file: {"words", "tags" (or None), "line", "where"}."""
    path = Path(path)
    sentences = _sentences(read_text(path, "a CoNLL-style file"), options.separator)
    if not sentences:
        raise DataError(
            f"{path}: no sentences (the file is empty); write one token a line, "
            "a blank line between sentences"
        )
    layout = _Layout.of(path, *sentences[0][0], options)
    rows = []
    for lines in sentences:
        for lineno, fields in lines:
            layout.check(path, lineno, fields)
        start = lines[0][0]
        rows.append(
            {
                "words": [fields[layout.token] for _, fields in lines],
                "tags": [fields[layout.tag] for _, fields in lines]
                if layout.tag != layout.token
                else None,
                "line": start,
                "where": f"{path}:{start}",
            }
        )
    return rows
