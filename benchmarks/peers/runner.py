"""The parent's side of one run: the child's command, its process, and what it measured.

Every run is a fresh child process; its stdout and stderr go to a log file, and `os.wait4` gives
its resource usage: `ru_maxrss`, the whole process's peak resident set (loading and eval
included), beside the training steps' own peak the child reports. A child that fails stops the
benchmark with its log's tail: no number is ever filled in for a run that did not happen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers.prepare import ROOT, Shared
from peers.spec import Spec

# peer -> how it is started; "adapterkit" is the CLI with the shipped recipe
PEER_MODULES = {
    "tutorial": ["benchmarks/trainer_peft_baseline.py"],
    "trl": ["-m", "peers.trl_sft"],
    "hf_tuned": ["-m", "peers.hf_tuned"],
    "hf_grouped": ["-m", "peers.hf_tuned"],
}
ALL_PEERS = ("adapterkit", "tutorial", "trl", "hf_tuned", "hf_grouped")
DEFAULT_PEERS = ("adapterkit", "tutorial", "trl", "hf_tuned")
LORA_ONLY = frozenset({"trl", "hf_tuned", "hf_grouped"})  # full and qlora: adapterkit vs tutorial
TUTORIAL_DROPOUT = 0.05  # trainer_peft_baseline.py's LoRA, as tutorials write it


@dataclass(frozen=True)
class Protocol:
    """What every run shares."""

    max_steps: int
    rows: int
    eval_rows: int
    max_length: int
    threads: int | None
    bf16: bool  # the tuned peers train in bf16 (the CPU has AVX-512 BF16 or AMX)
    out: Path
    overrides: tuple[str, ...] = ()  # --set: extra overrides of adapterkit's recipe


def child_env(threads: int | None) -> dict[str, str]:
    """CPU only, offline, peers importable; the thread count pinned when asked for."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "benchmarks"), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (/proc/stat), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], log: Path, threads: int | None) -> dict[str, Any]:
    """Run `cmd` from the repository root; its output to `log`; its rusage; raise on failure.

    Also how busy the rest of the machine was meanwhile: the CPU time all processes used minus the
    child's own, as a share of the machine's cores over the run (`other_cpu_load`).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    busy_before = _busy_cpu_seconds()
    started = time.perf_counter()
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=child_env(threads)
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"FAILED (exit {proc.returncode}): {' '.join(cmd)}\nlog: {log}\n{tail}")
    busy_after, other = _busy_cpu_seconds(), None
    if busy_before is not None and busy_after is not None:
        own = usage.ru_utime + usage.ru_stime
        other = max(0.0, busy_after - busy_before - own) / (wall * (os.cpu_count() or 1))
    return {
        "wall_s": wall,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "other_cpu_load": other,
        "log": str(log),
    }


def adapterkit_cmd(strategy: str, proto: Protocol, out: Path) -> list[str]:
    """The shipped recipe as is, with only the overrides the protocol needs."""
    overrides = [
        f"train.max_steps={proto.max_steps}",
        f"data.max_train_rows={proto.rows}",
        f"data.max_eval_rows={proto.eval_rows}",
        f"task.options.max_length={proto.max_length}",
        "train.eval_every=null",  # no eval during training; the final adapter's eval only
        "train.eval_at_start=false",
        "train.log_every=1",  # every step's tokens and loss, to check the schedule
    ]
    if proto.threads:
        overrides.append(f"train.threads={proto.threads}")
    overrides += proto.overrides
    recipe = f"recipes/smollm2/{strategy}.yaml"
    tail = ["--out", str(out), "--overwrite", "--no-progress"]
    return [sys.executable, "-m", "adapterkit", "train", recipe, *overrides, *tail]


def peer_spec(peer: str, strategy: str, numbers: dict, shared: Shared, proto: Protocol) -> Spec:
    tuned = peer in LORA_ONLY
    return Spec(
        peer=peer, strategy=strategy, model_path=shared.model_path,
        train_data=str(shared.train_file), eval_data=str(shared.eval_file), out="",
        max_steps=proto.max_steps, batch_size=numbers["batch_size"], lr=numbers["lr"],
        warmup=numbers["warmup"], schedule=numbers["schedule"], seed=numbers["seed"],
        threads=proto.threads, r=numbers["r"], alpha=numbers["alpha"],
        dropout=0.0 if tuned else TUTORIAL_DROPOUT, bf16=tuned and proto.bf16,
    )  # fmt: skip


def read_adapterkit(out: Path, steps: int) -> dict[str, Any]:
    """metrics.json, log.jsonl's step lines and the resolved recipe of an adapterkit run."""
    import yaml

    metrics = json.loads((out / "metrics.json").read_text())
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    logged = [x for x in lines if "loss" in x and "eval" not in x]
    if len(logged) != steps:
        raise SystemExit(f"{out}: {len(logged)} step lines in log.jsonl, {steps} expected")
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    final = metrics.get("final_eval") or {}
    return {
        "steps": [_step(x) for x in logged],
        "precision": metrics.get("precision"),
        "peak_memory_bytes": metrics.get("peak_memory_bytes"),
        "peak_memory_reset": metrics.get("peak_memory_reset"),
        "load_peak_memory_bytes": metrics.get("load_peak_memory_bytes"),
        "eval_loss": final.get("eval_loss"),
        "eval_tokens": final.get("eval_tokens"),
        "trainable_params": metrics.get("trainable_params"),
        "reported_tokens_per_s": metrics.get("tokens_per_s"),
        "settings": {
            "resolved": {
                k: v for k, v in metrics.items() if k in _RESOLVED or "checkpointing" in k
            },
            "model": recipe.get("model"),
            "strategy_options": recipe["strategy"].get("options"),
            "train": {k: recipe["train"].get(k) for k in _TRAIN_KEYS if k in recipe["train"]},
        },
    }


def _step(line: dict) -> dict:
    """A log.jsonl step line in the peers' format (adapterkit does not log its target count)."""
    seconds = line["tokens"] / line["tokens_per_s"]
    return {
        "step": line["step"],
        "tokens": line["tokens"],
        "targets": None,
        "loss": line["loss"],
        "seconds": seconds,
    }


_RESOLVED = ("precision", "device")  # metrics.json: what "auto" became at run time
_TRAIN_KEYS = ("precision", "gradient_checkpointing", "release_memory", "lr", "schedule", "warmup")


def run_one(peer: str, strategy: str, rep: int, context: dict[str, Any]) -> dict[str, Any]:
    """One child run of `peer` on `strategy`; its record (the steps and every figure)."""
    proto: Protocol = context["protocol"]
    name = f"{strategy}-{peer}-rep{rep}"
    out = proto.out / "runs" / name
    log = proto.out / "logs" / f"{name}.log"
    if peer == "adapterkit":
        usage = run_child(adapterkit_cmd(strategy, proto, out), log, proto.threads)
        record = read_adapterkit(out, proto.max_steps)
    else:
        spec = peer_spec(peer, strategy, context["numbers"][strategy], context["shared"], proto)
        spec.out = str(out)
        out.mkdir(parents=True, exist_ok=True)
        spec_file = spec.save(out / "spec.json")
        cmd = [sys.executable, *PEER_MODULES[peer], "--spec", str(spec_file)]
        usage = run_child(cmd, log, proto.threads)
        record = json.loads((out / "metrics.json").read_text())
    _prune(out)
    return {"peer": peer, "strategy": strategy, "rep": rep, **record, **usage}


def _prune(folder: Path, keep_below: int = 2**20) -> None:
    """Drop the run's weights (adapters, a full model: up to 1 GB a run), keep the small files."""
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size >= keep_below:
            path.unlink()


def calibrate(shared: Shared, proto: Protocol, name: str, reference: bool) -> dict[str, Any]:
    """The matmul peaks (and, with `reference`, the fp32 first-step loss) in a fresh child."""
    out = proto.out / "runs" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "peers.calibrate", "--out", str(out)]
    if proto.threads:
        cmd += ["--threads", str(proto.threads)]
    if reference:
        cmd += ["--model-path", shared.model_path, "--first-batch", str(shared.first_batch_file)]
    usage = run_child(cmd, proto.out / "logs" / f"{name}.log", proto.threads)
    return {**json.loads(out.read_text()), "other_cpu_load": usage["other_cpu_load"]}
