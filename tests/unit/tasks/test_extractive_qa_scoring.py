"""The extractive QA task: the best span over all windows, unanswerable questions, exact match
and F1 against the official SQuAD script (on prediction files the task produced), training,
prediction and planning on tiny models."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from qa_cases import (
    DEV_SAMPLE,
    OPTS,
    TASK,
    WORDS,
    FakeQA,
    long_rows,
    official,
    squad,
    write,
)

from adapterkit.storage.sources import ModelSource
from adapterkit.tasks.extractive_qa import Options, squad_scores
from adapterkit.tasks.extractive_qa.postprocess import answers_by_question, window_spans
from adapterkit.tasks.extractive_qa.windows import NO_CHAR, collate_windows, encode_windows
from adapterkit.testing import tiny_bert_tokenizer
from adapterkit.testing.fixtures import squad_rows


@pytest.fixture(scope="module")
def tok():
    return tiny_bert_tokenizer()


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
    from adapterkit.planning.memory import plan
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
