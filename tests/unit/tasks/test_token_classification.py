"""The token classification task: CoNLL reading, sub-token alignment, metrics, loss, predict."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapterkit.errors import DataError
from adapterkit.storage.sources import ModelSource
from adapterkit.task import Task
from adapterkit.tasks.token_classification import (
    IGNORE,
    Options,
    TokenClassification,
    tag_metrics,
    word_tags,
)
from adapterkit.testing import save_tiny_llama_dir, tiny_bert_tokenizer

TASK = TokenClassification()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def conll(sentences: list[list[tuple[str, str]]]) -> str:
    return "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n"


@pytest.fixture(scope="module")
def bert_tok():
    return tiny_bert_tokenizer()


class FakeTagger(nn.Module):
    """Predicts a fixed tag per token id: logit 1 for the tag `mapping` gives that token, else 0."""

    def __init__(self, tok, labels: list[str], mapping: dict[str, str]) -> None:
        super().__init__()
        vocab = tok.get_vocab()
        self.table = nn.Embedding(max(vocab.values()) + 1, len(labels))
        with torch.no_grad():
            self.table.weight.zero_()
            for token, tag in mapping.items():
                self.table.weight[vocab[token], labels.index(tag)] = 1.0

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table(input_ids))


def batches_of(examples, tok, opts, size: int) -> list[dict]:
    return [TASK.collate(examples[i : i + size], tok, opts) for i in range(0, len(examples), size)]


# ---- reading --------------------------------------------------------------------------------------


def test_read_skips_docstart_splits_on_blank_lines_and_keeps_an_unterminated_last_sentence(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "train.txt",
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER",  # no trailing newline / blank line
    )
    rows = TASK.read(path, Options())
    assert rows == [
        {"words": ["EU", "rejects"], "tags": ["B-ORG", "O"], "line": 3, "where": f"{path}:3"},
        {
            "words": ["Peter", "Blackburn"],
            "tags": ["B-PER", "I-PER"],
            "line": 7,
            "where": f"{path}:7",
        },
    ]
    pos = TASK.read(path, Options(tag_column=1))
    assert pos[0]["tags"] == ["NNP", "VBZ"]


def test_read_ragged_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", "EU NNP B-ORG\nrejects VBZ O\n\nPeter B-PER\n")
    with pytest.raises(DataError, match=rf"{path}:4: 2 columns, but line 1 has 3"):
        TASK.read(path, Options())


def test_read_empty_missing_and_docstart_only_files(tmp_path: Path) -> None:
    for text in ("", "\n\n", "-DOCSTART- -X- O\n\n"):
        path = write(tmp_path / "empty.txt", text)
        with pytest.raises(DataError, match=rf"{path}: no sentences"):
            TASK.read(path, Options())
    with pytest.raises(DataError, match="file not found"):
        TASK.read(tmp_path / "missing.txt", Options())


def test_read_single_column_has_no_tags_and_columns_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.txt", "the\ncat\n\ndogs\n")
    rows = TASK.read(path, Options())
    assert [(r["words"], r["tags"], r["line"]) for r in rows] == [
        (["the", "cat"], None, 1),
        (["dogs"], None, 4),
    ]
    with pytest.raises(DataError, match=rf"{path}:1: token_column=1 is out of range"):
        TASK.read(path, Options(token_column=1))


def test_read_with_a_tab_separator_keeps_spaces_inside_tokens(tmp_path: Path) -> None:
    path = write(tmp_path / "tab.tsv", "New York\tB-LOC\nis\tO\n")
    rows = TASK.read(path, Options(separator="\t"))
    assert rows[0]["words"] == ["New York", "is"] and rows[0]["tags"] == ["B-LOC", "O"]


def test_setup_orders_labels_and_checks_given_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", conll([[("a", "I-PER"), ("b", "B-PER"), ("c", "O")]]))
    rows = TASK.read(path, Options())
    assert TASK.setup(rows, Options()).labels == ["O", "B-PER", "I-PER"]
    with pytest.raises(DataError, match=rf"{path}:1: tag 'I-PER' is not in"):
        TASK.setup(rows, Options(labels=["O", "B-PER"]))
    raw = TASK.read(write(tmp_path / "raw.txt", "a\nb\n"), Options())
    with pytest.raises(DataError, match="needs a tag column"):
        TASK.setup(raw, Options())


# ---- alignment ------------------------------------------------------------------------------------


def test_label_sits_on_the_first_sub_token_only(bert_tok) -> None:
    assert bert_tok.tokenize("dogs") == ["dog", "##s"]  # the word must really split
    opts = Options(labels=["O", "B-PER", "B-LOC"])
    rows = [{"words": ["the", "dogs", "walked"], "tags": ["O", "B-PER", "B-LOC"], "line": 1}]
    (ex,) = TASK.encode(rows, bert_tok, opts)
    tokens = bert_tok.convert_ids_to_tokens(ex["input_ids"])
    assert tokens == ["[CLS]", "the", "dog", "##s", "[UNK]", "[SEP]"]
    assert ex["labels"] == [IGNORE, 0, 1, IGNORE, 2, IGNORE]
    assert ex["word_ids"] == [-1, 0, 1, 1, 2, -1]
    batch = TASK.collate([ex], bert_tok, opts)
    assert TASK.targets(batch) == 3
    # Decoding back: one tag per word, each read at the word's first sub-token.
    logits = torch.full((1, 6, 3), -1.0)
    logits[0, 1, 0] = logits[0, 2, 1] = logits[0, 4, 2] = 1.0
    logits[0, 3, 0] = 5.0  # the continuation "##s" says O: must be ignored
    pred, gold = word_tags(logits, batch, opts.labels)
    assert pred == [["O", "B-PER", "B-LOC"]] and gold == [["O", "B-PER", "B-LOC"]]


# Hand-computed case. Gold / predicted entities:
#   sentence 1  gold: PER(dogs cat) LOC(water)    pred: PER(dogs cat) ORG(water)
#   sentence 2  gold: ORG(trees) LOC(fire)        pred: ORG(trees)
# gold entities 4, predicted 3, correct 2 (PER in 1, ORG in 2):
#   precision = 2/3, recall = 2/4 = 0.5, f1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
# words right: sentence 1 3 of 4 (water), sentence 2 3 of 4 (fire) -> accuracy = 6/8 = 0.75
HAND_GOLD = [
    [("dogs", "B-PER"), ("cat", "I-PER"), ("is", "O"), ("water", "B-LOC")],
    [("trees", "B-ORG"), ("and", "O"), ("fire", "B-LOC"), ("sun", "O")],
]
HAND_TOKEN_TAGS = {  # what the fake model predicts per sub-token
    "dog": "B-PER",
    "##s": "B-LOC",  # continuation of "dogs" and "trees": a wrong tag, ignored
    "cat": "I-PER",
    "is": "O",
    "water": "B-ORG",
    "tree": "B-ORG",
    "and": "O",
    "fire": "O",
    "sun": "O",
}


def test_metrics_on_a_hand_computed_case(tmp_path: Path, bert_tok) -> None:
    path = write(tmp_path / "eval.txt", conll(HAND_GOLD))
    rows = TASK.read(path, Options())
    opts = TASK.setup(rows, Options())
    assert opts.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]
    batches = batches_of(TASK.encode(rows, bert_tok, opts), bert_tok, opts, 2)
    model = FakeTagger(bert_tok, opts.labels, HAND_TOKEN_TAGS)
    metrics = TASK.evaluate(model, batches, opts)
    assert metrics["precision"] == pytest.approx(2 / 3, abs=1e-12)
    assert metrics["recall"] == pytest.approx(0.5, abs=1e-12)
    assert metrics["f1"] == pytest.approx(4 / 7, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(0.75, abs=1e-12)
    assert metrics["eval_words"] == 8
    # Logits are 1 for the predicted tag and 0 for the 4 others, so a word costs
    # log((e + 4) / e) when the prediction is right (6 words) and log(e + 4) when wrong (2).
    e = math.e
    expected_loss = (6 * math.log((e + 4) / e) + 2 * math.log(e + 4)) / 8
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert all(type(v) is float for k, v in metrics.items() if k != "eval_words")
    # The same numbers straight from the metric function on tag strings.
    gold = [[t for _, t in s] for s in HAND_GOLD]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O", "O"]]
    assert tag_metrics(gold, pred) == {
        "precision": pytest.approx(2 / 3),
        "recall": 0.5,
        "f1": pytest.approx(4 / 7),
        "accuracy": 0.75,
    }


def test_truncated_words_count_as_o_in_the_metrics(tmp_path: Path, bert_tok) -> None:
    sentence = [
        ("the", "O"),
        ("cat", "B-PER"),
        ("is", "O"),
        ("in", "O"),
        ("the", "O"),
        ("big", "O"),
        ("water", "B-LOC"),
        ("tree", "I-LOC"),
    ]
    path = write(tmp_path / "eval.txt", conll([sentence]))
    rows = TASK.read(path, Options())
    perfect = {w: t for w, t in sentence}
    full = TASK.setup(rows, Options())
    model = FakeTagger(bert_tok, full.labels, perfect)
    untruncated = TASK.evaluate(
        model, batches_of(TASK.encode(rows, bert_tok, full), bert_tok, full, 1), full
    )
    assert (untruncated["f1"], untruncated["accuracy"]) == (1.0, 1.0)

    # max_length 8 = [CLS] + 6 words + [SEP]: "water tree" (the LOC entity) are cut off.
    short = dataclasses.replace(full, max_length=8)
    examples = TASK.encode(rows, bert_tok, short)
    assert examples.truncated_words == 2 and examples[0]["n_words"] == 8
    metrics = TASK.evaluate(model, batches_of(examples, bert_tok, short, 1), short)
    # gold PER, LOC; predicted PER only: precision 1/1, recall 1/2, f1 = 2*(1*0.5)/1.5 = 2/3;
    # accuracy: 6 kept words right, the 2 cut ones predicted O against B-LOC, I-LOC -> 6/8
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == 0.5
    assert metrics["f1"] == pytest.approx(2 / 3, abs=1e-12)
    assert metrics["accuracy"] == 0.75
    assert metrics["eval_words"] == 8


def test_unseen_tag_in_eval_data_names_file_and_line(tmp_path: Path, bert_tok) -> None:
    train = TASK.read(
        write(tmp_path / "train.txt", conll([[("a", "B-PER"), ("b", "O")]])), Options()
    )
    opts = TASK.setup(train, Options())
    path = write(tmp_path / "eval.txt", conll([[("a", "O")], [("b", "O"), ("c", "B-MISC")]]))
    with pytest.raises(
        DataError, match=rf"{path}:3: tag 'B-MISC' is not one of the model's labels"
    ):
        TASK.encode(TASK.read(path, opts), bert_tok, opts)


# ---- models: loss, batch-size invariance, predict, a decoder ---------------------------------------

SENTENCES = [
    [
        ("the", "O"),
        ("dogs", "B-PER"),
        ("walked", "O"),
        ("to", "O"),
        ("the", "O"),
        ("water", "B-LOC"),
    ],
    [("cat", "B-PER"), ("and", "O"), ("dog", "B-PER"), ("are", "O"), ("happy", "O")],
    [("trees", "B-LOC"), ("and", "O"), ("fire", "B-ORG"), ("big", "I-ORG"), ("books", "O")],
    [("sun", "B-LOC")],
]


@pytest.fixture(scope="module")
def bert_model(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    path = write(tmp_path_factory.mktemp("data") / "train.txt", conll(SENTENCES))
    rows = TASK.read(path, Options())
    opts = TASK.setup(rows, Options())
    torch.manual_seed(0)
    model, tok = TASK.load_model(ModelSource("tiny-bert", bert_dir, None), opts, {})
    return model.eval(), tok, rows, opts


def test_bert_model_parts_and_manifest(bert_dir: Path, bert_model) -> None:
    model, tok, _, opts = bert_model
    assert isinstance(TASK, Task)
    parts = TASK.model_parts(ModelSource("tiny-bert", bert_dir, None), opts)
    assert parts.head == ("classifier",) and parts.new_head
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.id2label == dict(enumerate(opts.labels))
    assert TASK.manifest(opts, tok) == {"labels": opts.labels, "token_column": 0, "tag_column": -1}


def test_loss_is_summed_cross_entropy_over_labelled_first_sub_tokens(bert_model) -> None:
    model, tok, rows, opts = bert_model
    batch = TASK.collate(TASK.encode(rows, tok, opts), tok, opts)
    assert TASK.targets(batch) == sum(len(s) for s in SENTENCES)  # one per word
    with torch.no_grad():
        summed = TASK.loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mean = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1))
    assert summed.dtype == torch.float32
    assert float(summed) / TASK.targets(batch) == pytest.approx(float(mean), rel=1e-6)
    assert TASK.evaluate(model, [batch], opts)["eval_loss"] == pytest.approx(float(mean), rel=1e-6)


def test_eval_loss_and_f1_do_not_depend_on_batch_size(bert_model) -> None:
    model, tok, rows, opts = bert_model
    examples = TASK.encode(rows, tok, opts)
    results = [TASK.evaluate(model, batches_of(examples, tok, opts, n), opts) for n in (1, 3, 4)]
    first = results[0]
    assert math.isfinite(first["eval_loss"]) and first["eval_words"] == 17
    for other in results[1:]:
        assert other["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
        for key in ("precision", "recall", "f1", "accuracy"):
            assert other[key] == first[key]


def test_predict_on_an_unlabelled_file_gives_one_tag_per_word(bert_model, tmp_path: Path) -> None:
    model, tok, _, opts = bert_model
    long = " ".join(["dog"] * 20)
    path = write(tmp_path / "raw.txt", "the\ndogs\nwalked\n\n" + long.replace(" ", "\n") + "\n")
    rows = TASK.read(path, opts)
    assert all(r["tags"] is None for r in rows)
    short = dataclasses.replace(opts, max_length=8)
    out = TASK.predict(model, tok, rows, short, batch_size=1)
    assert [o["line"] for o in out] == [1, 5]
    assert [o["words"] for o in out] == [r["words"] for r in rows]
    assert [len(o["tags"]) for o in out] == [3, 20]
    assert all(t in opts.labels for o in out for t in o["tags"])
    assert out[1]["tags"][6:] == ["O"] * 14  # past max_length: predicted O
    # Tags in the rows do not matter to predict, even unknown ones.
    tagged = [{"words": ["cat"], "tags": ["B-NOPE"], "line": 1}]
    assert len(TASK.predict(model, tok, tagged, opts)[0]["tags"]) == 1


def test_decoder_llama_token_classifier_runs_end_to_end(tmp_path: Path) -> None:
    llama_dir = save_tiny_llama_dir(tmp_path / "llama")
    path = write(tmp_path / "train.txt", conll([[("the", "O"), ("cat", "B-PER")], *SENTENCES[1:]]))
    rows = TASK.read(path, Options())
    opts = TASK.setup(rows, Options())
    source = ModelSource("tiny-llama", llama_dir, None)
    assert TASK.model_parts(source, opts).head == ("score",)
    model, tok = TASK.load_model(source, opts, {})
    assert type(model).__name__ == "LlamaForTokenClassification"
    examples = TASK.encode(rows, tok, opts)
    assert examples[0]["word_ids"] == [0, 1]  # word-level: one token per word, no specials
    metrics = TASK.evaluate(model, batches_of(examples, tok, opts, 2), opts)
    assert all(math.isfinite(metrics[k]) for k in ("eval_loss", "precision", "f1", "accuracy"))
    batch = TASK.collate(examples, tok, opts)
    model.train()
    TASK.loss(model, batch).backward()  # the extra batch keys never reach the model
    assert model.score.weight.grad is not None


def test_byte_level_bpe_tokenizer_is_reloaded_with_a_prefix_space(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(["the cat sat on the mat"] * 10, trainer)
    GPT2TokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    config = GPT2Config(vocab_size=core.get_vocab_size(), n_embd=16, n_layer=1, n_head=2)
    GPT2Model(config).save_pretrained(tmp_path)
    opts = Options(labels=["O", "B-X"])
    _, tok = TASK.load_model(ModelSource("tiny-gpt2", tmp_path, None), opts, {})
    (ex,) = TASK.encode([{"words": ["the", "cat"], "tags": ["O", "B-X"], "line": 1}], tok, opts)
    # As in running text ("the cat"): the second word carries its leading space.
    assert tok.convert_ids_to_tokens(ex["input_ids"]) == ["Ġthe", "Ġcat"]
    assert tok.pad_token is not None


def test_evaluating_an_untagged_file_is_a_data_error(tmp_path: Path, bert_tok) -> None:
    opts = Options(labels=["O", "B-PER"])
    rows = TASK.read(write(tmp_path / "raw.txt", "the\ncat\n\n\ndog\n"), opts)
    batches = batches_of(TASK.encode(rows, bert_tok, opts), bert_tok, opts, 2)
    model = FakeTagger(bert_tok, opts.labels, {"cat": "B-PER"})
    with pytest.raises(DataError, match="sentence at line 1 of the eval data has no tags"):
        TASK.evaluate(model, batches, opts)
