"""Crash safety for real: kill -9 and resume bit for bit, SIGTERM, fault injection while saving,
divergence and out-of-memory stops. Every kill here is a real signal to a real child process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import api
from adapterkit.errors import TrainingError, UserError
from adapterkit.recipe import resolve
from adapterkit.storage import checkpoints, faults
from adapterkit.testing import save_tiny_llama_dir

ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "what is the sun", "output": "the sun is big and fire ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
]
# 12 rows, batch 4: 3 steps an epoch, so 7 steps cross two epoch boundaries; checkpoints at 2, 4, 6.
# LoRA dropout (0.05) draws from torch's RNG every step: a resume must restore it exactly.
RECIPE = (
    "model: {name: tiny}\n"
    "task: {name: causal_lm, options: {max_length: 64}}\n"
    "data: {train: train.jsonl, eval: eval.jsonl}\n"
    "strategy: {name: lora, options: {r: 4, dropout: 0.1}}\n"
    "train: {max_steps: 7, batch_size: 4, lr: 0.01, eval_every: 3, checkpoint_every: 2,\n"
    "        keep_checkpoints: 2, threads: 1, warmup: 2, schedule: cosine}\n"
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rel")
    save_tiny_llama_dir(root / "tiny")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 3))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "recipe.yaml").write_text(RECIPE.replace("name: tiny", f"name: {root / 'tiny'}"))
    return root


def cli(ws: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adapterkit", "train", str(ws / "recipe.yaml"), *extra]
    return subprocess.Popen(
        [*cmd, "--out", str(out), "--no-progress"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    """Poll log.jsonl until the training line of `step` is there (the child then pauses)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        log = out / "log.jsonl"
        lines = log.read_text().splitlines() if log.is_file() else []
        if any(json.loads(x).get("step") == step and "loss" in json.loads(x) for x in lines):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged")


def training_lines(out: Path) -> list[dict]:
    """The log without wall-clock fields: what must be identical between two runs."""
    keep = []
    for line in (out / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        keep.append({k: v for k, v in rec.items() if k not in ("elapsed", "tokens_per_s")})
    return keep


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


@pytest.fixture(scope="module")
def reference(ws: Path) -> Path:
    out = ws / "reference"
    rc, err = finish(cli(ws, out))
    assert rc == 0, err
    return out


def test_sigkill_between_checkpoints_then_resume_is_bit_identical(
    ws: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = cli(ws, out, env={faults.PAUSE_AT_STEP: "5"})
    wait_for_step(proc, out, 5)
    proc.kill()  # SIGKILL at step 5: not a checkpoint step (2, 4, 6)
    proc.wait()
    assert checkpoints.latest(out / "checkpoints").name == "step-000004"
    assert not (out / "adapterkit.json").exists()

    rc, err = finish(cli(ws, out, "--resume"))
    assert rc == 0, err
    assert_same_weights(reference, out)
    assert training_lines(out) == training_lines(reference)  # losses, lr, evals: the same run
    m_ref, m_out = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
    for key in ("train_loss", "final_eval", "best_eval", "best_step", "steps", "tokens"):
        assert m_out[key] == m_ref[key], key
    assert_same_weights(reference / "best", out / "best")


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(
    ws: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = cli(ws, out, env={faults.PAUSE_AT_STEP: "3"})
    wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "SIGTERM after step 3" in err and "step-000003" in err
    assert f"--out {out} --resume" in err  # the exact command to continue
    assert checkpoints.latest(out / "checkpoints").name == "step-000003"

    rc, err = finish(cli(ws, out, "--resume"))
    assert rc == 0, err
    assert_same_weights(reference, out)


def _train(ws: Path, out: Path, *overrides: str, **kw: bool) -> dict:
    return api.train(resolve(ws / "recipe.yaml", list(overrides)), out, progress=False, **kw)


def test_resume_refuses_another_recipe_but_allows_more_steps(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(ws, out, "train.max_steps=4")
    with pytest.raises(UserError, match="pass --resume to continue"):
        _train(ws, out, "train.max_steps=4")  # an adapter is there: never silently replaced
    with pytest.raises(UserError) as info:
        _train(ws, out, "train.max_steps=6", "train.lr=0.02", "strategy.options.r=8", resume=True)
    msg = str(info.value)
    assert "train.lr: 0.01 -> 0.02" in msg and "strategy.options.r: 4 -> 8" in msg
    assert "max_steps" not in msg.split("differs", 1)[1].split("(only")[1].split("\n", 1)[1]
    with pytest.raises(UserError, match="contradict"):
        _train(ws, out, resume=True, overwrite=True)
    metrics = _train(ws, out, "train.max_steps=6", resume=True)
    assert metrics["steps"] == 6
    steps = [r["step"] for r in training_lines(out) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log continues, nothing doubled

    empty = tmp_path / "fresh"
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        _train(ws, empty, resume=True)


# ---- fault injection while saving --------------------------------------------------------------

SAVE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from adapterkit.storage.adapter_format import save_adapter
    out, value, keep = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
    tensors = {f"layer{i}.weight": torch.full((64, 64), value + i) for i in range(3)}
    save_adapter(out, tensors, {"value": value}, {"recipe.yaml": b"v: %f\\n" % value},
                 keep_other_files=keep)
    """
)


def save_in_child(out: Path, value: float, keep: bool = False, **env: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", SAVE_SCRIPT, str(out), str(value), "1" if keep else "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_kill_at_any_byte_of_an_adapter_save_loses_nothing(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    for v, name in ((1.0, "a"), (2.0, "b")):
        assert save_in_child(ref / name, v) == 0
    a, b = digests(ref / "a"), digests(ref / "b")
    weights = (ref / "b" / "adapter_model.safetensors").stat().st_size
    total = sum((ref / "b" / n).stat().st_size for n in b)
    cuts = [0, 1, 100, weights // 2, weights - 1, weights, weights + 10, total]
    outcomes = []
    for n in [*cuts, None]:
        out = tmp_path / f"cut-{n}" / "adapter"
        assert save_in_child(out, 1.0) == 0
        env = {faults.AT: "swap"} if n is None else {faults.AFTER_BYTES: str(n)}
        assert save_in_child(out, 2.0, **env) == -signal.SIGKILL
        api.recover_run_dir(out)  # what the next start-up does
        assert digests(out) == a, f"kill after {n} bytes"  # the old adapter, byte for byte
        assert [p.name for p in out.parent.iterdir()] == ["adapter"]  # no leftovers
        outcomes.append(n)
    assert len(outcomes) == len(cuts) + 1
    # a budget larger than the save: no kill, and the new adapter is complete
    out = tmp_path / "nokill" / "adapter"
    assert save_in_child(out, 1.0) == 0
    assert save_in_child(out, 2.0, **{faults.AFTER_BYTES: str(total + 1000)}) == 0
    assert digests(out) == b


def test_a_kill_while_saving_into_a_run_directory_keeps_the_run_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert save_in_child(out, 1.0) == 0
    (out / "log.jsonl").write_text('{"step": 1}\n')
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    (out / "checkpoints" / "step-000001" / "trainer_state.json").write_text('{"step": 1}')
    before = digests(out)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.suffix != ".jsonl")
    # past the new files into the carry record, then mid-swap
    for env in ({faults.AFTER_BYTES: str(total + 5)}, {faults.AT: "swap"}):
        assert save_in_child(out, 2.0, keep=True, **env) == -signal.SIGKILL
        api.recover_run_dir(out)
        assert digests(out) == before, env
        assert [p.name for p in tmp_path.iterdir()] == ["run"]


CKPT_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from pathlib import Path
    from adapterkit.storage.checkpoints import save_checkpoint
    root, cut = Path(sys.argv[1]), sys.argv[2]
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (1, 2, 3):
        if step == 3:
            os.environ["ADAPTERKIT_FAULT_AFTER_BYTES"] = cut
        model(torch.ones(1, 8)).sum().backward(); opt.step(); sched.step()
        save_checkpoint(root, step, dict(model.named_parameters()), opt, sched, {"step": step}, 2)
    """
)


@pytest.mark.parametrize("cut", [0, 300, 2000])
def test_a_kill_while_checkpointing_keeps_the_previous_checkpoints(tmp_path: Path, cut) -> None:
    root = tmp_path / "checkpoints"
    proc = subprocess.run(
        [sys.executable, "-c", CKPT_SCRIPT, str(root), str(cut)], capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert checkpoints.latest(root).name == "step-000002"
    state = checkpoints.load_checkpoint(root / "step-000002")  # complete and readable
    assert state["state"]["step"] == 2
    checkpoints.recover(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002"]


# ---- divergence and out of memory ----------------------------------------------------------------


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    from adapterkit.strategy import freeze, trainable_state_dict, unfreeze
    from adapterkit.tasks.causal_lm import CausalLM, Options
    from adapterkit.testing import tiny_llama, tiny_tokenizer
    from adapterkit.training.inputs import AdapterBinding, TrainData
    from adapterkit.training.trainer import TrainConfig, fit

    class Diverging(CausalLM):
        calls = 0

        def loss(self, model, batch):  # finite for two steps, then NaN
            Diverging.calls += 1
            value = super().loss(model, batch)
            return value * float("nan") if Diverging.calls > 2 else value

    tok = tiny_tokenizer()
    model = tiny_llama()
    freeze(model)
    unfreeze(model.lm_head)
    examples = CausalLM().encode(ROWS, tok, Options())
    saved: list[Path] = []
    with pytest.raises(TrainingError, match=r"diverged: the loss became nan at step 3") as info:
        fit(
            model,
            TrainData(Diverging(), Options(), examples, None, tok),
            AdapterBinding(trainable_state_dict, lambda m, p: saved.append(p) or 0),
            TrainConfig(max_steps=5, batch_size=4, checkpoint_every=1),
            tmp_path,
            progress=False,
        )
    assert "step-000002" in str(info.value)
    assert checkpoints.latest(tmp_path / "checkpoints").name == "step-000002"
    assert not (tmp_path / "checkpoints" / "step-000003").exists() and not saved


OOM_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from adapterkit import api
    from adapterkit.recipe import resolve
    ws, out, warm = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    # warm up every import and lazy allocation with a short run, then cap the address space
    api.train(resolve(ws / "recipe.yaml", ["train.max_steps=1", "train.checkpoint_every=null", "train.precision=fp32"]),
              warm, progress=False)
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
    cap = vm * 1024 + (96 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from adapterkit.cli import main
    sys.argv = ["adapterkit", "train", str(ws / "recipe.yaml"), f"data.train={ws / 'oom.jsonl'}",
        "data.eval=null", "train.max_steps=4", "train.precision=fp32", "train.batch_size=1", "train.checkpoint_every=1",
        "train.eval_every=null", "task.options.max_length=200000", "train.warmup=0",
        "--out", str(out), "--no-progress"]
    main()
    """
)


def test_out_of_memory_stops_with_advice_and_keeps_the_last_checkpoint(
    ws: Path, tmp_path: Path
) -> None:
    """On CPU under RLIMIT_AS: steps 1-2 fit, step 3's row (60k tokens) cannot be allocated."""
    order = torch.randperm(3, generator=torch.Generator().manual_seed(0)).tolist()
    rows = [{"instruction": "hello", "output": "the cat"} for _ in range(3)]
    rows[order[2]] = {"instruction": "hello", "output": " ".join(["one two three"] * 20000)}
    (ws / "oom.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT, str(ws), str(out), str(tmp_path / "warm")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err
    assert "out of memory at step 3" in err
    for advice in ("batch_size=1", "train.gradient_checkpointing=true", "strategy.name=qlora"):
        assert advice in err
    assert checkpoints.latest(out / "checkpoints").name == "step-000002"
    assert not (out / "adapterkit.json").exists()  # nothing new was written
