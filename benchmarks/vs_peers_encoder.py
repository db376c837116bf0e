"""adapterkit's MiniLM SST-2 LoRA recipe against the HF Trainer + peft script a user would write.

    .venv/bin/python benchmarks/vs_peers_encoder.py [--reps 3] [--rows 2048] [--eval-rows 1000]
        [--peers adapterkit,hf_trainer,hf_trainer_bf16_base] [--threads N]
        [--peer-precision auto|bf16|fp32] [--set KEY=VALUE ...]
        [--out benchmarks/results/vs_peers_encoder] [--rerender]

Issue 12's encoder goal: adapterkit at least 1.5x the tokens/s of the equivalent HF `Trainer`
script (length-grouped batches, bf16). Rows, each a fresh child process, run in alternation
(A B C, A B C, ...), --reps times: adapterkit (`adapterkit train recipes/minilm/sst2-lora.yaml`
with only the protocol's overrides: the first --rows training rows, one epoch of max_steps, the
first --eval-rows holdout rows as the eval slice, no dev-set test, no mid-run evals), and the HF
script (peers/enc_hf.py: the same local MiniLM, the same LoRA and head, the recipe's numbers,
`group_by_length`, bf16 autocast where the CPU has AVX-512 BF16 or AMX, fused AdamW, padding to
the longest row), with the base in float32 and, as a second peer, in bfloat16. Every row trains
adapterkit's token ids (its encoding, written once to JSONL), each example once. Reports per row
(medians, and every rep): non-padding tokens/s, the padding share, the training steps' peak RSS
and the process's max RSS, first-step, final train and eval losses, eval accuracy before and
after, MFU against the matmul peak measured in the same run, adapterkit's ratios to each peer,
validity (peers/enc_report.py) and PASS/FAIL against the goal. Writes results.json, results.md
and every child's log under --out. Needs peft (a dependency) and nothing from the `bench` extra.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from peers import enc_prepare, enc_report, enc_table, runner
from peers.enc_hf import LORA_TARGETS, EncSpec
from peers.enc_prepare import EncShared

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("adapterkit", "hf_trainer", "hf_trainer_bf16_base")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2048, help="first N training rows: one epoch")
    parser.add_argument("--eval-rows", type=int, default=1000, help="first N holdout rows")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"of {','.join(PEERS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default torch's")
    parser.add_argument(
        "--peer-precision", choices=("auto", "bf16", "fp32"), default="auto",
        help="the peers' bf16=True; auto: where the CPU has AVX-512 BF16 or AMX",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="an extra override of the recipe (repeatable): both rows follow it; recorded",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vs_peers_encoder")
    parser.add_argument(
        "--rerender", action="store_true",
        help="no runs: rebuild results.json/.md from the runs recorded in --out/results.json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown or not args.peers:
        raise SystemExit(f"--peers: {unknown or 'nothing'} not among {', '.join(PEERS)}")
    return args


def cpu_has_bf16() -> bool:
    from adapterkit.training.precision import cpu_flags, cpu_has_bf16

    return cpu_has_bf16(cpu_flags())


def peer_spec(peer: str, context: dict[str, Any], out: Path) -> EncSpec:
    shared: EncShared = context["shared"]
    n, bf16 = context["numbers"], context["bf16"]
    return EncSpec(
        peer=peer, model_path=shared.model_path, train_data=str(shared.train_file),
        eval_data=str(shared.eval_file), out=str(out), max_steps=n["max_steps"],
        batch_size=n["batch_size"], eval_batch_size=n["eval_batch_size"], lr=n["lr"],
        warmup=n["warmup"], schedule=n["schedule"], seed=n["seed"], num_labels=len(shared.labels),
        r=n["r"], alpha=n["alpha"], dropout=n["dropout"], max_grad_norm=n["max_grad_norm"],
        weight_decay=n["weight_decay"], bf16=bf16, bf16_base=bf16 and peer.endswith("bf16_base"),
        threads=context["threads"], target_modules=n["target_modules"] or list(LORA_TARGETS),
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
    keep = ("precision", "gradient_checkpointing", "group_by_length", "lr", "schedule", "warmup")
    return {
        "steps": [
            {
                "step": x["step"],
                "tokens": x["tokens"],
                "loss": x["loss"],
                "seconds": x["tokens"] / x["tokens_per_s"],
            }
            for x in logged
        ],
        **{k: metrics.get(k) for k in ("precision", "peak_memory_bytes", "peak_memory_reset")},
        "load_peak_memory_bytes": metrics.get("load_peak_memory_bytes"),
        "trainable_params": metrics.get("trainable_params"),
        "reported_tokens_per_s": metrics.get("tokens_per_s"),
        "initial_eval": metrics.get("initial_eval"),
        "final_eval": metrics.get("final_eval"),
        "settings": {
            "model": recipe.get("model"),
            "strategy_options": recipe["strategy"].get("options"),
            "train": {k: recipe["train"].get(k) for k in keep if k in recipe["train"]},
        },
    }


def run_one(peer: str, rep: int, context: dict[str, Any]) -> dict[str, Any]:
    """One child run of `peer`; its record (the steps and every figure)."""
    name, base = f"{peer}-rep{rep}", context["out"]
    out, log = base / "runs" / name, base / "logs" / f"{name}.log"
    if peer == "adapterkit":
        tail = ["--out", str(out), "--overwrite", "--no-progress"]
        cmd = [sys.executable, "-m", "adapterkit", "train", enc_prepare.RECIPE]
        usage = runner.run_child([*cmd, *context["overrides"], *tail], log, context["threads"])
        record = read_adapterkit(out, context["numbers"]["max_steps"])
    else:
        out.mkdir(parents=True, exist_ok=True)
        spec = peer_spec(peer, context, out).save(out / "spec.json")
        cmd = [sys.executable, "-m", "peers.enc_hf", "--spec", str(spec)]
        usage = runner.run_child(cmd, log, context["threads"])
        record = json.loads((out / "metrics.json").read_text())
    for path in out.rglob("*.safetensors"):  # the adapters: not needed once measured
        path.unlink()
    return {"name": name, "peer": peer, "rep": rep, **record, **usage}


def run_all(order: list[str], reps: int, context: dict[str, Any]) -> list[dict]:
    runs, total = [], reps * len(order)
    for rep in range(1, reps + 1):
        for peer in order:
            started = time.perf_counter()
            run = run_one(peer, rep, context)
            steps = run["steps"]
            rate = sum(s["tokens"] for s in steps) / sum(s["seconds"] for s in steps)
            print(
                f"[{len(runs) + 1}/{total}] {peer} rep {rep}: {rate:.1f} tok/s, first loss "
                f"{steps[0]['loss']:.5f}, accuracy {(run.get('final_eval') or {}).get('accuracy')}, "
                f"{time.perf_counter() - started:.0f} s, other CPU load "
                f"{100 * (run['other_cpu_load'] or 0):.0f}%",
                flush=True,
            )
            runs.append(run)
    return runs


def calibrate(context: dict[str, Any], name: str) -> dict[str, Any]:
    """The matmul peaks (peers/calibrate.py) in a fresh child."""
    out = context["out"] / "runs" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "peers.calibrate", "--out", str(out)]
    cmd += ["--threads", str(context["threads"])] if context["threads"] else []
    usage = runner.run_child(cmd, context["out"] / "logs" / f"{name}.log", context["threads"])
    return {**json.loads(out.read_text()), "other_cpu_load": usage["other_cpu_load"]}


def reference(context: dict[str, Any], runs: list[dict]) -> dict[str, Any]:
    """The construction check and each run's fp32 first-step reference (peers/enc_reference.py)."""
    base, shared = context["out"] / "runs", context["shared"]
    batches = {r["name"]: enc_report.step_examples(r, shared)[0] for r in runs}
    (base / "reference-batches.json").write_text(json.dumps(batches) + "\n")
    labels = {"overrides": context["overrides"], "labels": shared.labels}
    (base / "reference-overrides.json").write_text(json.dumps(labels) + "\n")
    spec = peer_spec("hf_trainer", context, base / "reference").save(base / "reference-spec.json")
    out = base / "reference.json"
    cmd = [sys.executable, "-m", "peers.enc_reference", "--spec", str(spec), "--out", str(out)]
    cmd += ["--overrides", str(base / "reference-overrides.json")]
    cmd += ["--batches", str(base / "reference-batches.json")]
    runner.run_child(cmd, context["out"] / "logs" / "reference.log", context["threads"])
    return json.loads(out.read_text())


def definitions() -> dict[str, str]:
    return {
        "tok/s": "real (non-padding) tokens trained / seconds of the training steps, all steps; "
        "adapterkit's from its log.jsonl (its step time includes collation), the peers' timed "
        "from on_step_begin to on_step_end (their batch is collated by then)",
        "tok/s, steps 2+": "the same without the first step (one-off warm-up)",
        "padding": "padding positions / all positions computed (batch rows x longest row)",
        "peak (training)": "the trainer's definition on CPU: peak RSS (VmHWM) during the training "
        "steps, the high-water mark reset after loading and the initial eval (/proc/self/clear_refs)",
        "max RSS (process)": "ru_maxrss of the child from os.wait4: the whole process",
        "first-step loss": "mean loss per labelled row of step 1 (in train mode: dropout on)",
        "final train loss": "the last step's mean loss per row",
        "eval loss, accuracy": "over the fixed eval slice, before the first step and after the "
        "last, batches of the recipe's eval batch size in file order, in the run's precision",
        "MFU": "model FLOP/s (tok/s x model FLOPs per token) / the measured matmul peak of the "
        "row's numerics (bf16: bf16 autocast)",
        "model FLOPs": enc_prepare.flop_formula(),
        "validity": " ".join((enc_report.__doc__ or "").split("\n\n", 1)[-1].split()),
        "other CPU load": "CPU time used by every other process during the run (/proc/stat minus "
        "the child's rusage), as a share of all cores: above 10% the run's speed is suspect",
        "best peer": "the valid peer with the highest median tok/s; the goal is judged against it",
    }


def summarise(runs: list[dict], context: dict, calibrations: list[dict], ref: dict) -> dict:
    shared: EncShared = context["shared"]
    peaks = {
        "fp32": max(c["peak_fp32"]["gflops"] for c in calibrations),
        "bf16": max(c["peak_bf16"]["gflops"] for c in calibrations),
        "threads": calibrations[0]["threads"],
    }
    per_token = context["flops"]["per_token"]
    derived = [enc_report.derive(r, shared, per_token, peaks) for r in runs]
    enc_report.validate(derived, ref, shared.eval_rows)
    rows = enc_report.aggregate(derived)
    return {
        "command": context["command"],
        "protocol": context["protocol_json"],
        "shared": shared.to_json(),
        "peaks": peaks,
        "calibrations": calibrations,
        "reference": ref,
        "flops": context["flops"],
        "rows": rows,
        "goal": enc_report.goal(rows),
        "runs": derived,
        "definitions": definitions(),
    }


def write(out: Path, result: dict[str, Any]) -> str:
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = enc_table.markdown(result)
    (out / "results.md").write_text(text)
    return text


def rerender(out: Path) -> int:
    """The report again from a finished run's records (after a change to the report's code)."""
    recorded = json.loads((out / "results.json").read_text())
    context = {
        "shared": EncShared.from_json(recorded["shared"]),
        "flops": recorded["flops"],
        "command": recorded["command"],
        "protocol_json": recorded["protocol"],
    }
    result = summarise(recorded["runs"], context, recorded["calibrations"], recorded["reference"])
    print(write(out, result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.rerender:
        return rerender(args.out)
    bf16 = cpu_has_bf16() if args.peer_precision == "auto" else args.peer_precision == "bf16"
    order = [p for p in args.peers if bf16 or not p.endswith("bf16_base")]
    batch = enc_prepare.resolve(args.overrides).train.batch_size  # after any --set
    overrides = enc_prepare.adapterkit_overrides(args.rows, args.eval_rows, batch, args.threads)
    overrides += args.overrides
    recipe = enc_prepare.resolve(overrides)
    numbers = enc_prepare.numbers(recipe)
    args.out.mkdir(parents=True, exist_ok=True)
    shared = enc_prepare.prepare(args.out, recipe)
    context = {
        "out": args.out, "threads": args.threads, "bf16": bf16, "overrides": overrides,
        "numbers": numbers, "shared": shared,
        "flops": enc_prepare.flops(shared.model_path, numbers["r"], shared.lengths, len(shared.labels)),
        "command": shlex.join([Path(sys.executable).name, "benchmarks/vs_peers_encoder.py", *(argv or sys.argv[1:])]),
        "protocol_json": {**vars(args), "out": str(args.out), "peer_bf16": bf16, "order": order,
                          "recipe": enc_prepare.RECIPE, "overrides": overrides, "numbers": numbers},
    }  # fmt: skip
    calibrations = [calibrate(context, "calibrate-before")]
    runs = run_all(order, args.reps, context)
    calibrations.append(calibrate(context, "calibrate-after"))
    ref = reference(context, runs)
    print(write(args.out, summarise(runs, context, calibrations, ref)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
