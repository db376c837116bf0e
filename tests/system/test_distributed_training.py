"""Data-parallel training for real: `adapterkit train --num-processes 2` (torch elastic, gloo on
CPU) against one process with the same global batch, who writes what, and killing one rank.

One module-scoped two-process run per configuration: starting two processes costs seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from adapterkit import api
from adapterkit.recipe import resolve
from adapterkit.storage import checkpoints, faults
from adapterkit.testing import save_tiny_llama_dir

ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "what is the sun", "output": "the sun is big and fire ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
    {"instruction": "count", "output": "one two three four five six ."},
]
# 10 rows, batch 2 x 2 processes: 3 steps an epoch, the last one's window a single batch (rank 1
# has nothing to do then); 5 steps cross an epoch boundary; checkpoints at 2 and 4.
RECIPE = (
    "model: {{name: {model}}}\n"
    "task: {{name: causal_lm, options: {{max_length: 64}}}}\n"
    "data: {{train: train.jsonl, eval: eval.jsonl}}\n"
    "strategy: {strategy}\n"
    "train: {{max_steps: 5, batch_size: 2, lr: 0.01, eval_every: 2, checkpoint_every: 2,\n"
    "        threads: 1, precision: fp32, warmup: 1, group_by_length: true}}\n"
)
STRATEGIES = {"lora": "{name: lora, options: {r: 4, dropout: 0.0}}", "full": "{name: full}"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    save_tiny_llama_dir(root / "tiny")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    for name, strategy in STRATEGIES.items():
        text = RECIPE.format(model=root / "tiny", strategy=strategy)
        (root / f"{name}.yaml").write_text(text)
    return root


def launch(
    ws: Path, name: str, out: Path, *extra: str, env: dict | None = None
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adapterkit", "train", str(ws / f"{name}.yaml"), *extra]
    return subprocess.Popen(
        [*cmd, "--num-processes", "2", "--out", str(out), "--no-progress"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def two_processes(ws: Path, name: str) -> Path:
    out = ws / f"two-{name}"
    proc = launch(ws, name, out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def one_process(ws: Path, name: str) -> Path:
    """The same global batch on one process: grad_accum 2 instead of 2 processes."""
    out = ws / f"one-{name}"
    api.train(resolve(ws / f"{name}.yaml", ["train.grad_accum=2"]), out, progress=False)
    return out


@pytest.fixture(scope="module")
def lora_runs(ws: Path) -> tuple[Path, Path]:
    return one_process(ws, "lora"), two_processes(ws, "lora")


@pytest.fixture(scope="module")
def full_runs(ws: Path) -> tuple[Path, Path]:
    return one_process(ws, "full"), two_processes(ws, "full")


def assert_close_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    ta, tb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert sorted(ta) == sorted(tb) and ta
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], atol=atol, rtol=0, msg=name)


def log_figures(out: Path) -> list[dict]:
    """log.jsonl without wall-clock fields."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in rows]


def files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("runs", ["lora_runs", "full_runs"])
def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(
    runs: str, request: pytest.FixtureRequest
) -> None:
    one, two = request.getfixturevalue(runs)
    assert_close_weights(one, two)
    a, b = log_figures(one), log_figures(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):  # the global loss and tokens, the same evaluations
        assert ra.get("tokens") == rb.get("tokens")
        for key in ("loss", "lr", "grad_norm"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra["step"], key)
        if "eval" in ra:
            assert ra["eval"]["eval_loss"] == pytest.approx(rb["eval"]["eval_loss"], rel=1e-5)
    ma = json.loads((one / "metrics.json").read_text())
    mb = json.loads((two / "metrics.json").read_text())
    assert ma["steps"] == mb["steps"] == 5 and ma["tokens"] == mb["tokens"]


def test_only_the_main_process_writes(lora_runs: tuple[Path, Path]) -> None:
    one, two = lora_runs
    assert files(two) == files(one)  # the same files: adapter, best/, checkpoints, logs, metrics
    assert len(log_figures(two)) == len(log_figures(one))  # one writer: no doubled lines
    state = json.loads((two / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["processes"] == 2


def _rank_pids(launcher: psutil.Process) -> dict[int, psutil.Process]:
    found = {}
    for child in launcher.children(recursive=True):
        try:
            env = child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in env and "adapterkit" in " ".join(child.cmdline()):
            found[int(env["RANK"])] = child
    return found


@pytest.mark.slow  # two more launches
def test_killing_one_rank_stops_every_process_then_resume_finishes_bit_identical(
    ws: Path, lora_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = launch(ws, "lora", out, env={faults.PAUSE_AT_STEP: "3"})
    deadline = time.monotonic() + 300
    while not any(r.get("step") == 3 and "loss" in r for r in _log(out)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.1)
    ranks = _rank_pids(psutil.Process(proc.pid))
    assert sorted(ranks) == [0, 1]
    ranks[1].send_signal(signal.SIGKILL)
    started = time.monotonic()
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert time.monotonic() - started < 90
    assert "rank 1 of 2 stopped (signal 9)" in err, err
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks.values())
    assert checkpoints.latest(out / "checkpoints").name == "step-000002"  # intact, not step 3
    assert not (out / "adapterkit.json").exists()

    resumed = launch(ws, "lora", out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    ta = load_file(lora_runs[1] / "adapter_model.safetensors")
    tb = load_file(out / "adapter_model.safetensors")
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def _log(out: Path) -> list[dict]:
    log = out / "log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
