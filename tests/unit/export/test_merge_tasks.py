"""`adapterkit merge` for the built-in tasks beyond causal LM and sequence classification (those
are in test_merge.py): a 1-step LoRA on each task's tiny model (adapterkit.testing's cases),
merged, loaded back with the plain `AutoModelFor...` class of its task, and verified on the task's
own logits (`Task.logits`: tagging, raw text, masked LM, seq2seq decoder, QA start/end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from adapterkit import api
from adapterkit.export.merge import merge
from adapterkit.recipe import resolve
from adapterkit.testing.fixtures import TASK_CASES, recipe_dict, workspace, write_recipe

AUTO = {
    "token_classification": "AutoModelForTokenClassification",
    "text": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "extractive_qa": "AutoModelForQuestionAnswering",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merge-tasks")


@pytest.mark.parametrize("task", list(AUTO))
def test_each_task_merges_and_loads_with_its_auto_class(task: str, root: Path) -> None:
    ws = workspace(TASK_CASES[task], root)
    recipe = recipe_dict(ws, "lora", {"r": 2}, steps=1)
    recipe["train"].update(precision="fp32", threads=1)
    recipe["data"]["max_eval_rows"] = 6
    api.train(resolve(write_recipe(ws, recipe)), ws.root / "run", progress=False)

    report = merge(ws.root / "run", ws.root / "merged")
    assert report["passed"], report
    assert report["loaded_with"] == f"transformers.{AUTO[task]}"
    assert report["positions"] > 0 and report["max_abs_logit_diff"] <= 1e-5
    assert report["metric"]["reference"] == pytest.approx(report["metric"]["merged"], abs=1e-4)
    model = getattr(transformers, AUTO[task]).from_pretrained(ws.root / "merged")
    assert not hasattr(model, "peft_config")
    if task == "token_classification":
        labels = json.loads((ws.root / "run" / "adapterkit.json").read_text())["task"]["labels"]
        assert model.config.id2label == dict(enumerate(labels))
