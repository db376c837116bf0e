"""Strategies x tasks on tiny random models, through the public API, end to end.

Each case trains three steps, saves, reloads the adapter onto a freshly loaded base (different RNG
state), and must reproduce the final eval bit for bit, then predicts (or generates). The first
tasks run with every strategy on both BERT and Llama; the later ones with LoRA on the model they
are used with (every strategy on every task is the conformance kit's, tests/unit/strategies).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterkit import api
from adapterkit.recipe import resolve
from adapterkit.storage.sources import resolve as resolve_model
from adapterkit.testing import save_tiny_bert_dir, save_tiny_llama_dir
from adapterkit.testing.fixtures import TASK_CASES, conll_rows, instruction_rows
from adapterkit.testing.tiny import save_tiny_t5_dir

STRATEGIES = {
    "full": "{}",
    "head": "{}",
    "last_n": "{n: 1}",
    "lora": "{r: 4}",
    "qlora": "{r: 4}",
}
WORDS = "the cat is happy . the dog is sad . a big red sun . the small blue moon".split()


def classification_rows() -> str:
    rows = ["sentence\tlabel"]
    for i in range(12):
        text = " ".join(WORDS[i % 5 : i % 5 + 4 + i % 3])
        rows.append(f"{text}\t{['neg', 'pos', 'mid'][i % 3]}")
    return "\n".join(rows) + "\n"


def pair_rows() -> str:
    rows = ["sentence1\tsentence2\tlabel"]
    for i in range(12):
        rows.append(
            f"{' '.join(WORDS[i % 4 : i % 4 + 3])}\t{' '.join(WORDS[i % 6 : i % 6 + 4])}\t{i % 2}"
        )
    return "\n".join(rows) + "\n"


TASKS = {
    "sequence_classification": ("train.tsv", classification_rows, "{max_length: 32}"),
    "pair_classification": (
        "pairs.tsv",
        pair_rows,
        "{text_column: sentence1, text_pair_column: sentence2, max_length: 32}",
    ),
    "token_classification": ("train.txt", conll_rows, "{max_length: 32}"),
    "causal_lm": ("train.jsonl", instruction_rows, "{max_length: 48}"),
}
CASES = [
    (model, task, strategy)
    for model in ("bert", "llama")
    for task in TASKS
    for strategy in STRATEGIES
    if not (model == "bert" and task == "causal_lm")
]
LATER_TASKS = ("text", "masked_lm", "seq2seq", "extractive_qa")
for _name in LATER_TASKS:
    _case = TASK_CASES[_name]
    TASKS[_name] = (_case.data_file, _case.rows, json.dumps(_case.options))
    CASES.append((_case.model, _name, "lora"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matrix-models")
    return {
        "bert": save_tiny_bert_dir(root / "bert"),
        "llama": save_tiny_llama_dir(root / "llama", tied=False),
        "t5": save_tiny_t5_dir(root / "t5", tied=False),  # T5 v1.1's own LM head
    }


@pytest.mark.parametrize(("model", "task", "strategy"), CASES, ids=["-".join(c) for c in CASES])
def test_train_save_reload_predict(
    model: str, task: str, strategy: str, models: dict[str, Path], tmp_path: Path
) -> None:
    filename, make_rows, task_options = TASKS[task]
    data = tmp_path / filename
    data.write_text(make_rows())
    task_name = "sequence_classification" if task == "pair_classification" else task
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"model: {{name: {models[model]}}}\n"
        f"task: {{name: {task_name}, options: {task_options}}}\n"
        f"data: {{train: {filename}, eval: {filename}}}\n"
        f"strategy: {{name: {strategy}, options: {STRATEGIES[strategy]}}}\n"
        "train: {max_steps: 3, batch_size: 4, eval_batch_size: 5, lr: 0.01, eval_at_start: false}\n"
    )
    out = tmp_path / "out"
    metrics = api.train(resolve(recipe_path), out, progress=False)
    assert metrics["steps"] == 3 and metrics["trainable_params"] > 0

    torch.manual_seed(12345)  # the reloaded base's fresh head init must not matter
    again = api.evaluate(out, data, batch_size=5)
    assert again == metrics["final_eval"]  # bit for bit: every figure equal, not approximately

    _predicts(task, out, data, tmp_path)


def _predicts(task: str, out: Path, data: Path, tmp_path: Path) -> None:
    if task in ("causal_lm", "text", "seq2seq"):
        assert isinstance(api.generate("name a colour", adapter=out, max_new_tokens=3), str)
    if task == "seq2seq":
        predictions = api.predict(out, data)
        assert len(predictions) == 12 and isinstance(predictions[0]["prediction"], str)
    elif task == "masked_lm":  # fill-mask: a token and its probability per [MASK]
        masks = tmp_path / "masks.txt"
        masks.write_text("the [MASK] is happy .\n\na big [MASK] [MASK] .\n")
        predictions = api.predict(out, masks)
        assert [len(p["fills"]) for p in predictions] == [1, 2]
        assert all(0 < f["score"] <= 1 for f in predictions[1]["fills"])
    elif task == "extractive_qa":
        predictions = api.predict(out, data)
        assert len(predictions) == 9 and all(0 <= p["score"] <= 1 for p in predictions)
    elif task not in ("causal_lm", "text"):
        predictions = api.predict(out, data)
        assert len(predictions) == (10 if task == "token_classification" else 12)
        first = predictions[0]
        assert ("tags" in first) if task == "token_classification" else (0 <= first["score"] <= 1)


@pytest.mark.parametrize(("model", "head"), [("bert", "classifier"), ("llama", "score")])
def test_qlora_never_quantizes_a_new_head(model: str, head: str, models: dict[str, Path]) -> None:
    """The skip list comes from the model class (meta-device build), not from a list of names."""
    import bitsandbytes as bnb

    from adapterkit.plugins import load_registry
    from adapterkit.tasks._labelled import head_parts

    registry = load_registry()
    task, qlora = registry.task("sequence_classification"), registry.strategy("qlora")
    source = resolve_model(str(models[model]))
    parts = head_parts("SequenceClassification", source, 3)
    assert head in parts.head and parts.new_head
    options = type(task).Options(labels=["a", "b", "c"])
    q_options = type(qlora).Options()
    loaded, _ = task.load_model(source, options, qlora.load_kwargs(q_options, parts))
    wrapped = qlora.apply(loaded, q_options, parts)
    quantized = [n for n, m in wrapped.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "the backbone's linear layers are 4-bit"
    assert not [n for n in quantized if f".{head}" in n or n.endswith(head)]
    head_weights = [p for n, p in wrapped.named_parameters() if f"{head}." in n and p.requires_grad]
    assert head_weights and all(p.dtype == torch.float32 for p in head_weights)
