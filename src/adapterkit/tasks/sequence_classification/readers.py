"""Reading classification data: a table with a text column, an optional second text, a label.

    TSV    tab-separated, a header row naming the columns, NO quote processing (GLUE's files are
           unquoted: a sentence may start with `"` and never close it)
    CSV    comma-separated with standard quoting (Python's csv module), a header row
    JSONL  one JSON object a line

chosen by the file extension (.tsv, .csv, .jsonl/.json) unless `format` says otherwise. Labels are
kept as strings (`1` in JSON and `"1"` in a TSV are the same label). A file may lack the label
column entirely (a file to predict); a file where some rows are labelled and others not is an error.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_jsonl, read_text, split_lines

if TYPE_CHECKING:
    from adapterkit.tasks.sequence_classification import Options

_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def file_format(path: Path, options: Options) -> str:
    """ "tsv", "csv" or "jsonl": `options.format`, or from the file's extension."""
    if options.format != "auto":
        return options.format
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; "
            "name the file .tsv, .csv or .jsonl, or set task.options.format"
        )
    return fmt


def _columns(options: Options) -> list[tuple[str, str]]:
    """(option name, column) for the text columns every row must have."""
    cols = [("text_column", options.text_column)]
    if options.text_pair_column:
        cols.append(("text_pair_column", options.text_pair_column))
    return cols


def _missing(path: Path, lineno: int, kind: str, column: str, option: str, found: Any) -> DataError:
    listed = ", ".join(repr(str(c)) for c in found) or "none"
    return line_error(
        path,
        lineno,
        f"no {kind} {column!r} ({kind}s found: {listed}); "
        f"set task.options.{option} to the {kind} that holds it",
    )


def _text(path: Path, lineno: int, column: str, value: Any) -> str:
    if not isinstance(value, str):
        raise line_error(path, lineno, f"{column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise line_error(path, lineno, f"empty text in {column!r}; remove the line or fill it in")
    return value


def _label(path: Path, lineno: int, column: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        msg = f"label {column!r} must be a string or a number, got {value!r}"
        raise line_error(path, lineno, msg)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 in a JSON file is the label "1"
    text = str(value).strip()
    return text or None


def _row(path: Path, lineno: int, record: dict[str, Any], options: Options) -> dict[str, Any]:
    texts = [_text(path, lineno, col, record[col]) for _, col in _columns(options)]
    return {
        "text": texts[0],
        "text_pair": texts[1] if len(texts) > 1 else None,
        "label": _label(path, lineno, options.label_column, record.get(options.label_column)),
        "line": lineno,
        "where": f"{path}:{lineno}",
    }


def _table_records(path: Path, text: str, fmt: str) -> list[tuple[int, list[str]]]:
    """(line, fields) of every non-blank record; a CSV record's line is the one it starts on."""
    if fmt == "tsv":
        return [(n, line.split("\t")) for n, line in split_lines(text) if line.strip()]
    reader = csv.reader(io.StringIO(text, newline=""))
    records, start = [], 1
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                records.append((start, fields))
            start = reader.line_num + 1  # a quoted field may span lines
    except csv.Error as exc:
        raise line_error(path, reader.line_num, f"malformed CSV ({exc})") from None
    return records


def _read_table(path: Path, text: str, options: Options, fmt: str) -> list[dict[str, Any]]:
    records = _table_records(path, text, fmt)
    if not records:
        raise DataError(f"{path}: the file is empty; write a header row, then one row a line")
    head_line, header = records[0]
    header = [h.strip() for h in header]
    for option, col in _columns(options):
        if col not in header:
            raise _missing(path, head_line, "column", col, option, header)
    rows = []
    for lineno, fields in records[1:]:
        if len(fields) != len(header):
            sep = "tabs" if fmt == "tsv" else "commas"
            raise line_error(
                path,
                lineno,
                f"{len(fields)} fields, but the header on line {head_line} has {len(header)}; "
                f"check the {sep} on this line"
                + ("" if fmt == "tsv" else " (quote a field that holds a comma)"),
            )
        rows.append(_row(path, lineno, dict(zip(header, fields, strict=True)), options))
    if not rows:
        raise DataError(f"{path}: only a header row, no data rows")
    return rows


def _read_jsonl(path: Path, options: Options) -> list[dict[str, Any]]:
    rows = []
    for lineno, record in read_jsonl(path, "a jsonl file"):
        for option, col in _columns(options):
            if col not in record:
                raise _missing(path, lineno, "field", col, option, record)
        rows.append(_row(path, lineno, record, options))
    return rows


def _check_labelled(path: Path, rows: list[dict[str, Any]], options: Options) -> None:
    """All rows labelled, or none (a file to predict); never a mix."""
    first = rows[0]["label"] is not None
    odd = next((r for r in rows if (r["label"] is not None) != first), None)
    if odd is None:
        return
    col = options.label_column
    if first:
        msg = f"no label in {col!r}, but the rows before it have one"
    else:
        msg = f"a label in {col!r}, but the rows before it (from line {rows[0]['line']}) have none"
    raise line_error(
        path, odd["line"], f"{msg}; label every row, or none (a file to predict labels for)"
    )


def read_rows(path: Path, options: Options) -> list[dict[str, Any]]:
    """Rows {"text", "text_pair", "label" (str or None), "line", "where"}; errors name file:line."""
    path = Path(path)
    fmt = file_format(path, options)
    if fmt == "jsonl":
        rows = _read_jsonl(path, options)
    else:
        # utf-8-sig: a BOM would glue onto the first column's name
        rows = _read_table(
            path, read_text(path, f"a {fmt} file", encoding="utf-8-sig"), options, fmt
        )
    _check_labelled(path, rows, options)
    return rows
