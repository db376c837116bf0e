"""Chained runs: a previous run directory as `model.name` is merged once (verified) and trained on;
the next run's manifest records the chain, and its adapter loads back onto the same merged base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import api
from adapterkit.errors import ModelError
from adapterkit.recipe import resolve
from adapterkit.storage import chain, sources
from adapterkit.testing.fixtures import TASK_CASES, recipe_dict, workspace, write_recipe


def _train(tmp: Path, task: str, model: str | None, out: str, steps: int = 2) -> Path:
    ws = workspace(TASK_CASES[task], tmp)
    recipe = recipe_dict(ws, "lora", {"r": 4, "alpha": 8}, steps)
    if model is not None:
        recipe["model"]["name"] = model
    api.train(resolve(write_recipe(ws, recipe)), tmp / out, progress=False)
    return tmp / out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Domain-adaptive pretraining (text, LoRA) and then an instruction fine-tune on top of it."""
    tmp = tmp_path_factory.mktemp("chain")
    cache = tmp / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERKIT_CACHE", str(cache))
        dapt = _train(tmp, "text", None, "dapt")
        tuned = _train(tmp, "causal_lm", str(dapt), "tuned")
    return dapt, tuned, cache


def test_the_next_runs_manifest_records_the_chain(runs: tuple[Path, Path, Path]) -> None:
    dapt, tuned, _ = runs
    first = json.loads((dapt / "adapterkit.json").read_text())
    second = json.loads((tuned / "adapterkit.json").read_text())
    (link,) = second["base_model"]["chain"]
    assert second["base_model"]["name"] == str(dapt)
    assert link["run"] == str(dapt.resolve())
    assert link["base_fingerprint"] == first["base_model"]["fingerprint"]
    assert (link["strategy"], link["task"]) == ("lora", "text")
    assert "chain" not in first["base_model"]


def test_the_base_is_the_verified_merge_of_the_previous_run(runs: tuple[Path, Path, Path]) -> None:
    dapt, _, cache = runs
    (merged,) = (cache / "merged").glob("dapt-*/")
    report = json.loads((merged / "verify.json").read_text())
    assert report["passed"] is True
    # The merged q_proj of layer 0 is the base's plus the first run's LoRA delta, B @ A * alpha / r.
    config = json.loads((dapt / "adapter_config.json").read_text())
    lora = load_file(str(dapt / "adapter_model.safetensors"))
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    base = json.loads((dapt / "adapterkit.json").read_text())["base_model"]
    key = "model.layers.0.self_attn.q_proj.weight"
    before = load_file(str(next(Path(base["name"]).glob("*.safetensors"))))[key]
    before = before.to(getattr(torch, base["dtype"])).float()  # the base as the run loaded it
    after = load_file(str(next(merged.glob("*.safetensors"))))[key]
    delta = (b @ a) * (config["lora_alpha"] / config["r"])
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, before + delta, rtol=0, atol=1e-6)


def test_the_chained_adapter_loads_onto_the_cached_merge(
    runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tuned, cache = runs
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(cache))
    merges = sorted((cache / "merged").iterdir())
    loaded = api.load(tuned)  # resolves the chain again: the cached merge, not a new one
    assert sorted((cache / "merged").iterdir()) == merges
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.isfinite(loaded.model(input_ids=ids).logits).all()


def test_a_run_directory_without_weights_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    (run / "adapterkit.json").write_text(json.dumps({"base_model": {"name": "x"}}))
    assert chain.is_run(run)
    with pytest.raises(ModelError, match=r"adapter_model\.safetensors"):
        sources.resolve(str(run), cache_dir=tmp_path / "cache")


def test_a_run_without_eval_data_is_verified_on_its_training_file(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import shutil

    import yaml

    dapt, _, _ = runs
    run = tmp_path / "no-eval"
    shutil.copytree(dapt, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["eval"] = None
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    merged, _ = chain.merged_dir(run, tmp_path / "cache")
    report = json.loads((merged / "verify.json").read_text())
    assert report["passed"] is True and report["data"] == recipe["data"]["train"]
