"""The extractive QA task: SQuAD/JSONL reading and its errors, windows and their character
offsets (the best span, scoring, training and planning: test_extractive_qa_scoring.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from qa_cases import (
    OPTS,
    ROOT,
    TASK,
    WORDS,
    long_rows,
    squad,
    write,
)

from adapterkit.errors import DataError, RecipeError
from adapterkit.tasks.extractive_qa import Options
from adapterkit.tasks.extractive_qa.windows import NO_CHAR, encode_windows
from adapterkit.testing import tiny_bert_tokenizer
from adapterkit.testing.fixtures import squad_rows


@pytest.fixture(scope="module")
def tok():
    return tiny_bert_tokenizer()


# ---- reading --------------------------------------------------------------------------------------


def as_jsonl(text: str, layout: str) -> str:
    """A SQuAD file's questions as JSONL rows (HF datasets layout: dict of lists; or a list)."""
    lines = []
    for article in json.loads(text)["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                answers = qa["answers"]
                if layout == "dict":
                    answers = {
                        "text": [a["text"] for a in answers],
                        "answer_start": [a["answer_start"] for a in answers],
                    }
                row = {"id": qa["id"], "context": p["context"], "question": qa["question"]}
                lines.append(json.dumps({**row, "answers": answers}))
    return "\n".join(lines) + "\n"


def test_squad_json_and_both_jsonl_layouts_read_the_same_questions(tmp_path: Path) -> None:
    text = squad_rows()
    keys = ("id", "question", "context", "answers", "impossible")
    read = [
        [{k: r[k] for k in keys} for r in TASK.read(write(tmp_path / name, body), OPTS)]
        for name, body in [
            ("a.json", text),
            ("b.jsonl", as_jsonl(text, "dict")),
            ("c.json", as_jsonl(text, "list")),  # .json holding one object a line: JSONL too
        ]
    ]
    assert len(read[0]) == 9 and read[0] == read[1] == read[2]
    first = read[0][0]
    assert first["context"][first["answers"][0]["start"] :].startswith(first["answers"][0]["text"])
    assert not any(r["impossible"] for r in read[0])


def test_squad_2_unanswerable_questions_and_setup(tmp_path: Path) -> None:
    context = "the cat is red . the dog is blue ."
    qas = [
        {
            "id": "a",
            "question": "what is the cat ?",
            "answers": [{"text": "red", "answer_start": 11}],
        },
        {
            "id": "b",
            "question": "what is the sun ?",
            "answers": [],
            "plausible_answers": [{"text": "blue", "answer_start": 28}],
            "is_impossible": True,
        },
    ]
    rows = TASK.read(
        write(tmp_path / "v2.json", squad([{"context": context, "qas": qas}], "v2.0")), OPTS
    )
    assert [(r["answers"], r["impossible"]) for r in rows] == [
        ([{"text": "red", "start": 11}], False),
        ([], True),
    ]
    assert TASK.setup(rows, OPTS).unanswerable is True
    assert TASK.setup(rows[:1], OPTS).unanswerable is False
    given = Options(unanswerable=False)
    assert TASK.setup(rows, given) is given  # the recipe's word wins
    unlabelled = [{**rows[0], "answers": None}]
    with pytest.raises(DataError, match="training questions need 'answers'"):
        TASK.setup(unlabelled, OPTS)


def _qa(qid: str, answers: list | None = None, **extra) -> dict:
    row = {"id": qid, "question": "what is the cat ?", **extra}
    return row if answers is None else {**row, "answers": answers}


RED = [{"text": "red", "answer_start": 11}]
BAD_SQUAD = {
    "answer_start off by one": (
        [_qa("q0", RED), _qa("q1", [{"text": "red", "answer_start": 12}])],
        r"data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id q1\): answer 0 'red' does not match the "
        r"context at answer_start 12 \(the context has 'ed ' there; the text occurs at 11\)",
    ),
    "answer not in the context": (
        [_qa("q0", [{"text": "green", "answer_start": 3}])],
        r"qas\[0\] \(id q0\): answer 0 'green' .*the text is not in the context",
    ),
    "no question": ([{"id": "q0", "answers": RED}], r"qas\[0\] \(id q0\): no 'question' field"),
    "impossible with answers": (
        [_qa("q0", RED, is_impossible=True)],
        r"'is_impossible' is true, yet it has 1 answer",
    ),
    "a repeated id": ([_qa("q0", RED), _qa("q0", RED)], r"qas\[1\] \(id q0\): id 'q0' repeated"),
    "answers on some questions only": (
        [_qa("q0", RED), _qa("q1")],
        r"qas\[1\] \(id q1\): has no 'answers', unlike the questions before it",
    ),
    "a negative answer_start": (
        [_qa("q0", [{"text": "red", "answer_start": -1}])],
        r"answer_start must be an int >= 0, got -1",
    ),
}


@pytest.mark.parametrize("what", BAD_SQUAD)
def test_bad_squad_input_names_the_file_and_the_question(what: str, tmp_path: Path) -> None:
    qas, message = BAD_SQUAD[what]
    path = write(tmp_path / "bad.json", squad([{"context": "the cat is red .", "qas": qas}]))
    with pytest.raises(DataError, match=message) as exc:
        TASK.read(path, OPTS)
    assert str(exc.value).startswith(f"{path}: data[0]")


def test_bad_jsonl_and_json_name_the_file_and_line(tmp_path: Path) -> None:
    good = {"id": "a", "context": "the cat is red .", "question": "what is the cat ?"}
    rows = [
        {**good, "answers": {"text": ["red"], "answer_start": [11]}},
        {**good, "id": "b", "answers": {"text": ["red"], "answer_start": [10]}},
    ]
    path = write(tmp_path / "bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad\.jsonl:2 \(id b\): answer 0 'red' does not match"):
        TASK.read(path, OPTS)
    path = write(tmp_path / "odd.jsonl", json.dumps({**good, "answers": {"text": ["red"]}}))
    with pytest.raises(DataError, match=r"odd\.jsonl:1 \(id a\): 'answers' must hold the lists"):
        TASK.read(path, OPTS)
    path = write(tmp_path / "broken.json", '{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(DataError, match=r"broken\.json:2: invalid JSON"):
        TASK.read(path, OPTS)
    with pytest.raises(DataError, match=r"no\.json: file not found"):
        TASK.read(tmp_path / "no.json", OPTS)
    with pytest.raises(DataError, match=r"needs a list 'data'"):
        TASK.read(write(tmp_path / "x.json", "[1, 2]"), OPTS)


def test_the_cli_exits_2_on_a_bad_answer_offset(tmp_path: Path, bert_dir: Path) -> None:
    from click.testing import CliRunner

    from adapterkit.cli import cli

    qas = [_qa("q0", [{"text": "red", "answer_start": 2}])]
    write(tmp_path / "bad.json", squad([{"context": "the cat is red .", "qas": qas}]))
    recipe = write(
        tmp_path / "r.yaml",
        f"model: {{name: {bert_dir}}}\ntask: {{name: extractive_qa}}\ndata: {{train: bad.json}}\n"
        "strategy: {name: head}\ntrain: {max_steps: 1}\n",
    )
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "bad.json: data[0].paragraphs[0].qas[0] (id q0): answer 0 'red' does not match" in (
        result.output
    )
    assert "Traceback" not in result.output


# ---- windows ----------------------------------------------------------------------------------


def context_tokens(window: dict) -> list[tuple[int, int]]:
    return [tuple(o) for o in window["offsets"] if o[0] != NO_CHAR]


def test_windows_overlap_by_doc_stride_and_map_every_answer_back_exactly(tok) -> None:
    rows = long_rows()
    windows = encode_windows(rows, tok, OPTS, labelled=True)
    context = rows[0]["context"]
    crossing = 0
    for q, row in enumerate(rows):
        mine = [w for w in windows if w["question"] == q]
        spans = [context_tokens(w) for w in mine]
        assert len(mine) == 4 and all(len(w["input_ids"]) <= OPTS.max_length for w in mine)
        for a, b in itertools.pairwise(spans):  # neighbours share doc_stride tokens
            assert a[-OPTS.doc_stride :] == b[: OPTS.doc_stride]
        covered = sorted({t for s in spans for t in s})
        assert [context[s:e] for s, e in covered] == WORDS  # every context token, in order
        answer = row["answers"][0]
        start, end = answer["start"], answer["start"] + len(answer["text"])
        for w, span in zip(mine, spans, strict=True):
            inside = span[0][0] <= start and end <= span[-1][1]
            s, e = w["start_positions"], w["end_positions"]
            if inside:
                first, last = w["offsets"][s][0], w["offsets"][e][1]
                assert (first, last) == (start, end)
                assert context[first:last] == answer["text"]
            else:
                assert (s, e) == (0, 0)  # [CLS]: the answer is not wholly in this window
                crossing += span[0][0] < end and start < span[-1][1]  # partly inside
            assert w["context_base"] == span[0][0]
            assert "".join(map(chr, w["context_codes"])) == context[span[0][0] : span[-1][1]]
    assert crossing >= 2  # answers cut by a window edge: (22, 3) and (23, 2) at least


def test_windows_of_a_real_tokenizer_map_answers_back_to_their_characters() -> None:
    """MiniLM's WordPiece on the shipped SQuAD dev subset: each window's trained span is the
    answer's characters exactly, unless the annotated answer starts or ends inside a word."""
    from transformers import AutoTokenizer

    from adapterkit.storage.sources import resolve

    real = AutoTokenizer.from_pretrained(resolve("minilm-l6").path)
    opts = Options(max_length=128, doc_stride=32)
    rows = TASK.read(ROOT / "data" / "squad" / "dev.json", opts)
    windows = encode_windows(rows, real, opts, labelled=True)
    assert len(windows) > 1.5 * len(rows)  # many contexts need several windows at 128 tokens
    exact, inside_a_word, held = 0, 0, set()
    for w in windows:
        row = rows[w["question"]]
        answer = row["answers"][0]
        start, end = answer["start"], answer["start"] + len(answer["text"])
        if w["start_positions"] == 0:
            continue
        held.add(w["question"])
        first = w["offsets"][w["start_positions"]][0]
        last = w["offsets"][w["end_positions"]][1]
        if (first, last) == (start, end):
            exact += 1
            continue
        tokens = [tuple(o) for o in w["offsets"] if o[0] != NO_CHAR]
        assert any(s < start < e or s < end < e for s, e in tokens), (answer, first, last)
        inside_a_word += 1
    assert held == set(range(len(rows)))  # every answer is trained in some window
    assert inside_a_word <= exact // 100


def test_a_window_too_small_for_question_and_stride_is_a_recipe_error(tok) -> None:
    with pytest.raises(RecipeError, match="must be more than doc_stride 21"):
        encode_windows(
            long_rows(), tok, Options(max_length=32, doc_stride=21, max_question_length=8), True
        )
