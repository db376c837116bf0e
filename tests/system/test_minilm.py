"""Short real runs on the embedded MiniLM encoder: one classification, one pair, one NER recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

CASES = {
    # recipe, overrides that keep the run short, the reported metric
    "sst2-lora": (["data.max_train_rows=160", "data.holdout=40"], "accuracy"),
    "mrpc-head": (["data.max_train_rows=96", "data.holdout=32"], "accuracy"),
    "conll2003-qlora": (["data.max_train_rows=96", "data.max_eval_rows=40"], "f1"),
}


def run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "adapterkit", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", CASES)
def test_short_real_run(name: str, tmp_path: Path) -> None:
    overrides, metric = CASES[name]
    out = tmp_path / name
    run(
        "train", f"recipes/minilm/{name}.yaml", "train.max_steps=6", "train.eval_every=3",
        *overrides, "--out", str(out), "--no-progress",
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert 0.0 <= metrics["test_eval"][metric] <= 1.0  # the test split, scored once at the end
    manifest = json.loads((out / "adapterkit.json").read_text())
    labels = manifest["task"]["labels"]
    assert labels[0] == ("O" if name.startswith("conll") else "0")

    test_file = {"sst2": "data/sst2/dev.tsv", "mrpc": "data/mrpc/dev.tsv"}.get(
        name.split("-")[0], "data/conll2003/test.txt"
    )
    few = tmp_path / Path(test_file).name
    lines = (ROOT / test_file).read_text().splitlines()[:8]
    few.write_text("\n".join(lines) + "\n")
    predictions_file = tmp_path / "predictions.jsonl"
    run("predict", "--adapter", str(out), str(few), "--out", str(predictions_file))
    predictions = [json.loads(x) for x in predictions_file.read_text().splitlines()]
    assert predictions
    for p in predictions:
        if "tags" in p:
            assert len(p["tags"]) == len(p["words"]) and set(p["tags"]) <= set(labels)
        else:
            assert p["label"] in labels and 0.0 <= p["score"] <= 1.0
