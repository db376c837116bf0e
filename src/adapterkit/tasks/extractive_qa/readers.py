"""Reading extractive QA data: SQuAD JSON files and JSONL rows; errors name the file and the item.

    SQuAD   {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
            "answers": [{"text", "answer_start"}], "is_impossible" (SQuAD 2.0)}]}]}]}
    JSONL   {"id", "context", "question", "answers": {"text": [...], "answer_start": [...]}}
            per line (the Hugging Face datasets layout; a SQuAD-style list of answers works too)

`format: auto` reads `.jsonl` as JSONL and `.json` as a SQuAD file (or as JSONL when it holds one
object a line). A question with no `answers` at all is unlabelled (a file to predict); an empty
answer list, or `is_impossible: true`, marks a question the context does not answer. Every answer
must be found in its context at its `answer_start` (characters of the decoded text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError
from adapterkit.tasks._io import line_error, read_jsonl, read_text

if TYPE_CHECKING:
    from adapterkit.tasks.extractive_qa import Options

Row = dict[str, Any]


def _text(where: str, record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if key not in record:
        raise DataError(f"{where}: no {key!r} field")
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def _answer_pairs(where: str, answers: Any) -> list[tuple[Any, Any]]:
    """(text, answer_start) pairs from either layout: a list of dicts, or a dict of two lists."""
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise DataError(
                f"{where}: 'answers' must hold the lists 'text' and 'answer_start', "
                f"got {sorted(answers)}"
            )
        if len(texts) != len(starts):
            raise DataError(
                f"{where}: 'answers' has {len(texts)} texts but {len(starts)} answer_start values"
            )
        return list(zip(texts, starts, strict=True))
    if isinstance(answers, list):
        pairs = []
        for n, item in enumerate(answers):
            if not isinstance(item, dict) or "text" not in item or "answer_start" not in item:
                raise DataError(f"{where}: answers[{n}] must be {{'text', 'answer_start'}}")
            pairs.append((item["text"], item["answer_start"]))
        return pairs
    raise DataError(f"{where}: 'answers' must be a list or a dict, got {type(answers).__name__}")


def _answers(where: str, context: str, answers: Any) -> list[dict[str, Any]]:
    """[{"text", "start"}], each checked against the context at its character offset."""
    out = []
    for n, (text, start) in enumerate(_answer_pairs(where, answers)):
        if not isinstance(text, str) or not text:
            raise DataError(f"{where}: answer {n} has no text (got {text!r})")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise DataError(f"{where}: answer {n}: answer_start must be an int >= 0, got {start!r}")
        found = context[start : start + len(text)]
        if found != text:
            at = context.find(text)
            hint = f"; the text occurs at {at}" if at >= 0 else "; the text is not in the context"
            raise DataError(
                f"{where}: answer {n} {text!r} does not match the context at answer_start "
                f"{start} (the context has {found!r} there{hint})"
            )
        out.append({"text": text, "start": start})
    return out


def _question(where: str, context: str, qa: dict[str, Any], qid: str) -> Row:
    """One row: id, question, context, answers (None = unlabelled), impossible."""
    question = _text(where, qa, "question")
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise DataError(f"{where}: 'is_impossible' must be true or false, got {impossible!r}")
    answers = _answers(where, context, qa["answers"]) if "answers" in qa else None
    if impossible and answers:
        raise DataError(f"{where}: 'is_impossible' is true, yet it has {len(answers)} answer(s)")
    if impossible:
        answers = []
    return {
        "id": qid,
        "question": question,
        "context": context,
        "answers": answers,
        "impossible": answers == [],
        "where": where,
    }


def _id(where: str, record: dict[str, Any], default: str) -> str:
    qid = record.get("id", default)
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise DataError(f"{where}: 'id' must be a string, got {type(qid).__name__}")
    return str(qid)


def _items(path: Path, data: Any, key: str, where: str) -> list[Any]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: {where} needs a list {key!r}")
    return items


def _squad_questions(path: Path, top: Any) -> Iterator[Row]:
    for i, article in enumerate(_items(path, top, "data", "the file")):
        for j, paragraph in enumerate(_items(path, article, "paragraphs", f"data[{i}]")):
            at = f"data[{i}].paragraphs[{j}]"
            context = _text(f"{path}: {at}", paragraph, "context")
            for k, qa in enumerate(_items(path, paragraph, "qas", at)):
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: {at}.qas[{k}] must be an object")
                qid = _id(f"{path}: {at}.qas[{k}]", qa, f"{i}.{j}.{k}")
                where = f"{path}: {at}.qas[{k}] (id {qid})"
                yield {**_question(where, context, qa, qid), "line": None}


def _jsonl_questions(path: Path) -> Iterator[Row]:
    for lineno, record in read_jsonl(path, "a JSONL file of questions"):
        where = f"{path}:{lineno}"
        qid = _id(where, record, f"line-{lineno}")
        context = _text(where, record, "context")
        yield {**_question(f"{where} (id {qid})", context, record, qid), "line": lineno}


def _is_jsonl(path: Path, options: Options) -> tuple[bool, Any]:
    """(True, None) for JSONL, or (False, the parsed SQuAD file)."""
    if options.format == "jsonl" or (options.format == "auto" and path.suffix == ".jsonl"):
        return True, None
    text = read_text(path, "a SQuAD JSON file", encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{path}: no examples (the file is empty)")
    try:
        return False, json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and options.format == "auto":
            return True, None  # one object a line
        msg = f"invalid JSON ({exc.msg} at column {exc.colno})"
        raise line_error(path, exc.lineno, msg) from None


def _check_ids(rows: list[Row]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        first = seen.setdefault(row["id"], row["where"])
        if first != row["where"]:
            raise DataError(f"{row['where']}: id {row['id']!r} repeated (first at {first})")


def _check_labelled(rows: list[Row]) -> None:
    """Every question labelled, or none (a file to predict); never a mix."""
    first = rows[0]["answers"] is not None
    odd = next((r for r in rows if (r["answers"] is not None) != first), None)
    if odd is not None:
        has = "has no 'answers'" if first else "has 'answers'"
        raise DataError(
            f"{odd['where']}: {has}, unlike the questions before it; give every question its "
            "answers (an empty list for an unanswerable one), or none (a file to predict)"
        )


def read_questions(path: Path, options: Options) -> list[Row]:
    """Rows {"id", "question", "context", "answers", "impossible", "line", "where"}."""
    path = Path(path)
    jsonl, top = _is_jsonl(path, options)
    rows = list(_jsonl_questions(path) if jsonl else _squad_questions(path, top))
    if not rows:
        raise DataError(f"{path}: no questions in the file")
    _check_ids(rows)
    _check_labelled(rows)
    return rows
