"""The causal LM task: reading, label masking, batching, loss and metrics on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adapterkit.errors import DataError
from adapterkit.tasks.causal_lm import IGNORE, CausalLM, Options
from adapterkit.testing import save_tiny_llama_dir, tiny_llama

TASK = CausalLM()


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def targets_of(example: dict) -> list[int]:
    return [t for t in example["labels"] if t != IGNORE]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- label masking ---------------------------------------------------------------------------------


def test_only_response_and_end_of_turn_are_targets(tok):
    rows = [{"instruction": "write a cat", "input": "the dog", "output": "the big red cat ."}]
    (ex,) = TASK.encode(rows, tok, Options(system_prompt="you are good"))
    assert tok.decode(targets_of(ex)) == "the big red cat . <|im_end|>"
    assert targets_of(ex) == [*ids_of(tok, "the big red cat ."), tok.eos_token_id]
    # Targets are the input tokens themselves, contiguous, and everything before them is the
    # rendered prompt (system, user turn with the input, assistant header).
    first = next(i for i, t in enumerate(ex["labels"]) if t != IGNORE)
    prompt = tok.apply_chat_template(
        [
            {"role": "system", "content": "you are good"},
            {"role": "user", "content": "write a cat\n\nthe dog"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert ex["input_ids"][:first] == ids_of(tok, prompt)
    assert ex["labels"][first:] == ex["input_ids"][first:]
    assert ex["input_ids"][-1] == tok.eos_token_id  # nothing after the end-of-turn token


def test_messages_row_trains_only_the_last_assistant_turn(tok):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hello world"},
                {"role": "user", "content": "name a dog"},
                {"role": "assistant", "content": "the blue dog"},
            ]
        }
    ]
    (ex,) = TASK.encode(rows, tok, Options())
    assert tok.decode(targets_of(ex)) == "the blue dog <|im_end|>"


def test_trailing_newline_after_end_of_turn_is_not_a_target():
    # A tokenizer that keeps "\n" as a token: ChatML's newline after <|im_end|> must be cut off.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from adapterkit.testing import CHATML_TEMPLATE

    vocab = {t: i for i, t in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", "\n"])}
    for w in "user assistant hi there".split():
        vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split(" ", "removed")]
    )
    t = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", unk_token="<unk>")
    t.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    t.chat_template = CHATML_TEMPLATE
    (ex,) = TASK.encode([{"instruction": "hi", "output": "hi there"}], t, Options())
    nl = vocab["\n"]
    assert nl in ex["input_ids"]  # the header's newline survives as a token
    assert targets_of(ex) == [vocab["hi"], vocab["there"], vocab["<|im_end|>"]]
    assert ex["input_ids"][-1] == vocab["<|im_end|>"]


def test_truncation_drops_rows_without_a_response_token(tok):
    long = " ".join(["one two three four"] * 10)
    rows = [
        {"instruction": long, "output": "yes"},  # prompt alone is longer than max_length
        {"instruction": "hello", "output": "the cat is big and the dog is small ."},
    ]
    out = TASK.encode(rows, tok, Options(max_length=12))
    assert out.dropped == 1
    assert len(out) == 1
    (ex,) = out
    assert len(ex["input_ids"]) == len(ex["labels"]) == 12
    assert targets_of(ex)  # cut response keeps its first tokens as targets
    assert tok.decode(targets_of(ex)).startswith("the cat")


def test_system_prompt_default_leaves_template_alone(tok):
    (ex,) = TASK.encode([{"instruction": "hello", "output": "yes"}], tok, Options())
    assert "system" not in tok.decode(ex["input_ids"])
    (ex,) = TASK.encode(
        [{"instruction": "hello", "output": "yes"}], tok, Options(system_prompt="be good")
    )
    assert "system" in tok.decode(ex["input_ids"])


# ---- read ------------------------------------------------------------------------------------------


def test_read_accepts_both_formats(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"instruction": "a", "input": "", "output": "b"}),
            "",
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": "y"},
                    ]
                }
            ),
        ],
    )
    rows = TASK.read(path, Options())
    assert [r["messages"][-1]["content"] for r in rows] == ["b", "y"]
    assert rows[0]["messages"][0]["content"] == "a"  # empty input adds no blank line


@pytest.mark.parametrize(
    ("lines", "lineno", "words"),
    [
        ([json.dumps({"instruction": "a", "output": "b"}), "{not json"], 2, "invalid JSON"),
        ([json.dumps({"instruction": "a"})], 1, '"output"'),
        ([json.dumps({"instruction": 3, "output": "b"})], 1, '"instruction" must be a string'),
        ([json.dumps([1, 2])], 1, "JSON object"),
        ([json.dumps({"messages": [{"role": "user", "content": "x"}]})], 1, "assistant"),
        ([json.dumps({"messages": [{"role": "bot", "content": "x"}]})], 1, "role"),
    ],
)
def test_read_errors_name_file_and_line(tmp_path, lines, lineno, words):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        TASK.read(path, Options())
    assert str(err.value).startswith(f"{path}:{lineno}: ")
    assert words in str(err.value)


def test_read_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TASK.read(tmp_path / "nope.jsonl", Options())
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        TASK.read(tmp_path / "empty.jsonl", Options())


# ---- batches, loss, metrics ------------------------------------------------------------------------

ROWS = [
    {"instruction": "hello", "output": "the cat"},
    {"instruction": "write a list of four big red things", "output": "the sun , the fire ."},
    {"instruction": "why", "input": "the dog is sad", "output": "no"},
    {"instruction": "tell me", "output": "one two three four five six seven eight nine ten"},
    {"instruction": "what is it", "output": "a book"},
]


def test_collate_masks_padding_by_position_not_token_id(tok):
    examples = TASK.encode(ROWS[:2], tok, Options())
    batch = TASK.collate(examples, tok, Options(packing=False))  # the padded batch
    short, long_ = (len(e["input_ids"]) for e in examples)
    assert short < long_ and batch["input_ids"].shape == (2, long_)
    # Pad id == end-of-turn id here (as in SmolLM2); the real end token stays a target.
    assert tok.pad_token_id == tok.eos_token_id
    assert batch["labels"][0, short - 1] == tok.eos_token_id
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long_ - short)
    assert (batch["labels"][0, short:] == IGNORE).all()
    assert TASK.targets(batch) == sum(len(targets_of(e)) for e in examples)


def test_summed_loss_matches_transformers_mean_loss(tok):
    model = tiny_llama()
    padded = Options(packing=False)  # model(**batch) below needs the padded batch
    batch = TASK.collate(TASK.encode(ROWS, tok, Options()), tok, padded)
    with torch.no_grad():
        summed = TASK.loss(model, batch)
        mean = model(**batch).loss
    torch.testing.assert_close(summed / TASK.targets(batch), mean, rtol=1e-5, atol=1e-6)


def test_eval_loss_does_not_depend_on_batch_size(tok):
    model = tiny_llama()
    examples = TASK.encode(ROWS, tok, Options())
    results = []
    for bs in (1, 3):
        batches = [TASK.collate(examples[i : i + bs], tok, Options()) for i in range(0, 5, bs)]
        results.append(TASK.evaluate(model, batches, Options()))
    one, three = results
    assert one["eval_tokens"] == three["eval_tokens"] == sum(len(targets_of(e)) for e in examples)
    assert abs(one["eval_loss"] - three["eval_loss"]) < 1e-6
    assert math.isclose(one["perplexity"], math.exp(one["eval_loss"]))
    assert not model.training


# ---- model, manifest, generate ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama_dir(tmp_path_factory.mktemp("tiny"), tied=True)


def test_model_parts_and_load_model(tiny_dir):
    source = SimpleNamespace(name="tiny", path=tiny_dir, gguf_sha256=None)
    parts = TASK.model_parts(source, Options())
    assert parts.head == ("lm_head",) and parts.new_head is False
    model, tokenizer = TASK.load_model(source, Options(), {})
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token_id is not None
    assert model.get_submodule(parts.head[0]) is model.get_output_embeddings()


def test_manifest_and_generate(tok):
    options = Options(system_prompt="be good")
    manifest = TASK.manifest(options, tok)
    assert manifest == {
        "prompt_format": "chat_template",
        "chat_template": tok.chat_template,
        "system_prompt": "be good",
        "eos_token": "<|im_end|>",
    }
    model = tiny_llama()
    text = TASK.generate(model, tok, "hello world", options, max_new_tokens=6)
    # The same greedy decoding by hand: rendered like training, new tokens only, stop at eos.
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "be good"}, {"role": "user", "content": "hello world"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = ids_of(tok, prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    assert text == tok.decode(new, skip_special_tokens=True).strip()


def test_response_that_merges_with_the_header_keeps_its_prompt_tokens():
    # A BPE that merges "assistant\n\nh": the prompt's tokens are then not a prefix of the
    # conversation's tokens; the response is tokenized after the prompt, as at generation time.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from adapterkit.testing import CHATML_TEMPLATE

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(
        ["user\nhi<|im_end|>\n<|im_start|>assistant\n\nhello there"] * 50, trainer
    )
    t = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")
    t.chat_template = CHATML_TEMPLATE
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nhello there"}]
    prompt = TASK._render(t, msgs[:1], prompt=True)
    assert TASK._render(t, msgs, prompt=False)[: len(prompt)] != prompt  # the case under test

    (ex,) = TASK.encode([{"instruction": "hi", "output": "\nhello there"}], t, Options())
    assert ex["input_ids"][: len(prompt)] == prompt
    assert t.decode(targets_of(ex)) == "\nhello there<|im_end|>"
    assert set(ex["labels"][: len(prompt)]) == {IGNORE}
