"""train.log_with: the run's log.jsonl records reach accelerate's trackers; TensorBoard's event
files are read back with TensorBoard's own reader and must say exactly what log.jsonl says."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from adapterkit import api
from adapterkit.cli import cli
from adapterkit.errors import RecipeError
from adapterkit.recipe import resolve
from adapterkit.training import tracking

ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "what is the sun", "output": "the sun is big and fire ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
]
STEP_TAGS = ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "epoch")  # log.jsonl's figures


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    (root / "recipe.yaml").write_text(
        f"model: {{name: {llama_dir}}}\n"
        "task: {name: causal_lm, options: {max_length: 32}}\n"
        "data: {train: train.jsonl, eval: eval.jsonl}\n"
        "strategy: {name: lora, options: {r: 2}}\n"
        "train: {max_steps: 3, batch_size: 4, lr: 0.01, eval_every: 2, checkpoint_every: 2,\n"
        "        threads: 1, log_with: [tensorboard]}\n"
    )
    return root


def train(
    ws: Path, out: Path, *overrides: str, resume: bool = False, overwrite: bool = False
) -> dict:
    recipe = resolve(ws / "recipe.yaml", list(overrides))
    return api.train(recipe, out, progress=False, resume=resume, overwrite=overwrite)


@pytest.fixture(scope="module")
def first_run(ws: Path) -> Path:
    """3 steps, evaluated at 0, 2 and 3 (the final adapter), a checkpoint at step 2."""
    out = ws / "run"
    train(ws, out)
    return out


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def expected_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """log.jsonl's numbers by tracker tag, as (step, value) in float32 (TensorBoard's precision)."""
    want: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval" in record:
            figures = {f"eval/{k}": v for k, v in record["eval"].items()}
        else:
            figures = {f"train/{k}": record[k] for k in STEP_TAGS}
        for tag, value in figures.items():
            want.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    return want


def assert_tensorboard_matches_log(out: Path, resumed_after: int | None = None) -> EventAccumulator:
    """Every log.jsonl number is a TensorBoard scalar at its step, once, with its value; the peak
    memory never falls within one process (`resumed_after`: the step a second process took over,
    whose own peak starts afresh)."""
    acc = events(out / "tracking" / "tensorboard")
    want = expected_scalars(out)
    assert set(acc.Tags()["scalars"]) == {*want, "train/peak_memory_bytes"}
    for tag, points in want.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == points, tag
    steps = [s for s, _ in want["train/loss"]]
    memory = acc.Scalars("train/peak_memory_bytes")
    assert [e.step for e in memory] == steps
    values = [e.value for e in memory]
    cut = len(steps) if resumed_after is None else steps.index(resumed_after) + 1
    for part in (values[:cut], values[cut:]):
        assert all(v > 0 for v in part) and part == sorted(part)  # the training peak so far
    peak = json.loads((out / "metrics.json").read_text())["peak_memory_bytes"]
    assert values[-1] <= np.float32(peak)  # metrics.json's peak, read after the last step
    return acc


def test_tensorboard_scalars_are_the_log_and_the_recipe_is_the_hparams(first_run: Path) -> None:
    assert_tensorboard_matches_log(first_run)
    want = expected_scalars(first_run)
    assert [s for s, _ in want["train/loss"]] == [1, 2, 3]
    assert [s for s, _ in want["eval/eval_loss"]] == [0, 2, 3]
    assert all(math.isfinite(v) for points in want.values() for _, v in points)

    # accelerate's store_init_configuration: an hparams session beside the scalars, and a copy
    # in hparams.yml (each in its own time-named folder)
    folder = first_run / "tracking" / "tensorboard"
    (session,) = [p.parent for p in folder.glob("*/events.out.tfevents.*")]
    (copy,) = folder.glob("*/hparams.yml")
    content = events(session).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(  # pyright: ignore[reportAttributeAccessIssue]
        content["_hparams_/session_start_info"]
    )
    hp = start.session_start_info.hparams
    assert hp["train.lr"].number_value == pytest.approx(0.01)
    assert hp["train.max_steps"].number_value == 3
    assert hp["strategy.name"].string_value == "lora"
    assert hp["strategy.options.r"].number_value == 2
    assert json.loads(hp["train.log_with"].string_value) == ["tensorboard"]
    assert "data.test" not in hp  # unset: no value to record
    written = yaml.safe_load(copy.read_text())
    assert set(written) == set(hp) and written["train.lr"] == 0.01


def test_a_resumed_run_continues_the_same_scalars_without_doubling(
    first_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    # Resumed from the step-2 checkpoint: the first run's step 3 and its eval there are orphans.
    train(first_run.parent, out, "train.max_steps=4", resume=True)
    acc = assert_tensorboard_matches_log(out, resumed_after=2)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/eval_loss")] == [0, 2, 4]  # not 3: purged
    assert len(list((out / "tracking" / "tensorboard").glob("events.out.tfevents.*"))) == 2

    # Replacing the run drops the old run's tracker logs with it.
    train(first_run.parent, out, "train.max_steps=1", "train.eval_every=null", overwrite=True)
    acc = assert_tensorboard_matches_log(out)
    assert [e.step for e in acc.Scalars("train/loss")] == [1]
    assert len(list((out / "tracking" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_an_unknown_tracker_is_a_recipe_error_before_training(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["train", str(ws / "recipe.yaml"), "train.log_with=[tensorbord]", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    message = result.output.partition("error: ")[2]
    assert "train.log_with: " in message and "unknown tracker 'tensorbord'" in message
    assert "did you mean 'tensorboard'" in message and "installed here: tensorboard" in message
    assert not out.exists()  # found when the recipe resolved, before anything ran


def test_an_uninstalled_or_unstarted_tracker_is_named_with_what_is_installed(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tracking._available
    monkeypatch.setattr(tracking, "_available", lambda m, d: m != "wandb" and real(m, d))
    with pytest.raises(RecipeError) as caught:
        resolve(ws / "recipe.yaml", ["train.log_with=[tensorboard, wandb, comet_ml]"])
    (problem,) = caught.value.problems
    assert problem.startswith("train.log_with: ")
    assert "'wandb' is not installed (pip install wandb)" in problem
    assert "'comet_ml' is an accelerate tracker adapterkit does not start" in problem
    assert "installed here: tensorboard" in problem
    # one name is a list of one; a repeat counts once
    for given in ("tensorboard", "[tensorboard, tensorboard]"):
        recipe = resolve(ws / "recipe.yaml", [f"train.log_with={given}"])
        assert recipe.train.log_with == ["tensorboard"]
