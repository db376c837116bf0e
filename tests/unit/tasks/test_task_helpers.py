"""The helpers the built-in tasks share (tasks/_io, _batching, _labelled, _models), and the planner
members every built-in task has (meta_model, logits_bytes): each against what it replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from adapterkit.errors import DataError, ModelError
from adapterkit.storage.sources import ModelSource
from adapterkit.tasks import _batching, _io
from adapterkit.tasks._labelled import LabelSet
from adapterkit.tasks._loss import IGNORE
from adapterkit.tasks.causal_lm import CausalLM
from adapterkit.tasks.causal_lm import Options as LMOptions
from adapterkit.tasks.sequence_classification import Options as SeqOptions
from adapterkit.tasks.sequence_classification import SequenceClassification
from adapterkit.tasks.token_classification import Options as TokOptions
from adapterkit.tasks.token_classification import TokenClassification
from adapterkit.testing import (
    tiny_bert_config,
    tiny_bert_tokenizer,
    tiny_llama_config,
    tiny_tokenizer,
)

LM, SEQ, TOK = CausalLM(), SequenceClassification(), TokenClassification()


# ---- padding: the collate bodies the tasks had before they shared _batching.pad_batch -------------


def _old_causal_collate(examples: list[dict], tokenizer) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(examples), width), int(pad), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[r, :n] = torch.tensor(e["labels"], dtype=torch.long)
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _old_seq_collate(examples: list[dict], tokenizer) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(examples)
    ids = torch.full((n, width), int(pad), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    has_types = "token_type_ids" in examples[0]
    types = torch.zeros((n, width), dtype=torch.long) if has_types else None
    for r, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[r, :k] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[r, :k] = 1
        if types is not None:
            types[r, :k] = torch.tensor(e["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch


def _old_tok_collate(examples: list[dict], tokenizer) -> dict:
    n, width = len(examples), max(len(e["input_ids"]) for e in examples)
    n_words = max(e["n_words"] for e in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, width), int(pad), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    word_ids = torch.full((n, width), -1, dtype=torch.long)
    word_labels = torch.full((n, n_words), IGNORE, dtype=torch.long)
    for r, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[r, :k] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[r, :k] = 1
        labels[r, :k] = torch.tensor(e["labels"], dtype=torch.long)
        word_ids[r, :k] = torch.tensor(e["word_ids"], dtype=torch.long)
        word_labels[r, : e["n_words"]] = torch.tensor(e["word_labels"], dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "word_ids": word_ids,
        "word_labels": word_labels,
        "n_words": torch.tensor([e["n_words"] for e in examples], dtype=torch.long),
        "line": torch.tensor([e["line"] for e in examples], dtype=torch.long),
    }


def _assert_same_batch(new: dict, old: dict) -> None:
    assert list(new) == list(old)  # same keys, same order
    for key in old:
        assert new[key].dtype == old[key].dtype, key
        assert torch.equal(new[key], old[key]), key


def _lm_examples(tok) -> list[dict]:
    rows = [
        {"instruction": "write a cat", "output": "the big red cat ."},
        {"instruction": "one", "input": "two three four five", "output": "six"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    return LM.encode(rows, tok, LMOptions())


def test_causal_lm_padding_equals_the_old_collate() -> None:
    tok = tiny_tokenizer()
    examples = _lm_examples(tok)
    assert len({len(e["input_ids"]) for e in examples}) > 1  # padding really happens
    padded = LMOptions(packing=False)  # the padded collate (the default packs, see fast path tests)
    _assert_same_batch(LM.collate(examples, tok, padded), _old_causal_collate(examples, tok))


@pytest.mark.parametrize("pairs", [False, True])
def test_sequence_classification_padding_equals_the_old_collate(pairs: bool) -> None:
    tok, opts = tiny_bert_tokenizer(), SeqOptions(labels=["neg", "pos"])
    texts = ["the cat is happy .", "a big red tree", "water"]
    rows = [
        {"text": t, "text_pair": "the dog" if pairs else None, "label": ["neg", "pos", None][i]}
        for i, t in enumerate(texts)
    ]
    examples = SEQ.encode(rows, tok, opts)
    assert ("token_type_ids" in examples[0]) is True  # BERT's tokenizer gives segment ids
    new = SEQ.collate(examples, tok, opts)
    _assert_same_batch(new, _old_seq_collate(examples, tok))
    assert new["labels"].tolist() == [0, 1, IGNORE]


def test_token_classification_padding_equals_the_old_collate(tmp_path: Path) -> None:
    tok = tiny_bert_tokenizer()
    path = tmp_path / "t.conll"
    path.write_text("the B-X\ncat O\nis O\nhappy B-Y\n\nwater O\n\na B-X\nbig O\n")
    rows = TOK.read(path, TokOptions())
    opts = TOK.setup(rows, TokOptions())
    examples = TOK.encode(rows, tok, opts)
    assert len({e["n_words"] for e in examples}) > 1
    _assert_same_batch(TOK.collate(examples, tok, opts), _old_tok_collate(examples, tok))


def test_pad_batch_uses_zero_when_the_tokenizer_has_no_pad_token() -> None:
    class NoPad:
        pad_token_id = None

    batch = _batching.pad_batch([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], NoPad())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ---- the inference loops -----------------------------------------------------------------------------


def test_map_batches_restores_training_mode_even_when_fn_raises() -> None:
    model = nn.Linear(2, 2).train()
    seen: list[bool] = []

    def fn(batch: dict) -> None:
        seen.append(model.training or torch.is_grad_enabled())
        raise DataError("boom")

    with pytest.raises(DataError, match="boom"):
        _batching.map_batches(model, [{"x": torch.zeros(1)}], fn)
    assert seen == [False] and model.training


def test_per_example_keeps_order_across_uneven_batches() -> None:
    model = nn.Linear(1, 1)
    examples = [{"v": i} for i in range(7)]
    sizes: list[int] = []

    def collate(chunk):
        sizes.append(len(chunk))
        return {"v": torch.tensor([e["v"] for e in chunk])}

    out = _batching.per_example(model, examples, collate, lambda b: b["v"].tolist(), 3)
    assert out == list(range(7)) and sizes == [3, 3, 1]
    assert _batching.per_example(model, [], collate, lambda b: [], 3) == []


# ---- JSONL --------------------------------------------------------------------------------------


def _jsonl(tmp_path: Path, text: str, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "lineno", "words"),
    [
        ('{"a": 1}\n{not json\n', 2, ["invalid JSON", "at column 2", "one JSON object"]),
        ('{"a": 1}\n\n[1, 2]\n', 3, ["expected a JSON object, got list"]),
        ("[\n", 1, ["a JSON array is not read"]),
        ('{"a": 1}\r\n"text"\r\n', 2, ["got str"]),
    ],
)
def test_read_jsonl_errors_name_file_and_line(
    tmp_path: Path, text: str, lineno: int, words: list[str]
) -> None:
    path = _jsonl(tmp_path, text)
    with pytest.raises(DataError) as err:
        list(_io.read_jsonl(path))
    assert str(err.value).startswith(f"{path}:{lineno}: ")
    for w in words:
        assert w in str(err.value)


def test_read_jsonl_empty_missing_bom_and_raw_line_separators(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"e\.jsonl: no examples \(the file is empty\)"):
        list(_io.read_jsonl(_jsonl(tmp_path, "\n  \n", "e.jsonl")))
    with pytest.raises(DataError, match="file not found; give the path of a JSONL file"):
        list(_io.read_jsonl(tmp_path / "nope.jsonl"))
    # A byte order mark is dropped; U+2028 raw inside a JSON string does not end the line.
    path = _jsonl(tmp_path, '\ufeff{"a": "x\u2028y"}\n{"b": 2}\n')
    assert list(_io.read_jsonl(path)) == [(1, {"a": "x\u2028y"}), (2, {"b": 2})]


def test_both_jsonl_tasks_report_the_first_bad_line_whatever_is_wrong(tmp_path: Path) -> None:
    # Line 1 is JSON but not a valid row, line 2 is not JSON: line 1 is the one reported.
    lm = _jsonl(tmp_path, json.dumps({"instruction": "a"}) + "\n{not json\n", "lm.jsonl")
    with pytest.raises(DataError, match=rf"{lm}:1: .*\"output\""):
        LM.read(lm, LMOptions())
    seq = _jsonl(tmp_path, json.dumps({"label": 1}) + "\n{not json\n", "seq.jsonl")
    with pytest.raises(DataError, match=rf"{seq}:1: no field 'sentence'"):
        SEQ.read(seq, SeqOptions())


def test_causal_lm_and_classification_jsonl_share_the_empty_file_message(tmp_path: Path) -> None:
    for task, options in ((LM, LMOptions()), (SEQ, SeqOptions())):
        path = _jsonl(tmp_path, "\n")
        with pytest.raises(DataError, match=rf"{path}: no examples \(the file is empty\)"):
            task.read(path, options)


# ---- labels: one error class for each mistake, in both labelled tasks ------------------------------


def test_repeated_given_labels_are_a_data_error_in_both_tasks() -> None:
    seq_rows = [{"label": "a", "where": "f:1"}, {"label": "b", "where": "f:2"}]
    with pytest.raises(DataError, match=r"task\.options\.labels: repeated label\(s\) a"):
        SEQ.setup(seq_rows, SeqOptions(labels=["a", "b", "a"]))
    tok_rows = [{"words": ["x"], "tags": ["O"], "where": "f:1"}]
    with pytest.raises(DataError, match=r"task\.options\.labels: repeated label\(s\) O"):
        TOK.setup(tok_rows, TokOptions(labels=["O", "B-X", "O"]))


def test_unknown_label_names_are_a_model_error_in_both_tasks() -> None:
    nowhere = ModelSource("nowhere", Path("/nonexistent"), None)
    for task, options, what in (
        (SEQ, SeqOptions(), "sequence classifier"),
        (TOK, TokOptions(), "token classifier"),
    ):
        with pytest.raises(ModelError, match=f"label names of the {what} are unknown"):
            task.load_model(nowhere, options, {})
    with pytest.raises(ModelError, match="label names of the token classifier are unknown"):
        TOK.encode([{"words": ["x"], "tags": None}], tiny_bert_tokenizer(), TokOptions())


def test_a_label_the_model_does_not_know_is_the_same_error_in_both_tasks() -> None:
    tok = tiny_bert_tokenizer()
    with pytest.raises(DataError) as seq:
        SEQ.encode(
            [{"text": "a", "label": "meh", "where": "d.tsv:3"}], tok, SeqOptions(labels=["x"])
        )
    with pytest.raises(DataError) as tag:
        row = {"words": ["a"], "tags": ["B-Z"], "where": "d.conll:3"}
        TOK.encode([row], tok, TokOptions(labels=["O", "B-X"]))
    assert str(seq.value) == (
        "d.tsv:3: label 'meh' is not one of the model's labels (x); "
        "the training data had no such label"
    )
    assert str(tag.value) == (
        "d.conll:3: tag 'B-Z' is not one of the model's labels (O, B-X); "
        "the training data had no such tag"
    )


def test_label_set_infers_sorted_names_with_a_first_one() -> None:
    assert LabelSet.infer(["b", "a", "O", "b"], first="O").names == ("O", "a", "b")
    assert LabelSet.infer(["b", "a"], first="O").names == ("O", "a", "b")  # first even unseen
    assert LabelSet.infer(["10", "2"], key=int).names == ("2", "10")
    given = LabelSet.given([1, 0])
    assert given.names == ("1", "0") and given.id_of("0", "here") == 1
    with pytest.raises(DataError, match=r"^r:7: label 'z' is not one of task\.options\.labels"):
        given.check([("1", "r:6"), ("z", "r:7")])


# ---- planner members: meta_model, model_parts, logits_bytes ------------------------------------------


AUTO = {
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
}


def _real(task, config, options) -> nn.Module:
    """The task's model class built for real (on CPU, random weights), as the planner did."""
    import copy

    import transformers

    cfg = copy.deepcopy(config)
    if task is not LM:
        cfg.num_labels = len(options.labels) if options.labels else 2
    return getattr(transformers, AUTO[task.name]).from_config(cfg)


CASES = [
    (LM, tiny_llama_config, LMOptions()),
    (SEQ, tiny_bert_config, SeqOptions(labels=["a", "b", "c"])),
    (SEQ, tiny_llama_config, SeqOptions()),
    (TOK, tiny_bert_config, TokOptions(labels=["O", "B-X", "I-X", "B-Y"])),
    (TOK, tiny_llama_config, TokOptions()),
]


@pytest.mark.parametrize(("task", "config_fn", "options"), CASES)
def test_meta_model_has_the_real_models_parameters(task, config_fn, options) -> None:
    config = config_fn()
    before = config.to_dict()
    meta = task.meta_model(config, options)
    assert config.to_dict() == before  # built on a copy: the caller's config is untouched
    torch.manual_seed(0)
    real = _real(task, config, options)
    shapes = {n: (tuple(p.shape), p.dtype) for n, p in real.named_parameters()}
    assert {n: (tuple(p.shape), p.dtype) for n, p in meta.named_parameters()} == shapes
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert {p.dtype for p in meta.parameters()} == {torch.float32}
    assert task.model_parts_of(meta) == task.model_parts_of(real)


def test_meta_model_sizes_the_new_head_from_the_labels() -> None:
    config = tiny_bert_config()
    assert SEQ.meta_model(config, SeqOptions()).classifier.out_features == 2
    assert SEQ.meta_model(config, SeqOptions(labels=["a", "b", "c"])).classifier.out_features == 3
    assert TOK.meta_model(config, TokOptions(labels=["O"])).classifier.out_features == 1


def test_a_model_type_without_the_task_class_is_a_model_error() -> None:
    from transformers import CLIPVisionConfig

    with pytest.raises(ModelError, match="a clip_vision_model model has no SequenceClassification"):
        SEQ.meta_model(CLIPVisionConfig(), SeqOptions())


def test_model_parts_from_a_source_equal_those_of_the_built_model(
    bert_dir: Path, llama_dir: Path
) -> None:
    bert = ModelSource("bert", bert_dir, None)
    llama = ModelSource("llama", llama_dir, None)
    for task, source, options in (
        (LM, llama, LMOptions()),
        (SEQ, bert, SeqOptions()),
        (SEQ, llama, SeqOptions()),
        (TOK, bert, TokOptions()),
        (TOK, llama, TokOptions(labels=["O", "B-X"])),
    ):
        from adapterkit.storage.sources import load_config

        meta = task.meta_model(load_config(source), options)
        assert task.model_parts(source, options) == task.model_parts_of(meta)
    assert LM.model_parts(llama, LMOptions()).head == ("lm_head",)
    assert SEQ.model_parts(bert, SeqOptions()).head == ("classifier", "bert.pooler")
    assert TOK.model_parts(bert, TokOptions()).head == ("classifier",)


def test_logits_bytes_are_three_float32_copies_of_each_classifier_tasks_logits() -> None:
    bert = tiny_bert_config()
    b, length = 3, 10
    assert SEQ.logits_bytes(b, length, bert, SeqOptions()) == 3 * b * 2 * 4  # 2 before labels
    assert SEQ.logits_bytes(b, length, bert, SeqOptions(labels=["a", "b", "c"])) == 3 * b * 3 * 4
    assert TOK.logits_bytes(b, length, bert, TokOptions()) == 3 * b * length * 2 * 4
    five = TokOptions(labels=["O", "B-X", "I-X", "B-Y", "I-Y"])
    assert TOK.logits_bytes(b, length, bert, five) == 3 * b * length * 5 * 4
