"""The extractive QA task: SQuAD/JSONL reading, windows and their character offsets, the best span
over all windows, unanswerable questions, exact match and F1 against the official SQuAD script
(on prediction files the task produced), training, prediction and planning on tiny models."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adapterkit.errors import DataError, RecipeError
from adapterkit.storage.sources import ModelSource
from adapterkit.tasks.extractive_qa import ExtractiveQA, Options, squad_scores
from adapterkit.tasks.extractive_qa.postprocess import answers_by_question, window_spans
from adapterkit.tasks.extractive_qa.windows import NO_CHAR, collate_windows, encode_windows
from adapterkit.testing import tiny_bert_tokenizer
from adapterkit.testing.fixtures import squad_rows

ROOT = Path(__file__).resolve().parents[3]
OFFICIAL = ROOT / "tests" / "data" / "squad" / "evaluate-v1.1.py"  # byte for byte, see its README
DEV_SAMPLE = ROOT / "tests" / "data" / "squad" / "dev_sample.json"
TASK = ExtractiveQA()
OPTS = Options(max_length=32, doc_stride=8, max_question_length=8, max_answer_length=4)
# 60 one-token words of the tiny BERT vocabulary: w0 ... w59 of a long context.
WORDS = (
    "the a an is are was be to of and in on for with it this that you i he she we they what how "
    "why who when where write give list name tell explain describe make find answer question yes "
    "no good bad one two three four five six seven eight nine ten hello world cat dog sun moon"
).split()


@pytest.fixture(scope="module")
def tok():
    return tiny_bert_tokenizer()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def squad(paragraphs: list[dict], version: str = "1.1") -> str:
    return json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]})


def official(data: Path, predictions: dict[str, str], tmp_path: Path) -> dict[str, float]:
    """evaluate-v1.1.py's figures for a prediction file {id: answer text}."""
    pred = write(tmp_path / "predictions.json", json.dumps(predictions))
    out = subprocess.run(
        [sys.executable, str(OFFICIAL), str(data), str(pred)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


class FakeQA(nn.Module):
    """Start/end logits per token id from a table: the span a rule picks, whatever the window."""

    def __init__(self, tok, start: dict[str, float], end: dict[str, float]) -> None:
        super().__init__()
        vocab = tok.get_vocab()
        self.table = nn.Embedding(max(vocab.values()) + 1, 2)
        with torch.no_grad():
            self.table.weight.zero_()
            self.table.weight[vocab["[CLS]"]] = torch.tensor([0.5, 0.5])  # the null score: 1
            for word, value in start.items():
                self.table.weight[vocab[word], 0] = value
            for word, value in end.items():
                self.table.weight[vocab[word], 1] = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.table(input_ids)
        return SimpleNamespace(start_logits=logits[..., 0], end_logits=logits[..., 1])


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


def long_rows() -> list[dict]:
    """One 60-word context (one token a word) and a question per answer span of 1 to 3 words."""
    context = " ".join(WORDS)
    starts = [len(" ".join(WORDS[:i])) + (1 if i else 0) for i in range(len(WORDS))]
    rows = []
    for i, (first, size) in enumerate(
        [(0, 1), (5, 2), (22, 3), (23, 2), (30, 1), (39, 2), (59, 1)]
    ):
        text = " ".join(WORDS[first : first + size])
        assert context[starts[first] :].startswith(text)
        answers = [{"text": text, "start": starts[first]}]
        rows.append({"id": str(i), "question": "what is the cat ?", "context": context,
                     "answers": answers, "impossible": False, "where": f"row {i}"})  # fmt: skip
    return rows


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


# ---- the best span ----------------------------------------------------------------------------


def spans_of(rows: list[dict], tok, start: torch.Tensor, end: torch.Tensor, opts: Options):
    windows = encode_windows(rows, tok, opts, labelled=True)
    batch = collate_windows(windows, tok)
    return windows, window_spans(batch, start, end, opts)


def logits_at(windows: list[dict], marks: dict[tuple[int, int], float], width: int) -> torch.Tensor:
    """[windows, width] logits of -10, `value` at each mark (window, word of the context).

    A window holds 24 context words (32 tokens less a 5-token question and 3 special tokens);
    window k starts at word 16k (24 - doc_stride 8).
    """
    out = torch.full((len(windows), width), -10.0)
    for (w, word), value in marks.items():
        positions = [i for i, o in enumerate(windows[w]["offsets"]) if o[0] != NO_CHAR]
        out[w, positions[word - 16 * w]] = value
    return out


def test_the_best_span_over_all_windows_is_mapped_back_to_characters(tok) -> None:
    rows = long_rows()[:1]
    windows = encode_windows(rows, tok, OPTS, labelled=True)
    width = max(len(w["input_ids"]) for w in windows)
    # window k holds context words 16k .. 16k+23; marks are (window, word of the context)
    start = logits_at(windows, {(0, 3): 2.0, (1, 20): 3.0, (2, 40): 9.0, (3, 50): 4.0}, width)
    end = logits_at(windows, {(0, 4): 2.0, (1, 21): 3.0, (2, 38): 9.0, (3, 55): 9.0}, width)
    start[:, 1] = end[:, 1] = 50.0  # a question token: never part of a span
    _, found = spans_of(rows, tok, start, end, OPTS)
    answer = answers_by_question(found, OPTS, unanswerable=False)[0]
    # (2, 40)..(2, 38) ends before it starts; (3, 50)..(3, 55) is 6 tokens > max_answer_length 4
    assert answer.text == " ".join(WORDS[20:22]) and answer.start is not None
    assert rows[0]["context"][answer.start :].startswith(answer.text)
    assert 0 < answer.score < 1
    assert answer.logit == pytest.approx(6.0)


def test_a_span_two_windows_share_counts_once(tok) -> None:
    rows = long_rows()[:1]
    windows = encode_windows(rows, tok, OPTS, labelled=True)
    width = max(len(w["input_ids"]) for w in windows)
    shared = {(0, 20): 5.0, (1, 20): 5.0}  # word 20 is in windows 0 and 1
    start, end = logits_at(windows, shared, width), logits_at(windows, shared, width)
    _, found = spans_of(rows, tok, start, end, OPTS)
    two = dataclasses.replace(OPTS, n_best=2)
    answer = answers_by_question(found, two, unanswerable=False)[0]
    assert (answer.text, answer.logit) == (WORDS[20], 10.0)
    # the 2-best: word 20 (10) once, then a span with one end on it (-5); not 10 twice (p = 0.5)
    assert answer.score == pytest.approx(1 / (1 + math.exp(-15.0)))


def test_unanswerable_questions_compare_the_null_score_with_the_best_span(tok) -> None:
    rows = long_rows()[:1]
    windows = encode_windows(rows, tok, OPTS, labelled=True)
    width = max(len(w["input_ids"]) for w in windows)
    start = logits_at(windows, {(1, 20): 2.0}, width)
    end = logits_at(windows, {(1, 20): 2.0}, width)
    start[:, 0] = end[:, 0] = 3.0  # [CLS]: null score 6 in every window
    start[2, 0] = 2.5  # the lowest null score over the windows is the one compared: 5.5
    _, found = spans_of(rows, tok, start, end, OPTS)
    assert answers_by_question(found, OPTS, unanswerable=False)[0].text == WORDS[20]
    none = answers_by_question(found, OPTS, unanswerable=True)[0]
    assert (none.text, none.start, none.logit) == (None, None, 5.5)
    lenient = dataclasses.replace(OPTS, null_threshold=2.0)  # 5.5 - 4 = 1.5 <= 2
    assert answers_by_question(found, lenient, unanswerable=True)[0].text == WORDS[20]


def test_unanswerable_windows_train_on_cls_and_score_as_squad_2(tok, tmp_path: Path) -> None:
    a = {
        "id": "a",
        "question": "what is the cat ?",
        "answers": [{"text": "red", "answer_start": 11}],
    }
    b = {"id": "b", "question": "what is the sun ?", "answers": [], "is_impossible": True}
    paragraphs = [
        {"context": "the cat is red . the dog is blue .", "qas": [a]},
        {"context": "the dog is blue .", "qas": [b]},
    ]
    path = write(tmp_path / "v2.json", squad(paragraphs, "v2.0"))
    opts = TASK.setup(TASK.read(path, OPTS), OPTS)
    rows = TASK.read(path, opts)
    examples = TASK.encode(rows, tok, opts)
    assert [(e["start_positions"], e["end_positions"]) for e in examples][1] == (0, 0)
    # "red" (4) beats the null score (1) for a; b's best span, "blue" (0.3), does not
    model = FakeQA(tok, {"red": 2.0, "blue": 0.1}, {"red": 2.0, "blue": 0.2})
    batches = [TASK.collate(examples, tok, opts)]
    metrics = TASK.evaluate(model, batches, opts)
    assert (metrics["exact_match"], metrics["f1"]) == (100.0, 100.0)
    predicted = TASK.predict(model, tok, rows, opts)
    assert [(p["id"], p["answer"], p["start"]) for p in predicted] == [
        ("a", "red", 11),
        ("b", None, None),
    ]
    as_v1 = dataclasses.replace(opts, unanswerable=False)  # never "no answer": b is wrong
    assert TASK.evaluate(model, batches, as_v1)["exact_match"] == 50.0
    assert squad_scores([None, "red", ""], [[], [], []]) == {"exact_match": 200 / 3, "f1": 200 / 3}


# ---- exact match and F1: the official script ----------------------------------------------------


def test_scores_equal_the_official_script_on_a_prediction_file(tmp_path: Path) -> None:
    rows = TASK.read(DEV_SAMPLE, OPTS)
    variants = [
        lambda a: a,
        lambda a: f"The {a}.",  # articles and punctuation are normalised away
        lambda a: " ".join(a.split()[: max(1, len(a.split()) // 2)]),  # partial overlap
        lambda a: f"{a} and more words here",
        lambda a: "Denver",
        lambda a: "",
    ]
    predictions = {
        r["id"]: variants[i % len(variants)](r["answers"][0]["text"]) for i, r in enumerate(rows)
    }
    ours = squad_scores(
        [predictions[r["id"]] for r in rows], [[a["text"] for a in r["answers"]] for r in rows]
    )
    theirs = official(DEV_SAMPLE, predictions, tmp_path)
    assert ours == theirs  # exactly, not approximately
    assert 0 < ours["exact_match"] < ours["f1"] < 100


def graded_rows() -> str:
    """Questions a fixed rule answers right, partly and wrongly (see the test below)."""
    filler = " the dog is blue ." * 5
    paragraphs = [
        ("the cat is red . the dog is blue .", [("cat", "red", 11), ("dog", "blue", 28)]),
        ("the sun is big and red ." + filler, [("sun", "big and red", 11)]),  # two windows
        ("the moon is small .", [("moon", "small", 12)]),
    ]
    return squad(
        [
            {
                "context": context,
                "qas": [
                    {
                        "id": f"{noun}{i}",
                        "question": f"what is the {noun} ?",
                        "answers": [{"text": text, "answer_start": at}],
                    }
                    for noun, text, at in qas
                ],
            }
            for i, (context, qas) in enumerate(paragraphs)
        ]
    )


def test_the_tasks_own_predictions_score_as_the_official_script_says(tok, tmp_path: Path) -> None:
    data = write(tmp_path / "graded.json", graded_rows())
    opts = TASK.setup(TASK.read(data, OPTS), OPTS)
    rows = TASK.read(data, opts)
    # "red" (4) where the context has it, else "is ... ." (1.5): right for the cat, partly right
    # for the sun ("red" of "big and red") and the moon ("is small ."), wrong for the dog
    model = FakeQA(tok, {"red": 2.0, "is": 1.0}, {"red": 2.0, ".": 0.5})
    predicted = TASK.predict(model, tok, rows, opts, batch_size=3)
    for p, row in zip(predicted, rows, strict=True):
        assert p["id"] == row["id"] and 0 <= p["score"] <= 1
        assert row["context"][p["start"] : p["start"] + len(p["answer"])] == p["answer"]
    theirs = official(data, {p["id"]: p["answer"] for p in predicted}, tmp_path)
    examples = TASK.encode(rows, tok, opts)
    for size in (1, 5, 64):  # windows of one question in different batches
        batches = [
            TASK.collate(examples[i : i + size], tok, opts) for i in range(0, len(examples), size)
        ]
        metrics = TASK.evaluate(model, batches, opts)
        assert (metrics["exact_match"], metrics["f1"]) == (theirs["exact_match"], theirs["f1"])
    assert [p["answer"] for p in predicted] == ["red", "red", "red", "is small ."]
    assert theirs["exact_match"] == 25.0 and theirs["f1"] == pytest.approx(
        100 * (1 + 0.5 + 2 / 3) / 4
    )
    assert metrics["eval_questions"] == 4 and metrics["eval_windows"] == len(examples) == 5


# ---- the model, training, the planner ------------------------------------------------------------


def test_train_then_predict_and_eval_through_the_cli(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three steps of `full` on the tiny BERT: the loss falls, and `adapterkit eval --json`
    prints the figures the official script computes on `adapterkit predict`'s file."""
    from click.testing import CliRunner

    from adapterkit import api
    from adapterkit.cli import cli
    from adapterkit.recipe import resolve

    monkeypatch.setenv("ADAPTERKIT_AUTO_PRECISION", "fp32")  # bf16 autocast is slow on a CPU
    write(tmp_path / "train.json", squad_rows())
    recipe = write(
        tmp_path / "r.yaml",
        f"model: {{name: {bert_dir}}}\n"
        "task: {name: extractive_qa, options: {max_length: 32, doc_stride: 8, "
        "max_question_length: 8, max_answer_length: 4}}\n"
        "data: {train: train.json, eval: train.json}\n"
        "strategy: {name: full}\n"
        "train: {max_steps: 3, batch_size: 8, lr: 0.005, schedule: constant, seed: 0}\n",
    )
    out = tmp_path / "out"
    metrics = api.train(resolve(recipe), out, progress=False)
    assert metrics["final_eval"]["eval_loss"] < metrics["initial_eval"]["eval_loss"]
    runner = CliRunner()
    printed = runner.invoke(
        cli, ["eval", "--adapter", str(out), "--data", str(tmp_path / "train.json"), "--json"]
    )
    assert printed.exit_code == 0, printed.output
    figures = json.loads(printed.stdout)
    wrote = runner.invoke(
        cli,
        [
            "predict",
            "--adapter",
            str(out),
            str(tmp_path / "train.json"),
            "--out",
            str(tmp_path / "p.jsonl"),
        ],
    )
    assert wrote.exit_code == 0, wrote.output
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and set(lines[0]) == {
        "id",
        "question",
        "answer",
        "start",
        "score",
        "line",
    }
    theirs = official(
        tmp_path / "train.json", {p["id"]: p["answer"] or "" for p in lines}, tmp_path
    )
    assert (figures["exact_match"], figures["f1"]) == (theirs["exact_match"], theirs["f1"])


def test_the_head_is_qa_outputs_and_the_planner_plans_it(bert_dir: Path) -> None:
    from adapterkit.plan.memory import plan
    from adapterkit.storage.sources import load_config

    source = ModelSource(name="tiny", path=bert_dir, gguf_sha256=None)
    parts = TASK.model_parts(source, OPTS)
    assert parts.head == ("qa_outputs",) and parts.new_head
    assert TASK.logits_bytes(2, 16, load_config(source), OPTS) == 3 * 2 * 16 * 2 * 4
    (head,) = plan(str(bert_dir), "extractive_qa", ["head"], None, 4, 64, "cpu", OPTS)
    assert head.trainable_params == 32 * 2 + 2  # qa_outputs: hidden 32 -> start, end


def test_a_decoder_qa_model_loads_its_base_weights(llama_dir: Path) -> None:
    """LlamaForQuestionAnswering names its base `transformer`, the checkpoint `model.`."""
    from safetensors.torch import load_file

    source = ModelSource(name="tiny-llama", path=llama_dir, gguf_sha256=None)
    model, _ = TASK.load_model(source, OPTS, {})
    saved = load_file(str(llama_dir / "model.safetensors"))
    loaded = dict(model.named_parameters())
    for name in ("embed_tokens.weight", "layers.1.mlp.up_proj.weight", "norm.weight"):
        assert torch.equal(loaded[f"transformer.{name}"], saved[f"model.{name}"]), name
