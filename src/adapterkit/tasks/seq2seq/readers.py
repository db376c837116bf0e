"""Reading source/target pairs: JSONL, TSV with a header, or two aligned plain-text files.

    JSONL  one object a line; `source_field` and `target_field` (default `source`, `target`). A
           field may hold a list of strings: a source's pieces are joined with a space (SciTLDR's
           sentences), a target's are several references (the first is trained on).
    TSV    a header naming the two columns, then one pair a line, split on tabs, no quoting.
    text   two files of one sentence a line, the way parallel corpora ship (`train.en`,
           `train.de`): `source_file` / `target_file` give their extensions; the data path may
           name either file of the pair.

Every row is {"source", "references" (None for a file with no targets), "line", "where"}. A file
with no target at all (no target column or field, no target file) is a file to predict; a mix
of rows with and without a target is an error. Empty texts are errors naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError, RecipeError
from adapterkit.tasks._io import line_error, read_jsonl, read_text, split_lines

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adapterkit.tasks.seq2seq.options import Options

__all__ = ["paired_files", "read_rows"]


def _row(path: Path, lineno: int, source: str, references: list[str] | None) -> dict[str, Any]:
    return {
        "source": source,
        "references": references,
        "line": lineno,
        "where": f"{path}:{lineno}",
    }


def _text(path: Path, lineno: int, field: str, value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = " ".join(v.strip() for v in value)
    if not isinstance(value, str):
        kind = type(value).__name__
        raise line_error(
            path, lineno, f"{field!r} must be a string (or a list of them), got {kind}"
        )
    if not value.strip():
        raise line_error(path, lineno, f"empty text in {field!r}; remove the line or fill it in")
    return value.strip()


def _references(path: Path, lineno: int, field: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise line_error(path, lineno, f"{field!r} is an empty list; give at least one target")
    return [_text(path, lineno, field, v) for v in values]


def _check_targets(path: Path, rows: list[dict[str, Any]], what: str) -> None:
    """Every row has a target, or none has (a file to predict); never a mix."""
    first = rows[0]["references"] is not None
    odd = next((r for r in rows if (r["references"] is not None) != first), None)
    if odd is not None:
        msg = "no target" if first else "a target, but the rows before it have none"
        raise line_error(
            path, odd["line"], f"{msg} in {what}; give every row a target, or none (to predict)"
        )


def _read_jsonl(path: Path, options: Options) -> list[dict[str, Any]]:
    src, tgt = options.source_field, options.target_field
    rows = []
    for lineno, record in read_jsonl(path, "a JSONL file of source/target pairs"):
        if src not in record:
            found = ", ".join(repr(k) for k in record) or "none"
            raise line_error(
                path,
                lineno,
                f"no field {src!r} (fields found: {found}); set task.options.source_field",
            )
        refs = record.get(tgt)
        references = None if refs is None else _references(path, lineno, tgt, refs)
        rows.append(_row(path, lineno, _text(path, lineno, src, record[src]), references))
    _check_targets(path, rows, f"field {tgt!r}")
    return rows


def _read_tsv(path: Path, options: Options) -> list[dict[str, Any]]:
    text = read_text(path, "a TSV file of source/target pairs", encoding="utf-8-sig")
    records = [(n, line.split("\t")) for n, line in split_lines(text) if line.strip()]
    if not records:
        raise DataError(f"{path}: the file is empty; write a header row, then one pair a line")
    head_line, header = records[0][0], [h.strip() for h in records[0][1]]
    src, tgt = options.source_field, options.target_field
    if src not in header:
        listed = ", ".join(repr(h) for h in header)
        raise line_error(
            path,
            head_line,
            f"no column {src!r} in the header (columns: {listed}); set task.options.source_field",
        )
    rows = []
    for lineno, fields in records[1:]:
        if len(fields) != len(header):
            raise line_error(
                path,
                lineno,
                f"{len(fields)} fields, but the header on line {head_line} has {len(header)}; "
                "check the tabs on this line",
            )
        record = dict(zip(header, fields, strict=True))
        refs = [_text(path, lineno, tgt, record[tgt])] if tgt in record else None
        rows.append(_row(path, lineno, _text(path, lineno, src, record[src]), refs))
    if not rows:
        raise DataError(f"{path}: only a header row, no data rows")
    return rows


def _extension(value: str) -> str:
    return "." + value.lstrip(".")


def paired_files(path: Path, options: Options) -> tuple[Path, Path]:
    """(source file, target file) of the aligned pair `path` belongs to.

    `path` may be either file (`train.en` or `train.de` with extensions `en` and `de`), or their
    common stem (`train`).
    """
    assert options.source_file is not None and options.target_file is not None
    src_ext, tgt_ext = _extension(options.source_file), _extension(options.target_file)
    name = path.name
    for ext in (src_ext, tgt_ext):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return path.with_name(name + src_ext), path.with_name(name + tgt_ext)


def _lines(path: Path, what: str) -> list[str]:
    text = read_text(path, what)
    lines = [line for _, line in split_lines(text)]
    if lines and lines[-1] == "":  # the newline that ends the last line opens no new one
        lines.pop()
    if not lines:
        raise DataError(f"{path}: the file is empty; write one sentence a line")
    return lines


def _read_parallel(path: Path, options: Options) -> list[dict[str, Any]]:
    source_path, target_path = paired_files(path, options)
    sources = _lines(source_path, f"the source side of an aligned pair ({source_path.name})")
    targets: Sequence[str | None]
    if target_path.is_file():
        targets = _lines(target_path, "the target side of an aligned pair")
        if len(targets) != len(sources):
            raise DataError(
                f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}: "
                "aligned files need one sentence a line on both sides, in the same order"
            )
    else:
        targets = [None] * len(sources)  # a file to predict: the source side alone
    rows = []
    for lineno, (source, target) in enumerate(zip(sources, targets, strict=True), start=1):
        if not source.strip():
            raise line_error(source_path, lineno, "empty line; every line must hold a sentence")
        if target is not None and not target.strip():
            raise line_error(target_path, lineno, "empty line; every line must hold a sentence")
        refs = None if target is None else [target.strip()]
        rows.append(_row(source_path, lineno, source.strip(), refs))
    return rows


def read_rows(path: Path, options: Options) -> list[dict[str, Any]]:
    """Rows {"source", "references", "line", "where"} of `path`; errors name the file and line."""
    path = Path(path)
    if options.source_file is not None and options.target_file is not None:
        return _read_parallel(path, options)
    if options.source_file is not None or options.target_file is not None:
        raise RecipeError(
            "task.options",
            [
                "task.options.source_file and target_file come together: set both (the two "
                "extensions of an aligned pair, e.g. en and de), or neither (JSONL or TSV)"
            ],
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, options)
    if suffix == ".tsv":
        return _read_tsv(path, options)
    raise DataError(
        f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; name the "
        "file .jsonl or .tsv, or set task.options.source_file and target_file for two aligned "
        "plain-text files"
    )
