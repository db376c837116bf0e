"""Real sweeps on a tiny BERT classifier, every trial its own `adapterkit train` process.

One `compare --tune 2` over two strategies (module fixture) makes two whole sweeps; the other
tests read them, or resume copies of them: the SQLite study, sweep.md/json, best/, the
test-label permutation proof, a crashed sweep resumed with pruned trials. Failing and
budget-refused trials start no training (the first dies at once, the second never starts).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from click.testing import CliRunner
from filelock import FileLock

from adapterkit import api
from adapterkit.cli import cli
from adapterkit.errors import UserError
from adapterkit.planning import memory
from adapterkit.recipe import resolve
from adapterkit.search.run import sweep
from adapterkit.search.store import storage_url
from adapterkit.storage import faults
from adapterkit.testing import save_tiny_bert_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = (
    "the a cat dog sun moon red blue green big small fast slow day night water fire tree".split()
)


def _rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences whose label is their first word (happy: pos, sad: neg), which a tiny model
    learns in a few steps at a high enough learning rate: the trials' figures differ."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        words = rng.sample(WORDS, 4)
        words.insert(0, "happy" if label == "pos" else "sad")
        rows.append((" ".join(words), label))
    return rows


def _tsv(rows: list[tuple[str, str]]) -> str:
    return "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    save_tiny_bert_dir(root / "bert")
    (root / "train.tsv").write_text(_tsv(_rows(60, seed=0)))  # 20 held out for selection
    test = _rows(20, seed=1)
    (root / "test.tsv").write_text(_tsv(test))
    flipped = [(s, "neg" if label == "pos" else "pos") for s, label in test]
    (root / "test-permuted.tsv").write_text(_tsv(flipped))  # no row keeps its label
    (root / "recipe.yaml").write_text(
        f"model: {{name: {root / 'bert'}}}\n"
        "task: {name: sequence_classification, options: {max_length: 32}}\n"
        "data: {train: train.tsv, holdout: 20, test: test.tsv}\n"
        "strategy: {name: lora, options: {r: 4}}\n"
        "train: {max_steps: 12, batch_size: 4, lr: 0.03, eval_every: 2, eval_at_start: false,"
        " threads: 1}\n"
    )
    return root


@pytest.fixture(scope="module")
def tuned(ws: Path) -> Path:
    """`compare --tune 2 --jobs 2` over two strategies: two sweeps of two trials each."""
    out = ws / "cmp"
    args = ["compare", str(ws / "recipe.yaml"), "--strategies", "full,lora", "--tune", "2"]
    result = CliRunner().invoke(cli, [*args, "--jobs", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def watchdog() -> Iterator[None]:
    """Kill this test's training children if a pruning bug leaves one paused for an hour."""

    def kill() -> None:
        for child in psutil.Process().children(recursive=True):
            child.send_signal(signal.SIGKILL)

    timer = threading.Timer(240, kill)
    timer.start()
    yield
    timer.cancel()


def _doc(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def _again(sweep_dir: Path, ws: Path, **kwargs) -> dict:
    """The sweep in `sweep_dir` resumed with its own recipe, overrides and space."""
    doc = _doc(sweep_dir)
    space = [f"{k}={v}" for k, v in doc["space"].items()]
    overrides = [*doc["overrides"], *kwargs.pop("extra", [])]
    args = {"trials": 2, "resume": True, "progress": False} | kwargs
    return sweep(ws / "recipe.yaml", space, out=sweep_dir, overrides=overrides, **args)


# ---- compare --tune and the sweeps it made -------------------------------------------------------


def test_compare_tune_rows_are_each_strategys_selected_trial(tuned: Path) -> None:
    rows = {r["strategy"]: r for r in json.loads((tuned / "compare.json").read_text())["rows"]}
    table = (tuned / "compare.md").read_text()
    assert "settings (selected on eval)" in table.splitlines()[0]
    for strategy in ("full", "lora"):
        best = _doc(tuned / "tune" / strategy)["best"]
        row = rows[strategy]
        assert row["error"] is None and row["settings"] == best["params"]
        assert row["run_dir"] == best["run_dir"] and row["test_value"] == best["test_value"]
        assert f"train.lr={best['params']['train.lr']:.4g}" in table
        assert row["eval_metric"] == "accuracy" and row["peak_memory_bytes"] > 0
    assert rows["full"]["trainable_params"] > rows["lora"]["trainable_params"]


def test_sweep_outputs_study_rows_best_and_plots(tuned: Path, ws: Path) -> None:
    out = tuned / "tune" / "lora"
    doc = _doc(out)
    study = optuna.load_study(study_name="sweep", storage=storage_url(out))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert [r["value"] for r in doc["trials"]] == [t.value for t in study.trials]
    assert [r["status"] for r in doc["trials"]] == ["complete", "complete"]
    # the first trial ran the recipe's own learning rate; the space is a tenth to 3x of it
    assert doc["space"] == {"train.lr": "log(0.003,0.09)"}
    assert doc["trials"][0]["baseline"] and doc["trials"][0]["params"] == {"train.lr": 0.03}
    lines = (out / "sweep.md").read_text().splitlines()
    assert sum(line.startswith(("| 0 |", "| 1 |")) for line in lines) == 2
    assert "| trial | status | train.lr | accuracy (eval) |" in "\n".join(lines)
    best = doc["best"]
    chosen = max(doc["trials"], key=lambda r: (r["value"], -r["trial"]))
    assert best["trial"] == chosen["trial"] and chosen["selected"]
    # best/ is the selected trial's adapter with its resolved recipe; it loads and scores as said
    trained = yaml.safe_load((out / "best" / "recipe.yaml").read_text())
    assert trained["train"]["lr"] == best["params"]["train.lr"]
    assert api.evaluate(out / "best", ws / "test.tsv", batch_size=4) == best["test"]
    assert best["test_value"] == best["test"]["accuracy"]
    for trial in doc["trials"]:  # no trial was given the test data
        recipe = yaml.safe_load((Path(trial["run_dir"]) / "recipe.yaml").read_text())
        assert recipe["data"]["test"] is None
    for png in ("history.png", "importance.png", "parameters.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC


def test_permuted_test_labels_leave_the_selected_trial_unchanged(
    tuned: Path, ws: Path, tmp_path: Path
) -> None:
    original = tuned / "tune" / "full"
    copy = tmp_path / "full"
    shutil.copytree(original, copy)
    permuted = ws / "test-permuted.tsv"
    doc = _again(copy, ws, extra=[f"data.test={permuted}"])  # 2 trials done: none runs
    before = _doc(original)["best"]
    assert len(doc["trials"]) == 2 and not (copy / "trials" / "0002").exists()
    assert (doc["best"]["trial"], doc["best"]["params"]) == (before["trial"], before["params"])
    assert doc["best"]["test"] == api.evaluate(copy / "best", permuted, batch_size=4)
    # every label flipped: each prediction right before is wrong now, and the other way round
    assert doc["best"]["test_value"] == pytest.approx(1 - before["test_value"])
    assert doc["best"]["test"]["eval_loss"] != before["test"]["eval_loss"]


def test_resume_after_a_crash_reruns_only_the_crashed_trial(
    tuned: Path, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watchdog: None
) -> None:
    out = tmp_path / "full"
    shutil.copytree(tuned / "tune" / "full", out)
    old = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("*")}
    study = optuna.load_study(study_name="sweep", storage=storage_url(out))
    study.enqueue_trial({"train.lr": 0.01})
    crashed = study.ask({"train.lr": optuna.distributions.FloatDistribution(3e-3, 0.09, log=True)})
    assert crashed.number == 2  # left RUNNING, as by a sweep killed mid-trial
    # every child pauses after step 3, past its first evaluation (step 2): only pruning ends it
    monkeypatch.setenv(faults.PAUSE_AT_STEP, "3")
    pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never 2: prune at once
    doc = _again(out, ws, trials=4, jobs=2, pruner=pruner)
    rows = doc["trials"]
    assert [r["status"] for r in rows] == ["complete"] * 2 + ["interrupted", "pruned", "pruned"]
    assert rows[2]["reason"] == "the sweep stopped while it ran; its values ran again as trial 3"
    assert rows[3]["rerun_of"] == 2 and rows[3]["params"] == {"train.lr": 0.01}
    for r in rows[3:]:
        assert r["returncode"] == -signal.SIGKILL and r["reason"].startswith("pruned after step 2")
        steps = [json.loads(line) for line in (Path(r["run_dir"]) / "log.jsonl").open()]
        assert max(s["step"] for s in steps) < 4  # stopped at or before its pause: unfinished
    assert doc["trials"][:2] == _doc(tuned / "tune" / "full")["trials"][:2]  # kept as they were
    assert doc["best"]["trial"] in (0, 1)
    kept = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("*") if p in old}
    assert kept == old and {p.name for p in (out / "trials").iterdir()} == {
        "0000",
        "0001",
        "0003",
        "0004",
    }


def test_resume_refuses_another_space_recipe_or_a_held_lock(
    tuned: Path, ws: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lora"
    shutil.copytree(tuned / "tune" / "lora", out)
    recipe = ws / "recipe.yaml"
    with pytest.raises(UserError, match=r"cannot resume.*space train\.lr: \"log\(0\.003,0\.09\)\""):
        sweep(recipe, ["train.lr=log(1e-3,1e-1)"], trials=2, out=out, resume=True)
    with pytest.raises(UserError, match=r"recipe train\.max_steps: 12 -> 5"):
        _again(out, ws, extra=["train.max_steps=5"])
    with pytest.raises(UserError, match="already exists and holds a sweep; pass --resume"):
        sweep(recipe, ["train.lr=log(1e-3,3e-2)"], trials=2, out=out)
    with FileLock(str(out / "sweep.lock")), pytest.raises(UserError, match="another sweep"):
        _again(out, ws)
    with pytest.raises(UserError, match="no sweep to resume"):
        sweep(recipe, ["train.lr=log(1e-3,3e-2)"], trials=2, out=tmp_path / "new", resume=True)


# ---- trials that fail or are refused -------------------------------------------------------------


def test_failing_trials_keep_their_rows_and_the_cli_exits_2(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "sw"
    args = ["sweep", str(ws / "recipe.yaml"), f"model.name={tmp_path / 'empty'}"]
    args += ["--space", "train.lr=log(1e-3,1e-1)", "--trials", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 2 and "no trial completed" in result.output
    doc = _doc(out)
    assert [r["status"] for r in doc["trials"]] == ["failed", "failed"] and doc["best"] is None
    for r in doc["trials"]:
        assert r["returncode"] == 2 and "no config.json" in r["reason"]
    assert "no config.json" in (out / "sweep.md").read_text()
    study = optuna.load_study(study_name="sweep", storage=storage_url(out))
    assert {t.state.name for t in study.trials} == {"FAIL"}


def test_trials_over_the_budget_are_refused_without_a_process(ws: Path, tmp_path: Path) -> None:
    """(The recipe given as a mapping, as the Python API allows: written for the trials.)"""
    out = tmp_path / "sw"
    space = ["strategy.options.r=choice(2,4)"]
    as_dict = yaml.safe_load((ws / "recipe.yaml").read_text())  # a recipe given as a mapping
    as_dict["data"] |= {"train": str(ws / "train.tsv"), "test": str(ws / "test.tsv")}
    doc = sweep(as_dict, space, trials=2, out=out, budget="1KiB", progress=False)
    written = yaml.safe_load((out / "recipe.yaml").read_text())  # what the trials would read
    assert written["strategy"] == {
        "name": "lora",
        "options": resolve(ws / "recipe.yaml").to_dict()["strategy"]["options"],
    }
    assert [r["status"] for r in doc["trials"]] == ["refused", "refused"] and doc["best"] is None
    for r in doc["trials"]:
        recipe = resolve(
            ws / "recipe.yaml", [f"strategy.options.r={r['params']['strategy.options.r']}"]
        )
        (plan,) = memory.from_recipe(recipe, None, "cpu")
        assert r["planned_memory_bytes"] == plan.peak() > 1024
        assert r["reason"].startswith("refused before it started") and "1.0 KiB" in r["reason"]
        assert r["returncode"] is None
    assert not (out / "trials").exists() and not (out / "logs").exists()
    assert os.listdir(out)  # the report is written all the same
