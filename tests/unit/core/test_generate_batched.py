"""Batched generation and seeded sampling (`adapterkit.sampling`, `adapterkit.generating`, the
tasks' `generate_batch` / `generate_rows`), on tiny random models.

The tiny Llama here is initialised with a wider spread (initializer_range 0.2) than the suite's
`llama_dir`, so that its greedy replies differ from prompt to prompt (the default one answers
every prompt alike, which would hide a reordering).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from adapterkit import api, sampling
from adapterkit import task as task_mod
from adapterkit.cli import cli
from adapterkit.errors import UserError
from adapterkit.recipe import resolve
from adapterkit.sampling import RowSampler, Settings
from adapterkit.tasks.causal_lm import CausalLM, Options, generation
from adapterkit.tasks.seq2seq import Options as Seq2SeqOptions
from adapterkit.tasks.seq2seq import Seq2Seq
from adapterkit.tasks.seq2seq.span_corruption import SpanCorruption
from adapterkit.tasks.sequence_classification import SequenceClassification
from adapterkit.tasks.text import Options as TextOptions
from adapterkit.tasks.text import TextLM
from adapterkit.testing import tiny_llama_config, tiny_tokenizer
from adapterkit.testing.tiny import tiny_t5, tiny_t5_tokenizer

TASK = CausalLM()
PROMPTS = [
    "name a colour",
    "write one two three",
    "tell a cat",
    "what is the sun and the moon",
    "hello",
    "why is the dog sad",
]
ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
    {"instruction": "what is the sun", "output": "the sun is big ."},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: more threads only spin (on a shared 2-core machine, a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sharp_llama() -> Any:
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.initializer_range = 0.2
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    return _sharp_llama(), tiny_tokenizer()


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sharp-llama")
    _sharp_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, sharp_dir: Path) -> Path:
    """A LoRA trained one step on four chat rows."""
    root = tmp_path_factory.mktemp("generate-run")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = {
        "model": {"name": str(sharp_dir)},
        "task": {"name": "causal_lm", "options": {"max_length": 64}},
        "data": {"train": "train.jsonl"},
        "strategy": {"name": "lora", "options": {"r": 2}},
        "train": {"max_steps": 1, "batch_size": 4, "lr": 0.01, "threads": 1},
    }
    (root / "recipe.yaml").write_text(json.dumps(recipe))
    api.train(resolve(root / "recipe.yaml"), root / "run", progress=False)
    return root / "run"


def _rendered(tok: Any, prompts: list[str]) -> list[list[int]]:
    msgs = [
        TASK._messages({"messages": [{"role": "user", "content": p}]}, Options()) for p in prompts
    ]
    return [TASK._render(tok, m, prompt=True) for m in msgs]


def _ids(lm: tuple[Any, Any], settings: Settings, prompts: list[str] = PROMPTS) -> list[list[int]]:
    model, tok = lm
    search = generation.search_of(tok, Options(), beams=1)
    return generation.generate_ids(model, _rendered(tok, prompts), settings, search)


# ---- greedy -------------------------------------------------------------------------------------


def test_batched_greedy_equals_one_prompt_at_a_time_token_for_token(lm) -> None:
    one = _ids(lm, Settings(max_new_tokens=8, batch_size=1))
    four = _ids(lm, Settings(max_new_tokens=8, batch_size=4))  # a full batch, then a part one
    assert len({len(r) for r in _rendered(lm[1], PROMPTS)}) > 3  # left padding really used
    assert four == one
    assert len({tuple(r) for r in one}) == len(PROMPTS)  # every prompt answered differently
    reverse = _ids(lm, Settings(max_new_tokens=8, batch_size=4), PROMPTS[::-1])
    assert reverse == one[::-1]  # the outputs keep the prompts' order
    texts = TASK.generate_batch(*lm, PROMPTS, Options(), Settings(max_new_tokens=8, batch_size=3))
    assert texts == [TASK.generate(*lm, p, Options(), max_new_tokens=8) for p in PROMPTS]


# ---- sampling -----------------------------------------------------------------------------------


def test_sampling_repeats_with_its_seed_whatever_the_batch_size(lm) -> None:
    hot = {"max_new_tokens": 8, "temperature": 2.0}
    seeded = _ids(lm, Settings(**hot, batch_size=1, seed=7))
    assert _ids(lm, Settings(**hot, batch_size=4, seed=7)) == seeded
    assert _ids(lm, Settings(**hot, batch_size=6, seed=7)) == seeded
    other = _ids(lm, Settings(**hot, batch_size=4, seed=8))
    assert sum(a != b for a, b in zip(seeded, other, strict=True)) >= 4
    greedy = _ids(lm, Settings(max_new_tokens=8))
    assert seeded != greedy
    fresh = [_ids(lm, Settings(**hot, batch_size=6)) for _ in range(2)]  # no seed: one drawn
    assert fresh[0] != fresh[1]


def test_a_tiny_top_p_keeps_only_the_most_likely_token(lm) -> None:
    narrow = Settings(max_new_tokens=8, batch_size=4, temperature=1.0, top_p=1e-6, seed=3)
    assert _ids(lm, narrow) == _ids(lm, Settings(max_new_tokens=8, batch_size=4))


def test_row_sampler_draws_from_the_tempered_nucleus() -> None:
    """4000 rows of one distribution, each from its own generator: the frequencies are transformers'
    temperature and top-p applied to it (probabilities 0.5 0.3 0.15 0.05; top_p 0.75 keeps the
    first two), within 4 standard deviations; the scores allow exactly the token drawn."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 4000
    scores = probs.log().repeat(n, 1)
    for temperature, top_p, expected in (
        (1.0, 0.75, [0.625, 0.375, 0.0, 0.0]),
        (2.0, 1.0, (probs.sqrt() / probs.sqrt().sum()).tolist()),
    ):
        settings = Settings(temperature=temperature, top_p=top_p, seed=0)
        out = RowSampler(settings, range(n))(torch.zeros(n, 1, dtype=torch.long), scores.clone())
        assert ((out == 0).sum(dim=1) == 1).all() and (out[out != 0] == -math.inf).all()
        freq = torch.bincount(out.argmax(dim=1), minlength=4).double() / n
        for got, want in zip(freq.tolist(), expected, strict=True):
            assert abs(got - want) <= 4 * math.sqrt(max(want * (1 - want), 1e-9) / n)
    again = RowSampler(Settings(temperature=2.0, seed=0), range(n))(
        torch.zeros(n, 1, dtype=torch.long), scores.clone()
    )
    assert torch.equal(out, again)  # the same seed and rows, the same draws


def test_seq2seq_and_text_generate_batched_and_seeded(lm) -> None:
    t5, t5_tok = tiny_t5(), tiny_t5_tokenizer()
    s2s, opts = Seq2Seq(), Seq2SeqOptions(max_new_tokens=6)
    sources = ["one two three", "the cat is red", "a dog", "the sun is big and the moon is small"]
    greedy = s2s.generate_batch(t5, t5_tok, sources, opts, Settings(batch_size=3))
    assert greedy == [s2s.generate(t5, t5_tok, s, opts, max_new_tokens=6) for s in sources]
    hot = {"temperature": 3.0, "seed": 5}
    sampled = s2s.generate_batch(t5, t5_tok, sources, opts, Settings(**hot, batch_size=1))
    assert s2s.generate_batch(t5, t5_tok, sources, opts, Settings(**hot, batch_size=4)) == sampled
    assert sampled != greedy
    text, t_opts = TextLM(), TextOptions()
    docs = ["the cat is", "", "one two", "why is the dog sad and the sun big"]
    batched = text.generate_batch(*lm, docs, t_opts, Settings(max_new_tokens=5, batch_size=4))
    assert batched == [text.generate(*lm, d, t_opts, max_new_tokens=5) for d in docs]
    warm = Settings(max_new_tokens=5, temperature=1.5, seed=1)
    assert text.generate_batch(*lm, docs, t_opts, warm) == text.generate_batch(
        *lm, docs, t_opts, Settings(max_new_tokens=5, temperature=1.5, seed=1, batch_size=1)
    )


# ---- the command and the API ----------------------------------------------------------------------


def test_generate_reads_prompts_from_stdin_and_keeps_their_order(sharp_dir, tmp_path) -> None:
    base = ["generate", "--model", str(sharp_dir), "--task", "causal_lm", "--max-new-tokens", "6"]
    result = CliRunner().invoke(
        cli, [*base, "--prompts", "-", "--batch-size", "2"], input="\n".join(PROMPTS[:3]) + "\n\n"
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = api.generate(PROMPTS[:3], model=str(sharp_dir), task="causal_lm", max_new_tokens=6)
    assert rows == [{"prompt": p, "output": o} for p, o in zip(PROMPTS[:3], expected, strict=True)]
    assert (
        api.generate(PROMPTS[0], model=str(sharp_dir), task="causal_lm", max_new_tokens=6)
        == (expected[0])
    )
    # sampling into a file: the seed is printed, and repeats the file exactly
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out.jsonl"
    args = [*base, "--prompts", str(prompts), "--temperature", "2", "--out", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    seed = int(first.stderr.split("sampling with seed ")[1].split()[0])
    sampled = out.read_text()
    again = CliRunner().invoke(cli, [*args, "--seed", str(seed), "--batch-size", "1"])
    assert again.exit_code == 0, again.output
    assert out.read_text() == sampled and len(sampled.splitlines()) == len(PROMPTS)
    assert [json.loads(line)["prompt"] for line in sampled.splitlines()] == PROMPTS


def test_predict_on_a_causal_lm_adapter_generates_for_every_row(adapter, tmp_path) -> None:
    data = tmp_path / "ask.jsonl"
    lines = [
        {"instruction": "write one two three", "output": "one two three ."},
        {"instruction": "tell a cat"},  # no response: nothing to compare with
        {"messages": [{"role": "user", "content": "name a colour"}]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "predictions.jsonl"
    args = ["predict", "--adapter", str(adapter), str(data), "--max-new-tokens", "6"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert [r["prompt"] for r in rows] == ["write one two three", "tell a cat", "name a colour"]
    assert rows[0]["references"] == ["one two three ."]
    assert "references" not in rows[1] and "references" not in rows[2]
    replies = api.generate([r["prompt"] for r in rows], adapter=adapter, max_new_tokens=6)
    assert [r["prediction"] for r in rows] == replies
    hot = [*args, "--temperature", "2", "--seed", "11"]
    one, three = (CliRunner().invoke(cli, [*hot, "--batch-size", b]) for b in ("1", "3"))
    assert one.exit_code == 0 and one.stdout == three.stdout
    assert [json.loads(x)["prediction"] for x in one.stdout.splitlines()] != replies


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--temperature", "-1"], "temperature must be 0 (greedy) or above"),
        (["--temperature", "nan"], "temperature must be"),
        (["--temperature", "1", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--temperature", "1", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-p", "0.9"], "temperature 0 is greedy"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
    ],
)
def test_bad_generation_settings_exit_2_before_any_model_loads(flags, words, tmp_path) -> None:
    args = ["generate", "hi", "--model", str(tmp_path / "no-model"), "--task", "causal_lm"]
    result = CliRunner().invoke(cli, [*args, *flags])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and "Traceback" not in result.output


def test_bad_prompts_and_outputs_exit_2_naming_the_path(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    (tmp_path / "outdir").mkdir()
    base = ["generate", "--model", str(tmp_path / "no-model"), "--task", "causal_lm"]
    cases = [
        (["--prompts", str(empty)], [str(empty), "no prompts"]),
        (["--prompts", str(tmp_path)], [str(tmp_path), "is a directory"]),
        (["--prompts", str(tmp_path / "nope.txt")], ["nope.txt", "file not found"]),
        (["--prompts", str(bad)], [f"{bad}:2:", '"prompt"']),
        (["--prompts", "-"], ["<stdin>", "no prompts"]),
        (["hi", "--out", str(tmp_path / "outdir")], ["outdir", "is a directory"]),
        (["hi", "--out", str(tmp_path / "a" / "b.jsonl")], ["does not exist"]),
        (["hi", "--prompts", str(empty)], ["give a PROMPT or --prompts FILE"]),
    ]
    for flags, words in cases:
        result = CliRunner().invoke(cli, [*base, *flags], input="")
        assert result.exit_code == 2, (flags, result.output)
        assert all(w in result.stderr for w in words), (flags, result.stderr)


def test_tasks_that_cannot_sample_or_do_not_generate_say_so() -> None:
    hot = Settings(temperature=1.0, seed=1)
    with pytest.raises(UserError, match="generates greedily only"):  # only `generate(prompt)`
        task_mod.generate_batch(SpanCorruption(), None, None, ["a"], None, hot)
    with pytest.raises(UserError, match="does not generate text"):
        task_mod.generate_batch(
            SequenceClassification(),
            None,
            None,
            ["a"],
            None,
            Settings(),
        )
    with pytest.raises(UserError, match="predicts without generation settings"):
        task_mod.generate_rows(SequenceClassification(), None, None, [{}], None, hot)
    assert task_mod.generates(TASK) and not task_mod.generates(SequenceClassification())
    assert sampling.row_seed(1, 0) != sampling.row_seed(0, 1)
