"""The sequence classification task: labels, metrics, loss, prediction (readers: see
test_sequence_classification_readers.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adapterkit.errors import DataError
from adapterkit.storage.sources import ModelSource
from adapterkit.tasks.sequence_classification import (
    IGNORE,
    Options,
    SequenceClassification,
    classification_metrics,
)
from adapterkit.testing import save_tiny_llama_dir, tiny_bert_tokenizer

TASK = SequenceClassification()

SENTENCES = [
    "the cat is happy .",
    "the dog is sad .",
    "a big red tree",
    "water and fire",
    "good night , moon !",
    "one two three four five six seven eight nine ten",
    "this is bad",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tsv(path: Path, header: str, lines: list[str]) -> Path:
    return write(path, "\n".join([header, *lines]) + "\n")


@pytest.fixture(scope="module")
def bert(bert_dir: Path):
    opts = Options(labels=["0", "1", "2"])
    torch.manual_seed(0)
    model, tok = TASK.load_model(ModelSource("tiny-bert", bert_dir, None), opts, {})
    return model.eval(), tok, opts


def labelled_rows(n: int = 7) -> list[dict]:
    return [
        {
            "text": SENTENCES[i % len(SENTENCES)],
            "text_pair": None,
            "label": str(i % 3),
            "line": i + 2,
            "where": f"mem:{i + 2}",
        }
        for i in range(n)
    ]


# ---- labels -------------------------------------------------------------------------------------


def test_setup_infers_sorted_labels(tmp_path):
    rows = [{"label": x, "where": f"f:{i}"} for i, x in enumerate(["pos", "neg", "pos", "mixed"])]
    opts = Options()
    assert TASK.setup(rows, opts).labels == ["mixed", "neg", "pos"]
    assert opts.labels is None  # a new options object, the recipe's is untouched
    numeric = [{"label": x, "where": "f:1"} for x in ["10", "2", "1", "2"]]
    assert TASK.setup(numeric, opts).labels == ["1", "2", "10"]  # by value, not as text


def test_setup_errors():
    one = [{"label": "1", "where": "t.tsv:2"}, {"label": "1", "where": "t.tsv:3"}]
    with pytest.raises(DataError, match=r"t\.tsv:2: every training row has the label '1'"):
        TASK.setup(one, Options())
    with pytest.raises(DataError, match=r"t\.tsv:2: training rows need labels"):
        TASK.setup([{"label": None, "where": "t.tsv:2"}], Options())
    given = Options(labels=["neg", "pos"])
    rows = [{"label": "pos", "where": "t.tsv:2"}, {"label": "meh", "where": "t.tsv:3"}]
    with pytest.raises(DataError, match=r"t\.tsv:3: label 'meh' is not one of .*neg, pos"):
        TASK.setup(rows, given)
    assert TASK.setup(rows[:1], given).labels == ["neg", "pos"]  # given order is kept


def test_eval_row_with_unseen_label_names_file_and_line(tmp_path):
    train = TASK.read(
        tsv(tmp_path / "train.tsv", "sentence\tlabel", ["a\tpos", "b\tneg"]), Options()
    )
    opts = TASK.setup(train, Options())
    dev = TASK.read(tsv(tmp_path / "dev.tsv", "sentence\tlabel", ["a\tpos", "b\tmeh"]), opts)
    with pytest.raises(DataError) as info:
        TASK.encode(dev, tiny_bert_tokenizer(), opts)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'dev.tsv'}:3: label 'meh'"), msg
    assert "neg, pos" in msg


# ---- metrics ------------------------------------------------------------------------------------


def test_metrics_by_hand():
    labels = ["a", "b", "c"]
    truths = [0, 0, 1, 1, 2, 2]  # a a b b c c
    preds = [0, 1, 1, 1, 0, 2]  # a b b b a c
    m = classification_metrics(preds, truths, labels)
    # correct: rows 0, 2, 3, 5 -> 4 of 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: tp 1 (row 0), predicted a twice (rows 0, 4), true a twice -> P 1/2, R 1/2, F1 1/2
    assert m["precision/a"] == pytest.approx(0.5)
    assert m["recall/a"] == pytest.approx(0.5)
    assert m["f1/a"] == pytest.approx(0.5)
    # b: tp 2, predicted b 3 times (rows 1, 2, 3), true b twice -> P 2/3, R 1, F1 2*(2/3)/(5/3) = 0.8
    assert m["precision/b"] == pytest.approx(2 / 3)
    assert m["recall/b"] == pytest.approx(1.0)
    assert m["f1/b"] == pytest.approx(0.8)
    # c: tp 1, predicted once (row 5), true twice -> P 1, R 1/2, F1 2*(1/2)/(3/2) = 2/3
    assert m["precision/c"] == pytest.approx(1.0)
    assert m["recall/c"] == pytest.approx(0.5)
    assert m["f1/c"] == pytest.approx(2 / 3)
    # macro F1 = (0.5 + 0.8 + 2/3) / 3 = 1.9667 / 3 = 0.65556
    assert m["macro_f1"] == pytest.approx(0.655555, abs=1e-5)
    assert "f1" not in m  # not binary
    assert all(type(v) is float for v in m.values())
    json.dumps(m)


def test_binary_metrics_report_positive_f1_and_zero_for_empty_classes():
    # truths 1 1 0 0, preds 1 0 0 0: positive "1": tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3
    m = classification_metrics([1, 0, 0, 0], [1, 1, 0, 0], ["0", "1"])
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["f1"] == m["f1/1"]
    # "0": tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 0.8; macro (0.8 + 2/3) / 2 = 0.73333
    assert m["macro_f1"] == pytest.approx(0.733333, abs=1e-5)
    # Named labels: the positive class is the second one.
    m = classification_metrics([0, 0], [0, 0], ["neg", "pos"])
    # "pos" never predicted, never present: P, R, F1 are all 0 by definition; macro (1 + 0) / 2.
    assert (m["precision/pos"], m["recall/pos"], m["f1/pos"], m["f1"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["macro_f1"] == 0.5


# ---- tiny BERT: encoding, loss, evaluation, prediction --------------------------------------------


def test_model_parts_and_head(bert_dir, bert):
    source = ModelSource("tiny-bert", bert_dir, None)
    parts = TASK.model_parts(source, Options(labels=["0", "1", "2"]))
    assert parts.new_head
    assert set(parts.head) == {"classifier", "bert.pooler"}
    model, tok, _ = bert
    assert model.config.id2label == {0: "0", 1: "1", 2: "2"}
    assert model.classifier.out_features == 3
    assert tok.pad_token_id == 0


def test_encode_pairs_have_token_types_and_truncate(bert):
    _, tok, opts = bert
    rows = [{"text": "the cat", "text_pair": "a dog is happy", "label": "1", "where": "m:1"}]
    (ex,) = TASK.encode(rows, tok, opts)
    assert tok.convert_ids_to_tokens(ex["input_ids"]) == [
        *["[CLS]", "the", "cat", "[SEP]"],
        *["a", "dog", "is", "happy", "[SEP]"],
    ]
    assert ex["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert ex["label"] == 1
    # The token types reach BERT (its segment embeddings change the logits).
    model = bert[0]
    batch = TASK.collate([ex], tok, opts)
    with torch.no_grad():
        ours = TASK._logits(model, batch)
        typed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        untyped = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(ours, typed)
    assert (ours - untyped).abs().max() > 1e-5  # a random tiny head: small logits, small change
    short = dataclasses.replace(opts, max_length=8)
    long_row = [{"text": " ".join(["cat"] * 50), "text_pair": None, "label": None}]
    (ex,) = TASK.encode(long_row, tok, short)
    assert len(ex["input_ids"]) == 8 and ex["input_ids"][-1] == tok.sep_token_id
    assert ex["label"] == IGNORE


def test_collate_pads_and_masks(bert):
    _, tok, opts = bert
    examples = TASK.encode(labelled_rows(3), tok, opts)
    batch = TASK.collate(examples, tok, opts)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert batch["labels"].tolist() == [0, 1, 2]
    assert batch["labels"].dtype == torch.long


def test_loss_is_summed_cross_entropy(bert):
    model, tok, opts = bert
    rows = labelled_rows(5)
    rows[1] = {**rows[1], "label": None}  # an unlabelled row is no target
    batch = TASK.collate(TASK.encode(rows, tok, opts), tok, opts)
    assert TASK.targets(batch) == 4
    with torch.no_grad():
        summed = TASK.loss(model, batch)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).logits
    keep = batch["labels"] != IGNORE
    mean = F.cross_entropy(logits[keep], batch["labels"][keep])
    assert float(summed) / TASK.targets(batch) == pytest.approx(float(mean), rel=1e-6)
    assert float(summed) > 0


def test_eval_metrics_do_not_depend_on_batch_size(bert):
    model, tok, opts = bert
    examples = TASK.encode(labelled_rows(11), tok, opts)

    def run(size: int) -> dict:
        batches = [TASK.collate(examples[i : i + size], tok, opts) for i in range(0, 11, size)]
        return TASK.evaluate(model, batches, opts)

    two, five = run(2), run(5)
    assert two.keys() == five.keys()
    for key in two:
        assert two[key] == pytest.approx(five[key], abs=1e-6), key
    assert {"eval_loss", "accuracy", "macro_f1", "precision/0", "recall/2", "f1/1"} <= two.keys()
    assert 0.0 <= two["accuracy"] <= 1.0 and math.isfinite(two["eval_loss"])
    # And the loss is the mean over rows: compare with one batch of everything.
    everything = TASK.collate(examples, tok, opts)
    with torch.no_grad():
        expected = float(TASK.loss(model, everything)) / 11
    assert two["eval_loss"] == pytest.approx(expected, rel=1e-5)
    json.dumps(two)


def test_evaluate_without_labels_is_a_data_error(bert):
    model, tok, opts = bert
    rows = [{**r, "label": None} for r in labelled_rows(3)]
    batches = [TASK.collate(TASK.encode(rows, tok, opts), tok, opts)]
    with pytest.raises(DataError, match="no labelled rows"):
        TASK.evaluate(model, batches, opts)


def test_predict_a_file_without_labels(tmp_path, bert):
    model, tok, opts = bert
    model.train()  # predict must switch to eval mode (dropout off) and back
    path = tsv(
        tmp_path / "test.tsv", "index\tsentence", [f"{i}\t{s}" for i, s in enumerate(SENTENCES)]
    )
    rows = TASK.read(path, opts)
    out = TASK.predict(model, tok, rows, opts, batch_size=3)
    assert model.training
    model.eval()
    assert [p["line"] for p in out] == list(range(2, 2 + len(SENTENCES)))
    assert [p["text"] for p in out] == SENTENCES
    assert all(p["label"] in opts.labels for p in out)
    assert all(0.0 <= p["score"] <= 1.0 and p["score"] >= 1 / 3 for p in out)
    # The same prediction one row at a time: padding in a batch does not change it.
    alone = TASK.predict(model, tok, rows, opts, batch_size=1)
    for a, b in zip(out, alone, strict=True):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    json.dumps(out)


def test_manifest(bert):
    _, tok, opts = bert
    assert TASK.manifest(dataclasses.replace(opts, text_pair_column="s2"), tok) == {
        "labels": ["0", "1", "2"],
        "text_column": "sentence",
        "text_pair_column": "s2",
        "label_column": "label",
    }


# ---- a decoder --------------------------------------------------------------------------------


def test_llama_classifier_padding_does_not_change_logits(tmp_path):
    path = save_tiny_llama_dir(tmp_path / "llama")
    opts = Options(labels=["neg", "pos"], text_pair_column="second")
    source = ModelSource("tiny-llama", path, None)
    assert TASK.model_parts(source, opts).head == ("score",)
    torch.manual_seed(0)
    model, tok = TASK.load_model(source, opts, {})
    model.eval()
    assert model.config.pad_token_id == tok.pad_token_id is not None
    rows = [
        {"text": "the cat is happy", "text_pair": "a dog", "label": "pos"},
        {"text": "sun", "text_pair": "moon", "label": "neg"},
        {"text": "one two three four five six", "text_pair": "seven eight", "label": None},
    ]
    examples = TASK.encode(rows, tok, opts)
    batch = TASK.collate(examples, tok, opts)
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 3  # padded
    with torch.no_grad():
        padded = TASK._logits(model, batch)
        for i, ex in enumerate(examples):
            single = TASK._logits(model, TASK.collate([ex], tok, opts))
            assert torch.allclose(padded[i], single[0], atol=1e-5), i
        assert float(TASK.loss(model, batch)) > 0
    assert TASK.targets(batch) == 2
    preds = TASK.predict(model, tok, rows, opts, batch_size=2)
    assert [p["label"] in ("neg", "pos") for p in preds] == [True] * 3
