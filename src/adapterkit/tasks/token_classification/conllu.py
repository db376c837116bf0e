"""Reading Universal Dependencies CoNLL-U files: one word a line in 10 tab-separated fields.

    # sent_id = answers-20111108104724AAuBUR7_ans-0001
    # text = I didn't.
    1-2     didn't  _       _       _       _       _       _       _       _
    1       did     do      AUX     VBD     Mood=Ind|...    0       root    0:root  _
    2       n't     not     PART    RB      _       1       advmod  1:advmod        SpaceAfter=No

The fields are named (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC, as
https://universaldependencies.org/format.html defines them): `token_column` is FORM or LEMMA,
`tag_column` UPOS, XPOS, FEATS or DEPREL, case-insensitive. As the format requires, `#` comment
lines are skipped, and so are multi-word token lines (ID `1-2`: the words that follow carry the
annotation) and empty nodes (ID `5.1`, enhanced dependencies only); a blank line ends a sentence.
A word whose UPOS, XPOS or DEPREL is `_` is unannotated: a file with `_` there on every word has
no tags (it can be predicted, not trained on); `_` on some words only is an error. A FEATS of `_`
is the empty feature set, a tag like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_text, split_lines

if TYPE_CHECKING:
    from adapterkit.tasks.token_classification import Options

FIELDS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
TOKEN_FIELDS = ("FORM", "LEMMA")
TAG_FIELDS = ("UPOS", "XPOS", "FEATS", "DEPREL")
UNSPECIFIED = "_"
_UNSPECIFIED_IS_UNTAGGED = ("UPOS", "XPOS", "DEPREL")  # for FEATS, "_" is the empty feature set

_WORD = re.compile(r"[1-9][0-9]*")
_RANGE = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)")
_EMPTY = re.compile(r"(0|[1-9][0-9]*)\.[1-9][0-9]*")
_SENT_ID = re.compile(r"#\s*sent_id\s*=(.*)")

Word = tuple[int, list[str]]  # (line number, the 10 fields) of one word line


def is_field_name(value: object) -> bool:
    """Whether a `token_column`/`tag_column` value names a CoNLL-U field (not a column number)."""
    return isinstance(value, str) and value.strip().upper() in FIELDS


def _field(value: int | str, what: str, allowed: tuple[str, ...]) -> int | str:
    """The field index `value` names, or the problem with it (a str)."""
    name = value.strip().upper() if isinstance(value, str) else None
    choices = " or ".join(allowed)
    if name in allowed:
        return FIELDS.index(name)
    if name is None or name.lstrip("-").isdigit():
        return (
            f"task.options.{what}={value} is a column number, but the fields of a CoNLL-U file "
            f"are named: set it to {choices}"
        )
    if name in FIELDS:
        return f"task.options.{what}={value!r}: {what} reads {choices}, not {name}"
    return f"task.options.{what}={value!r} is not a CoNLL-U field; give {choices}"


def fields_of(path: Path, options: Options) -> tuple[int, int]:
    """(token field, tag field) indexes; every problem with the two options in one DataError."""
    token = _field(options.token_column, "token_column", TOKEN_FIELDS)
    tag = _field(options.tag_column, "tag_column", TAG_FIELDS)
    problems = [p for p in (token, tag) if isinstance(p, str)]
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    assert isinstance(token, int) and isinstance(tag, int)
    return token, tag


def _id_kind(path: Path, lineno: int, value: str) -> str:
    """ "word", "range" (a multi-word token) or "empty" (an empty node); anything else an error."""
    if _WORD.fullmatch(value):
        return "word"
    span = _RANGE.fullmatch(value)
    if span and int(span[1]) < int(span[2]):
        return "range"
    if _EMPTY.fullmatch(value):
        return "empty"
    raise line_error(
        path,
        lineno,
        f"ID {value!r} is not a word ID (1, 2, ...), a multi-word token range (3-4, first < last) "
        "or an empty node (5.1)",
    )


def _fields(path: Path, lineno: int, line: str) -> list[str]:
    fields = line.split("\t")
    if len(fields) != len(FIELDS):
        hint = " (spaces where the tabs go?)" if len(fields) == 1 and " " in line.strip() else ""
        raise line_error(
            path,
            lineno,
            f"{len(fields)} field{'s' if len(fields) != 1 else ''}, but a CoNLL-U line has "
            f"{len(FIELDS)}, separated by tabs{hint}: {' '.join(FIELDS)}",
        )
    for name, value in zip(FIELDS, fields, strict=True):
        if not value:
            raise line_error(
                path, lineno, f"the {name} field is empty; CoNLL-U writes '_' for no value"
            )
    return fields


@dataclass
class _Sentence:
    words: list[Word] = field(default_factory=list)
    sent_id: str | None = None  # its `# sent_id = ...` comment


def _sentences(path: Path, text: str) -> list[_Sentence]:
    """The word lines of each sentence, their IDs checked to count 1, 2, 3, ..."""
    sentences = [_Sentence()]
    for lineno, line in split_lines(text):
        current = sentences[-1]
        if not line.strip():
            if current.words:
                sentences.append(_Sentence())
            continue
        if line.startswith("#"):
            found = _SENT_ID.fullmatch(line)
            if found and not current.words:
                current.sent_id = found[1].strip() or None
            continue
        fields = _fields(path, lineno, line)
        if _id_kind(path, lineno, fields[0]) != "word":
            continue
        if int(fields[0]) != len(current.words) + 1:
            after = f"after word {len(current.words)}" if current.words else "opening a sentence"
            raise line_error(
                path,
                lineno,
                f"word ID {fields[0]} {after}; word IDs count 1, 2, 3, ... in each sentence, "
                "and a blank line ends a sentence",
            )
        current.words.append((lineno, fields))
    return [s for s in sentences if s.words]


def _untagged(path: Path, sentences: list[_Sentence], tag: int) -> bool:
    """True when no word has a tag ('_' everywhere); '_' on some words only is an error."""
    if FIELDS[tag] not in _UNSPECIFIED_IS_UNTAGGED:
        return False
    blank = [lineno for s in sentences for lineno, f in s.words if f[tag] == UNSPECIFIED]
    if not blank:
        return False
    if len(blank) == sum(len(s.words) for s in sentences):
        return True
    raise line_error(
        path,
        blank[0],
        f"{FIELDS[tag]} is '_' (no value) on this word but given on others; tag every word to "
        "train or evaluate, or none to predict only",
    )


def read_conllu(path: Path, options: Options) -> list[dict[str, Any]]:
    """Sentences of a CoNLL-U file: {"words", "tags" (or None), "line", "where", "sent_id"}.

    `line` is the sentence's first word line; `sent_id` its `# sent_id` comment, or None.
    """
    path = Path(path)
    token, tag = fields_of(path, options)
    text = read_text(path, "a CoNLL-U file", encoding="utf-8-sig")
    sentences = _sentences(path, text)
    if not sentences:
        raise DataError(
            f"{path}: no sentences (no word lines); a CoNLL-U file has one word a line in 10 "
            "tab-separated fields, a blank line after each sentence"
        )
    untagged = _untagged(path, sentences, tag)
    rows = []
    for sentence in sentences:
        start = sentence.words[0][0]
        rows.append(
            {
                "words": [f[token] for _, f in sentence.words],
                "tags": None if untagged else [f[tag] for _, f in sentence.words],
                "line": start,
                "where": f"{path}:{start}",
                "sent_id": sentence.sent_id,
            }
        )
    return rows
