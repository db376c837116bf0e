"""The real embedded SmolLM2, end to end through the CLI (slow: about two minutes each on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def adapterkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "adapterkit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`adapterkit train recipes/smollm2/lora.yaml train.max_steps=3`, as the issue states it, in
    fp32 (a bf16 base would not match plain peft on the float32 weights to 1e-5)."""
    out = tmp_path_factory.mktemp("e2e") / "lora"
    adapterkit(
        "train", "recipes/smollm2/lora.yaml", "train.max_steps=3", "train.precision=fp32",
        "--out", str(out), "--no-progress", cwd=ROOT,
    )  # fmt: skip
    return out


def test_lora_run_metrics(lora_run: Path) -> None:
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2_442_240  # r=8 on every linear layer but the head
    assert metrics["steps"] == 3
    for key in ("initial_eval", "final_eval"):
        assert 0 < metrics[key]["eval_loss"] < 10, metrics[key]
    assert metrics["tokens_per_s"] > 0 and metrics["peak_memory_bytes"] > 0
    assert metrics["adapter_bytes"] == (lora_run / "adapter_model.safetensors").stat().st_size
    assert (lora_run / "best" / "adapter_model.safetensors").is_file()
    assert (lora_run / "recipe.yaml").is_file()
    lines = [json.loads(x) for x in (lora_run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]


def test_lora_run_loads_with_plain_peft_and_matches(lora_run: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterkit import api
    from adapterkit.storage import sources as models

    ours = api.load(lora_run)
    base = AutoModelForCausalLM.from_pretrained(models.resolve("smollm2-135m").path)
    theirs = PeftModel.from_pretrained(base, str(lora_run)).eval()
    ids = ours.tokenizer("Name three colours.", return_tensors="pt")
    with torch.no_grad():
        a = ours.model(**ids).logits
        b = theirs(**ids).logits
    assert torch.equal(a, b)
    # and the adapter is not a no-op: LoRA's B matrices moved off zero during the 3 steps
    assert any(float(p.abs().sum()) > 0 for n, p in theirs.named_parameters() if "lora_B" in n)


def test_eval_and_generate_commands(lora_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "few.jsonl"
    rows = (ROOT / "data/instructions/eval.jsonl").read_text().splitlines()[:4]
    data.write_text("\n".join(rows) + "\n")
    out = adapterkit("eval", "--adapter", str(lora_run), "--data", str(data), "--json", cwd=ROOT)
    metrics = json.loads(out.stdout)
    assert metrics["eval_tokens"] > 0 and 0 < metrics["eval_loss"] < 10
    out = adapterkit(
        "generate", "What is the capital of France?", "--adapter", str(lora_run),
        "--max-new-tokens", "12", cwd=ROOT,
    )  # fmt: skip
    assert out.stdout.strip() and "<|im_end|>" not in out.stdout


def test_demo_path_runs(tmp_path: Path) -> None:
    """`make demo`'s code path with train.max_steps=2, so CI notices when the demo breaks."""
    out = subprocess.run(
        [sys.executable, "-m", "adapterkit.demo", "train.max_steps=2", "data.max_eval_rows=8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    # Two steps may or may not lower the loss; the demo's own verdict line must be there either way.
    assert "eval loss before:" in out.stdout, out.stderr[-3000:]
    assert "answer:" in out.stdout
    assert out.returncode in (0, 1)
    if out.returncode == 1:
        assert "the eval loss did not drop" in out.stderr
