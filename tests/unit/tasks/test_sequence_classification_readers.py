"""The sequence classification task's readers: TSV, CSV and JSONL, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterkit.errors import DataError
from adapterkit.tasks.sequence_classification import (
    Options,
    SequenceClassification,
)

TASK = SequenceClassification()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tsv(path: Path, header: str, lines: list[str]) -> Path:
    return write(path, "\n".join([header, *lines]) + "\n")


# ---- reading ------------------------------------------------------------------------------------


def test_tsv_is_read_without_quote_processing(tmp_path):
    # GLUE's SST-2 has sentences that open a quote and never close it: one row per line regardless.
    path = tsv(
        tmp_path / "train.tsv",
        "sentence\tlabel",
        ['"the cat is happy\t1', "the dog said \"no , it's bad\t0", 'big " tree\t1'],
    )
    rows = TASK.read(path, Options())
    assert [r["text"] for r in rows] == [
        '"the cat is happy',
        "the dog said \"no , it's bad",
        'big " tree',
    ]
    assert [r["label"] for r in rows] == ["1", "0", "1"]
    assert [r["line"] for r in rows] == [2, 3, 4]
    assert rows[0]["where"] == f"{path}:2"
    assert all(r["text_pair"] is None for r in rows)


def test_tsv_windows_line_ends_and_extra_columns(tmp_path):
    path = write(tmp_path / "d.tsv", "id\tsentence\tlabel\r\n7\tthe cat\tpos\r\n8\ta dog\tneg\r\n")
    rows = TASK.read(path, Options())
    assert [(r["text"], r["label"]) for r in rows] == [("the cat", "pos"), ("a dog", "neg")]


def test_csv_handles_quoted_commas_and_multiline_fields(tmp_path):
    path = write(
        tmp_path / "d.csv",
        'text,label\n"hello, world",pos\n"two\nlines, here",neg\nplain,pos\n',
    )
    rows = TASK.read(path, Options(text_column="text"))
    assert [r["text"] for r in rows] == ["hello, world", "two\nlines, here", "plain"]
    assert [r["label"] for r in rows] == ["pos", "neg", "pos"]
    # A row's line is where it starts; the quoted newline pushes the next row to line 5.
    assert [r["line"] for r in rows] == [2, 3, 5]


def test_jsonl_int_labels_become_strings(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        '{"sentence": "the cat", "label": 1}\n\n{"sentence": "a dog", "label": 0, "x": 3}\n'
        '{"sentence": "sun", "label": 2.0}\n',
    )
    rows = TASK.read(path, Options())
    assert [r["label"] for r in rows] == ["1", "0", "2"]
    assert [r["line"] for r in rows] == [1, 3, 4]


def test_pair_file(tmp_path):
    path = tsv(
        tmp_path / "mrpc.tsv",
        "sentence1\tsentence2\tlabel",
        ["the cat is big\tthe big cat\t1", "a dog\tthe sun\t0"],
    )
    opts = Options(text_column="sentence1", text_pair_column="sentence2")
    rows = TASK.read(path, opts)
    assert [(r["text"], r["text_pair"], r["label"]) for r in rows] == [
        ("the cat is big", "the big cat", "1"),
        ("a dog", "the sun", "0"),
    ]


def test_file_without_label_column_reads_unlabelled(tmp_path):
    rows = TASK.read(tsv(tmp_path / "test.tsv", "sentence", ["the cat", "a dog"]), Options())
    assert [r["label"] for r in rows] == [None, None]
    rows = TASK.read(
        write(tmp_path / "t.jsonl", '{"sentence": "a"}\n{"sentence": "b"}\n'), Options()
    )
    assert [r["label"] for r in rows] == [None, None]


def test_format_option_overrides_extension(tmp_path):
    path = write(tmp_path / "data.txt", "sentence\tlabel\nthe cat\t1\na dog\t0\n")
    with pytest.raises(DataError, match=r"data\.txt: .*set task\.options\.format"):
        TASK.read(path, Options())
    assert len(TASK.read(path, Options(format="tsv"))) == 2


@pytest.mark.parametrize(
    ("name", "text", "options", "expected"),
    [
        (
            "d.tsv",
            "text\tlabel\nthe cat\t1\n",
            {},
            [":1: ", "no column 'sentence'", "'text', 'label'", "task.options.text_column"],
        ),
        (
            "d.tsv",
            "sentence1\tlabel\nthe cat\t1\n",
            {"text_column": "sentence1", "text_pair_column": "sentence2"},
            [":1: ", "'sentence2'", "task.options.text_pair_column"],
        ),
        (
            "d.csv",
            "text,label\nthe cat,1\n",
            {},
            [":1: ", "'sentence'", "task.options.text_column"],
        ),
        (
            "d.jsonl",
            '{"sentence": "a", "label": 1}\n{"text": "b", "label": 0}\n',
            {},
            [":2: ", "no field 'sentence'", "'text', 'label'", "task.options.text_column"],
        ),
        ("d.tsv", "sentence\tlabel\nthe cat\t1\na\tdog\t0\n", {}, [":3: ", "3 fields", "has 2"]),
        ("d.csv", "sentence,label\na,1\nb, c,0\n", {}, [":3: ", "3 fields", "quote a field"]),
        (
            "d.jsonl",
            '{"sentence": "a", "label": 1}\n{"sentence": "b", label: 0}\n',
            {},
            [":2: ", "invalid JSON"],
        ),
        ("d.jsonl", '[{"sentence": "a", "label": 1},\n', {}, [":1: ", "JSON array"]),
        ("d.jsonl", '["a", 1]\n', {}, [":1: ", "expected a JSON object"]),
        ("d.jsonl", '{"sentence": 5, "label": 1}\n', {}, [":1: ", "must be a string"]),
        ("d.tsv", "", {}, ["d.tsv: ", "empty"]),
        ("d.jsonl", "\n\n", {}, ["d.jsonl: ", "empty"]),
        ("d.tsv", "sentence\tlabel\n", {}, ["d.tsv: ", "only a header"]),
        ("d.tsv", "sentence\tlabel\nthe cat\t1\n   \t0\n", {}, [":3: ", "empty text"]),
        (
            "d.tsv",
            "sentence\tlabel\nthe cat\t1\na dog\t\n",
            {},
            [":3: ", "no label in 'label'", "label every row, or none"],
        ),
        (
            "d.jsonl",
            '{"sentence": "a"}\n{"sentence": "b", "label": 1}\n',
            {},
            [":2: ", "a label in 'label'", "label every row, or none"],
        ),
    ],
)
def test_read_errors_name_file_line_and_fix(tmp_path, name, text, options, expected):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        TASK.read(path, Options(**options))
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tsv: file not found"):
        TASK.read(tmp_path / "nope.tsv", Options())
