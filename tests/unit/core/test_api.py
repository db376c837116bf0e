"""api.train / api.load on a tiny local model: the whole data flow in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterkit import api
from adapterkit.errors import AdapterError, UserError
from adapterkit.recipe import resolve
from adapterkit.testing import save_tiny_llama_dir

ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "what is the sun", "output": "the sun is big and fire ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api")
    save_tiny_llama_dir(root / "tied", tied=True)
    save_tiny_llama_dir(root / "untied", tied=False)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 3))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "recipe.yaml").write_text(
        "model: {name: tied}\n"
        "task: {name: causal_lm, options: {max_length: 64}}\n"
        "data: {train: train.jsonl, eval: eval.jsonl}\n"
        "strategy: {name: lora, options: {r: 4}}\n"
        "train: {max_steps: 4, batch_size: 4, lr: 0.01, eval_every: 2, checkpoint_every: 2}\n"
    )
    return root


def train(workspace: Path, out: Path, *overrides: str, overwrite: bool = False) -> dict:
    recipe = resolve(workspace / "recipe.yaml", [f"model.name={workspace / 'tied'}", *overrides])
    return api.train(recipe, out, progress=False, overwrite=overwrite)


def test_train_writes_adapter_and_keeps_run_files(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(workspace, out)
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapterkit.json",
        "adapter_config.json",
        "recipe.yaml",
    } <= names
    # the final save swaps the directory; the run's own files must survive it
    assert {"log.jsonl", "metrics.json", "best", "checkpoints"} <= names
    assert not [n for n in names if n.startswith((".tmp", ".old"))]
    assert json.loads((out / "metrics.json").read_text())["steps"] == metrics["steps"] == 4
    manifest = json.loads((out / "adapterkit.json").read_text())
    assert manifest["strategy"] == {"name": "lora", "options": manifest["strategy"]["options"]}
    assert manifest["strategy"]["options"]["r"] == 4
    assert manifest["task"]["prompt_format"] == "chat_template"
    assert len(manifest["base_model"]["fingerprint"]) == 64


def test_existing_output_needs_overwrite(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(workspace, out)
    with pytest.raises(UserError, match="--overwrite"):
        train(workspace, out)
    train(workspace, out, "train.checkpoint_every=null", overwrite=True)
    assert not (out / "checkpoints").exists()  # the old run's checkpoints do not linger

    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an adapterkit run directory"):
        train(workspace, stranger, overwrite=True)
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_load_reproduces_eval_and_refuses_another_base(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(workspace, out)
    again = api.evaluate(out, workspace / "eval.jsonl", batch_size=3)
    assert again["eval_loss"] == pytest.approx(metrics["final_eval"]["eval_loss"], abs=1e-6)
    with pytest.raises(AdapterError) as exc:
        api.load(out, base=str(workspace / "untied"))
    assert str(workspace / "tied") in str(exc.value) and str(workspace / "untied") in str(exc.value)


def test_bad_data_line_fails_before_model_load(workspace: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(UserError, match=rf"{bad}:2"):
        train(workspace, tmp_path / "run", f"data.train={bad}")


def test_holdout_selects_and_test_is_reported_separately(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(
        workspace,
        out,
        "data.eval=null",
        "data.holdout=3",
        f"data.test={workspace / 'eval.jsonl'}",
    )
    assert metrics["final_eval"]["eval_tokens"] > 0  # the 3 held-out rows were the eval set
    assert set(metrics["test_eval"]) >= {"eval_loss", "perplexity"}
    assert set(metrics["test_eval_final"]) == set(metrics["test_eval"])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test_eval"] == pytest.approx(metrics["test_eval"])
    assert "tokens_per_s" in on_disk["definitions"] and "test_eval" in on_disk["definitions"]
    # the selected (best/) adapter scores the test set exactly as a reload of best/ does
    again = api.evaluate(out / "best", workspace / "eval.jsonl", batch_size=16)
    assert again["eval_loss"] == pytest.approx(metrics["test_eval"]["eval_loss"], abs=1e-6)


def test_holdout_and_eval_together_is_a_recipe_error(workspace: Path) -> None:
    with pytest.raises(UserError, match=r"give data\.eval or data\.holdout, not both"):
        resolve(workspace / "recipe.yaml", ["data.holdout=2"])


def test_generate_with_a_bare_model_takes_the_task_to_prompt_it_as(llama_dir: Path) -> None:
    """Several built-in tasks generate, so a bare model needs `task`; with it, the task's format."""
    text = api.generate("name a colour", model=str(llama_dir), max_new_tokens=3, task="causal_lm")
    assert isinstance(text, str)
    with pytest.raises(UserError, match="--task") as caught:
        api.generate("name a colour", model=str(llama_dir), max_new_tokens=3)
    assert "causal_lm" in str(caught.value) and "text" in str(caught.value)
