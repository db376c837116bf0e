"""T5's span corruption (the `span_corruption` task) on a tiny random T5: the noise mask's counts
and spans, inputs and targets that give the text back, corruption keyed (not drawn from hidden
state), and the task through the conformance kit."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterkit.errors import DataError, ModelError
from adapterkit.plugins import load_registry
from adapterkit.tasks.seq2seq import noise
from adapterkit.tasks.seq2seq.span_corruption import Options, SpanCorruption, sentinel_ids
from adapterkit.testing import TaskCase, check_strategy, check_task, tiny_tokenizer
from adapterkit.testing.tiny import T5_SENTINELS, save_tiny_t5_dir, tiny_t5_tokenizer

TASK = SpanCorruption()
_WORDS = "the cat is happy . the dog is sad . a big red sun . the small blue moon".split()


def text_rows() -> str:
    """8 documents of 12 to 19 words in the tiny T5's vocabulary, a blank line between them."""
    docs = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(12 + i)) for i in range(8)]
    return "\n\n".join(docs) + "\n"


def _runs(mask: list[bool]) -> list[tuple[bool, int]]:
    runs: list[tuple[bool, int]] = []
    for m in mask:
        if runs and runs[-1][0] == m:
            runs[-1] = (m, runs[-1][1] + 1)
        else:
            runs.append((m, 1))
    return runs


def test_the_noise_mask_has_t5s_counts() -> None:
    mask = noise.noise_mask(1000, 0.15, 3.0, noise.rng_for("k", 1), max_spans=100)
    runs = _runs(mask)
    assert sum(mask) == 150 and len(mask) == 1000
    assert [m for m, _ in runs] == [False, True] * 50  # 50 spans, non-noise first, noise last
    assert mask == noise.noise_mask(1000, 0.15, 3.0, noise.rng_for("k", 1), max_spans=100)
    assert mask != noise.noise_mask(1000, 0.15, 3.0, noise.rng_for("k", 2), max_spans=100)
    lengths = [n for m, n in runs if m]
    assert sum(lengths) / len(lengths) == 3.0
    short = noise.noise_mask(2, 0.15, 3.0, noise.rng_for(0), max_spans=100)
    assert short == [False, True]  # at least one noise token, at least one kept
    capped = noise.noise_mask(1000, 0.15, 3.0, noise.rng_for(0), max_spans=10)
    assert sum(capped) == 150 and sum(1 for m, _ in _runs(capped) if m) == 10


def test_input_and_target_give_the_text_back() -> None:
    tokens = list(range(10, 30))
    mask = noise.noise_mask(len(tokens), 0.3, 2.0, noise.rng_for("x"), max_spans=10)
    sentinels = list(range(100, 110))
    source, target = noise.corrupt(tokens, mask, sentinels, eos=1)
    assert source[-1] == 1 and target[-1] == 1
    spans: dict[int, list[int]] = {}
    current = None
    for t in target[:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)  # type: ignore[index]
    rebuilt = [x for t in source[:-1] for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == tokens
    assert [t for t in source if t in sentinels] == sentinels[: len(spans)]


def test_tokenizers_sentinels_and_one_without() -> None:
    tok = tiny_t5_tokenizer()
    assert sentinel_ids(tok) == [tok.convert_tokens_to_ids(s) for s in T5_SENTINELS]
    with pytest.raises(ModelError, match="sentinel tokens"):
        TASK.collate([{"input_ids": [5, 6, 7], "index": 0}], tiny_tokenizer(), Options())


def test_corruption_is_keyed_by_index_seed_and_epoch() -> None:
    tok, options = tiny_t5_tokenizer(), Options(noise_density=0.3)
    examples = [{"input_ids": [3 + (j % 90) for j in range(30 + i)], "index": i} for i in range(4)]
    whole = TASK.collate(examples, tok, options)
    alone = TASK.collate(examples[2:3], tok, options)
    width = alone["input_ids"].shape[1]
    assert whole["input_ids"][2, :width].tolist() == alone["input_ids"][0].tolist()
    first = TASK.collate_train(examples, tok, options, seed=0, epoch=0)
    assert (
        first["labels"].tolist()
        == TASK.collate_train(examples, tok, options, 0, 0)["labels"].tolist()
    )
    again = TASK.collate_train(examples, tok, options, seed=0, epoch=1)
    assert first["input_ids"].tolist() != again["input_ids"].tolist()


def test_documents_and_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "docs.txt"
    f.write_text("a b\nc\n\n\nd e f\n")
    rows = TASK.read(f, Options())
    assert [(r["text"], r["line"]) for r in rows] == [("a b c", 1), ("d e f", 5)]
    assert len(TASK.read(f, Options(documents="lines"))) == 3
    f.write_text("\n\n")
    with pytest.raises(DataError, match="no text"):
        TASK.read(f, Options())
    j = tmp_path / "docs.jsonl"
    j.write_text('{"text": "a b"}\n{"body": "c"}\n')
    with pytest.raises(DataError, match=f"{j}:2: no text in field 'text'"):
        TASK.read(j, Options())


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_t5_dir(tmp_path_factory.mktemp("t5") / "t5", tied=False)


def test_the_task_meets_the_contract(
    t5_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.txt"
    data.write_text(text_rows())
    options = {"max_length": 16, "noise_density": 0.3}
    check_task(SpanCorruption, options, data=data, model=str(t5_dir))
    monkeypatch.setenv("ADAPTERKIT_AUTO_PRECISION", "fp32")  # as the conformance tests train
    case = TaskCase("span_corruption", str(t5_dir), "train.txt", text_rows, options)
    assert check_strategy(load_registry().classes["strategy"]["full"], tasks=[case]) == [
        "span_corruption"
    ]


def test_generate_fills_the_sentinels(t5_dir: Path) -> None:
    from adapterkit.storage.sources import resolve

    model, tok = TASK.load_model(resolve(str(t5_dir)), Options(), {})
    text = TASK.generate(model.eval(), tok, "the cat <extra_id_0> happy .", Options(), 4)
    assert isinstance(text, str) and "</s>" not in text and "<pad>" not in text
