"""The `text` task: reading raw text, blocks with no padding, the loss on every token against
transformers' own, perplexity independent of the eval batch size, training, reloading, planning."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from adapterkit import api
from adapterkit.errors import DataError, RecipeError
from adapterkit.recipe import resolve
from adapterkit.storage import sources
from adapterkit.task import collate_all
from adapterkit.tasks.text import Options, TextLM
from adapterkit.tasks.text.blocks import cut

TASK = TextLM()
DOCS = [
    "the cat is happy .\nthe dog is sad .",
    "a big red sun . the small blue moon",
    "one two three four five six seven eight nine ten",
    "hello world",
    "what is the sun ? the sun is big and the moon is small .",
    "the red book is on the tree .\nthe blue book is in the water .\nthe green one is not",
]


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def stream_of(tok, docs: list[str]) -> list[int]:
    return [t for d in docs for t in (*ids_of(tok, d), tok.eos_token_id)]


@pytest.fixture(scope="module")
def model_and_tok(llama_dir: Path):
    return TASK.load_model(sources.resolve(str(llama_dir)), Options(), {})


# ---- reading ----------------------------------------------------------------------------------------


def test_plain_text_documents_are_paragraphs_or_lines(tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    path.write_bytes("\ufeffone two\r\nthree\r\n\r\n  \t\n\nfour five\n\n\nsix\n".encode())
    assert [r["text"] for r in TASK.read(path, Options())] == ["one two\nthree", "four five", "six"]
    by_line = TASK.read(path, Options(documents="lines"))
    assert [r["text"] for r in by_line] == ["one two", "three", "four five", "six"]


def test_jsonl_reads_the_text_field_and_ignores_the_others(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"id": 1, "text": "a b", "body": "x"}, {"id": 2, "text": "c\n\nd", "body": "y"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert TASK.read(path, Options()) == [{"text": "a b"}, {"text": "c\n\nd"}]
    assert TASK.read(path, Options(text_field="body")) == [{"text": "x"}, {"text": "y"}]
    as_text = tmp_path / "docs.txt"  # a .txt holding JSONL: the format option says how to read it
    as_text.write_text(path.read_text())
    assert TASK.read(as_text, Options(format="jsonl")) == [{"text": "a b"}, {"text": "c\n\nd"}]


@pytest.mark.parametrize(
    ("name", "content", "options", "lineno", "words"),
    [
        (
            "d.jsonl",
            b'{"text": "a"}\n{"body": "b"}\n',
            {},
            2,
            "no field 'text' (fields found: 'body')",
        ),
        ("d.jsonl", b'{"text": "a"}\n\n{"text": 3}\n', {}, 3, "'text' must be a string, got int"),
        ("d.jsonl", b'{"text": "  "}\n', {}, 1, "empty text in 'text'"),
        ("d.jsonl", b'{"text": "a"}\n{"text": "b"\n', {}, 2, "invalid JSON"),
        ("d.jsonl", b'{"body": "a"}\n', {"text_field": "body2"}, 1, "no field 'body2'"),
        ("d.txt", b"good line\nsecond\n\xff\xfe bad\n", {}, 3, "not UTF-8 text (byte 0xff)"),
        ("d.txt", b"good\n\nnul \x00 here\n", {}, 3, "NUL byte"),
    ],
)
def test_bad_lines_name_the_file_and_line(
    tmp_path: Path, name: str, content: bytes, options: dict, lineno: int, words: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        TASK.read(path, Options(**options))
    assert str(err.value).startswith(f"{path}:{lineno}: ")
    assert words in str(err.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_an_empty_text_file_is_a_data_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}: no documents"):
        TASK.read(path, Options())
    with pytest.raises(DataError, match="not found"):
        TASK.read(tmp_path / "missing.txt", Options())


# ---- blocks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 9, 16, 200])
def test_blocks_cover_every_token_once_as_a_target(tok, size: int) -> None:
    stream = stream_of(tok, DOCS)
    blocks = TASK.encode([{"text": d} for d in DOCS], tok, Options(block_size=size))
    assert blocks.tokens == len(stream) and blocks.documents == len(DOCS)
    ids = [b["input_ids"] for b in blocks]
    assert all(len(b) == size for b in ids[:-1]) and 2 <= len(ids[-1]) <= size
    assert all(a[-1] == b[0] for a, b in itertools.pairwise(ids))  # one token of context
    assert [ids[0][0]] + [t for b in ids for t in b[1:]] == stream  # each target exactly once
    batch = TASK.collate(list(blocks), tok, Options())
    assert TASK.targets(batch) == len(stream) - 1


def test_remainder_drop_keeps_only_full_blocks(tok) -> None:
    rows = [{"text": d} for d in DOCS]
    n = len(stream_of(tok, DOCS))
    kept = TASK.encode(rows, tok, Options(block_size=8))
    dropped = TASK.encode(rows, tok, Options(block_size=8, remainder="drop"))
    assert (n - 1) % 7 and len(dropped) == len(kept) - 1  # the stream does not end on a block
    assert all(len(b["input_ids"]) == 8 for b in dropped)
    assert dropped.dropped_tokens == len(kept[-1]["input_ids"]) - 1 == (n - 1) % 7
    assert kept.dropped_tokens == 0


def test_cut_edges() -> None:
    b0, b1 = list(range(8)), list(range(7, 15))
    assert cut(list(range(15)), 8, True) == ([b0, b1], 0)  # the stream ends on a block
    assert cut(list(range(16)), 8, True) == ([b0, b1, [14, 15]], 0)
    assert cut(list(range(16)), 8, False) == ([b0, b1], 1)
    assert cut([5], 8, True) == ([], 0)  # one token predicts nothing
    assert cut([5, 6, 7], 8, False) == ([], 2)


def test_end_token_option(tok) -> None:
    (block,) = TASK.encode([{"text": "the cat"}], tok, Options(end_token="."))
    assert block["input_ids"] == [*ids_of(tok, "the cat"), tok.convert_tokens_to_ids(".")]
    with pytest.raises(RecipeError, match=r"task\.options\.end_token: 'zebra' is not a token"):
        TASK.encode([{"text": "the cat"}], tok, Options(end_token="zebra"))
    with pytest.raises(DataError, match=r"rows\[1\]: a row needs 'text'"):
        TASK.encode([{"text": "a"}, {"body": "b"}], tok, Options())


def test_full_blocks_stack_and_a_short_one_is_packed_without_padding(tok) -> None:
    blocks = TASK.encode([{"text": d} for d in DOCS], tok, Options(block_size=8))
    full = TASK.collate(blocks[:3], tok, Options())
    assert full["input_ids"].shape == (3, 8) and "position_ids" not in full
    assert bool(full["attention_mask"].all()) and torch.equal(full["labels"], full["input_ids"])
    tail = blocks[-2:]
    packed = TASK.collate(tail, tok, Options())
    width = sum(len(b["input_ids"]) for b in tail)
    assert packed["input_ids"].shape == (1, width) and bool(packed["attention_mask"].all())
    assert packed["position_ids"][0].tolist() == [*range(8), *range(width - 8)]
    assert TASK.targets(packed) == width - 2  # each block's first token is context only


# ---- loss and metrics against transformers ----------------------------------------------------------


def _reference_sum(llama_dir: Path, blocks: list[dict]) -> tuple[float, int]:
    """transformers' own loss (mean over a block's shifted labels) x targets, block by block."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            ids = torch.tensor([b["input_ids"]])
            total += float(ref(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total, count


def test_eval_matches_transformers_and_not_the_eval_batch_size(model_and_tok, llama_dir) -> None:
    model, tok = model_and_tok
    opts = Options(block_size=8)
    blocks = TASK.encode([{"text": d} for d in DOCS], tok, opts)
    assert len(blocks) > 8 and len(blocks[-1]["input_ids"]) < 8  # batches of 3 and 8 get packed
    total, count = _reference_sum(llama_dir, list(blocks))
    figures = [
        TASK.evaluate(model, collate_all(TASK, list(blocks), tok, opts, size), opts)
        for size in (1, 3, 8)
    ]
    for f in figures:
        assert f["eval_tokens"] == count == len(stream_of(tok, DOCS)) - 1
        assert f["eval_loss"] == pytest.approx(total / count, rel=1e-5)
        assert f["perplexity"] == pytest.approx(math.exp(f["eval_loss"]), rel=1e-12)
        assert f["eval_loss"] == pytest.approx(figures[0]["eval_loss"], rel=1e-6)
    with torch.no_grad():  # the batch loss is summed: the batch of 8 is the sum of its blocks
        parts = sum(float(TASK.loss(model, TASK.collate([b], tok, opts))) for b in blocks[-8:])
        whole = float(TASK.loss(model, TASK.collate(list(blocks[-8:]), tok, opts)))
    assert whole == pytest.approx(parts, rel=1e-5)


def test_block_size_past_the_models_positions_is_refused(llama_dir: Path) -> None:
    source = sources.resolve(str(llama_dir))  # the tiny Llama has 256 positions
    assert TASK.model_parts(source, Options(block_size=256)).head == ("lm_head",)
    with pytest.raises(RecipeError, match=r"task\.options\.block_size: 257 is more than the 256"):
        TASK.model_parts(source, Options(block_size=257))


def test_plan_uses_the_block_size(llama_dir: Path, tmp_path: Path) -> None:
    from adapterkit.planning.memory import from_recipe

    recipe = _recipe(tmp_path, llama_dir, "lora", "{r: 4}", "train: {batch_size: 4}")
    (plan,) = from_recipe(resolve(recipe), None, "cpu")
    assert plan.seq_len == 32 and plan.batch_size == 4 and plan.trainable_params > 0


# ---- train, reload, eval, generate ------------------------------------------------------------------


def _recipe(tmp_path: Path, llama_dir: Path, strategy: str, s_opts: str, train: str) -> Path:
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(DOCS * 3) + "\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {{name: {llama_dir}}}\n"
        "task: {name: text, options: {block_size: 32}}\n"
        "data: {train: docs.txt, eval: docs.txt}\n"
        f"strategy: {{name: {strategy}, options: {s_opts}}}\n{train}\n"
    )
    return path


def test_train_reload_eval_and_generate(tok, llama_dir: Path, tmp_path: Path) -> None:
    train = (
        "train: {max_steps: 6, batch_size: 4, eval_batch_size: 3, lr: 0.01, schedule: constant,"
        " precision: fp32}"
    )
    out = tmp_path / "run"
    metrics = api.train(resolve(_recipe(tmp_path, llama_dir, "lora", "{r: 4}", train)), out, False)
    before, after = metrics["initial_eval"], metrics["final_eval"]
    assert after["eval_loss"] < before["eval_loss"] - 0.1  # training on the text lowers its loss
    assert after["eval_tokens"] == before["eval_tokens"] == len(stream_of(tok, DOCS * 3)) - 1
    for size in (1, 8):  # the reloaded adapter gives the same figures at any eval batch size
        again = api.evaluate(out, tmp_path / "docs.txt", batch_size=size)
        assert again["eval_tokens"] == after["eval_tokens"]
        assert again["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-5)
    manifest = json.loads((out / "adapterkit.json").read_text())
    assert manifest["task"]["name"] == "text" and manifest["task"]["prompt_format"] == "raw_text"
    assert manifest["task"]["options"]["block_size"] == 32
    text = api.generate("the cat", adapter=out, max_new_tokens=4)
    assert isinstance(text, str) and "<|im_end|>" not in text


def test_generate_continues_raw_text_and_stops_at_the_end_token(model_and_tok) -> None:
    model, tok = model_and_tok
    opts = Options()
    prompt = ids_of(tok, "the cat is")
    with torch.no_grad():
        want = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )[0, len(prompt) :]
    got = TASK.generate(model, tok, "the cat is", opts, max_new_tokens=5)
    assert got == tok.decode(want, skip_special_tokens=True)  # no chat template around the prompt
    assert isinstance(TASK.generate(model, tok, "", opts, max_new_tokens=2), str)


@pytest.mark.parametrize(
    ("data", "override", "words"),
    [
        ("\n\n", [], ["docs.txt: no documents"]),
        (None, ["task.options.block_size=512"], ["task.options.block_size: 512", "256 positions"]),
        ("a\n\nb \xff\n", [], ["docs.txt:3: not UTF-8 text"]),
    ],
    ids=["empty text file", "block size past the positions", "not UTF-8"],
)
def test_bad_input_exits_2_naming_it(
    llama_dir: Path, tmp_path: Path, data: str | None, override: list[str], words: list[str]
) -> None:
    from click.testing import CliRunner

    from adapterkit.cli import cli

    recipe = _recipe(tmp_path, llama_dir, "lora", "{r: 4}", "train: {max_steps: 1}")
    if data is not None:
        (tmp_path / "docs.txt").write_bytes(data.encode("latin-1"))
    args = ["train", str(recipe), *override, "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    message = result.output.partition("error: ")[2]
    assert all(w in message for w in words), result.output
