"""GGUF export of a LoRA adapter on the embedded SmolLM2-135M, end to end through the CLI: two
training steps, `adapterkit export --type q8_0 --ollama`, the file read back by transformers' GGUF
loader and compared on the run's held-out rows. Slow (about a minute on 2 CPU cores: transformers'
GGUF reader builds the 49,152-token tokenizer and de-quantizes 272 tensors), hence the system tier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterkit.cli import cli

pytestmark = pytest.mark.slow

RECIPE = """\
model: {name: smollm2-135m}
task: {name: causal_lm, options: {max_length: 64}}
data: {train: train.jsonl, holdout: 2}
strategy: {name: lora, options: {r: 4}}
train: {max_steps: 2, batch_size: 2, lr: 0.001, threads: 2}
"""
ROWS = [
    {"instruction": "Name a primary colour.", "output": "Red."},
    {"instruction": "What is 2 + 3?", "output": "5."},
    {"instruction": "Give an antonym of hot.", "output": "Cold."},
    {"instruction": "Translate 'chat' from French.", "output": "Cat."},
]


def test_smollm2_lora_exports_to_a_verified_gguf_with_a_modelfile(tmp_path: Path) -> None:
    from adapterkit import api
    from adapterkit.recipe import resolve

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    api.train(resolve(tmp_path / "recipe.yaml"), tmp_path / "run", progress=False)
    out = tmp_path / "smol.gguf"
    args = ["export", "--adapter", str(tmp_path / "run"), "--format", "gguf", "--type", "q8_0"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--ollama", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["logits"]["held_out_rows"] == 2
    assert report["tensor_types"] == {"f32": 61, "q8_0": 211}  # 30 blocks; tied: no output.weight
    assert 140e6 < report["bytes"] < 150e6
    assert report["tokenizer"]["ids_equal"] and report["tokenizer"]["chat_template_kept"]
    modelfile = (tmp_path / "Modelfile").read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in (
        modelfile
    )
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "FROM ./smol.gguf" in modelfile
