"""adapterkit against what users pick instead: the tutorial script and the best-tuned peers.

    .venv/bin/python benchmarks/vs_peers.py [--reps 3] [--max-steps 12] [--rows 160]
        [--strategies lora[,full,qlora]] [--peers adapterkit,tutorial,trl,hf_tuned[,hf_grouped]]
        [--max-length 512] [--eval-rows 40] [--threads N] [--set KEY=VALUE ...]
        [--out benchmarks/results/vs_peers]

Rows, each a fresh child process, run in alternation (A B C D, A B C D, ...), --reps times:
adapterkit (`adapterkit train recipes/smollm2/<strategy>.yaml`, only the protocol's overrides),
the tutorial script (benchmarks/trainer_peft_baseline.py), TRL's SFTTrainer and HF's Trainer
tuned (peers/), on exactly the same token ids and loss mask: adapterkit's causal LM encoding,
written once to JSONL, in adapterkit's step order. Reports per row (medians, and every rep):
non-padding tokens/s, the training steps' peak RSS and the process's max RSS, first-step, final
train and eval losses, MFU against the matmul peak measured in the same run, ratios to the tutorial
and to the best valid peer, and a validity check (peers/report.py). Writes results.json,
results.md and every child's log under --out. The peers need the `bench` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from peers import prepare, report, runner
from peers.runner import ALL_PEERS, DEFAULT_PEERS, LORA_ONLY, Protocol

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("lora", "full", "qlora")


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise SystemExit(f"--{what}: {unknown or 'nothing'} not among {', '.join(allowed)}")
    return items


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--rows", type=int, default=160, help="first N shipped train rows")
    parser.add_argument("--eval-rows", type=int, default=40, help="first N shipped eval rows")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--strategies", default="lora", help="of lora,full,qlora (slow: opt-in)")
    parser.add_argument(
        "--peers", default=",".join(DEFAULT_PEERS), help=f"of {','.join(ALL_PEERS)}"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default torch's")
    parser.add_argument(
        "--tuned-precision", choices=("auto", "bf16", "fp32"), default="auto",
        help="the tuned peers' precision; auto: bf16 where the CPU has AVX-512 BF16 or AMX",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="an extra override for adapterkit's recipe (repeatable); recorded in the results",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vs_peers")
    parser.add_argument(
        "--rerender", action="store_true",
        help="no runs: rebuild results.json/.md from the runs recorded in --out/results.json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.strategies = _list(args.strategies, STRATEGIES, "strategies")
    args.peers = _list(args.peers, ALL_PEERS, "peers")
    return args


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_peers_installed(peers: list[str]) -> None:
    """Fail before any run when a peer's package is missing: the peers are an optional extra."""
    needed = {"trl": ["trl", "datasets"], "hf_tuned": ["peft"], "tutorial": ["peft"]}
    missing = sorted(
        {m for p in peers for m in needed.get(p, []) if importlib.util.find_spec(m) is None}
    )
    if missing:
        raise SystemExit(
            f"peer packages missing: {', '.join(missing)}; install the benchmark extra: "
            ".venv/bin/python -m pip install -e '.[bench]' (or `make bench-setup`)"
        )


def plan_runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(strategy, peer) in the order of one round; full and qlora: adapterkit and the tutorial."""
    return [
        (s, p) for s in args.strategies for p in args.peers if s == "lora" or p not in LORA_ONLY
    ]


def run_all(order: list[tuple[str, str]], reps: int, context: dict) -> list[dict]:
    runs, total = [], reps * len(order)
    for rep in range(1, reps + 1):
        for strategy, peer in order:
            started = time.perf_counter()
            run = runner.run_one(peer, strategy, rep, context)
            steps = run["steps"]
            rate = sum(s["tokens"] for s in steps) / sum(s["seconds"] for s in steps)
            print(
                f"[{len(runs) + 1}/{total}] {strategy} {peer} rep {rep}: {rate:.1f} tok/s, "
                f"first loss {steps[0]['loss']:.5f}, {time.perf_counter() - started:.0f} s, "
                f"other CPU load {100 * (run['other_cpu_load'] or 0):.0f}%",
                flush=True,
            )
            runs.append(run)
    return runs


def definitions() -> dict[str, str]:
    return {
        "tok/s": "real (non-padding) tokens trained / seconds of the training steps, all steps; "
        "adapterkit's from its log.jsonl, the peers' timed from on_step_begin to on_step_end "
        "(their batch is collated by then; adapterkit's step time includes collation)",
        "tok/s, steps 2+": "the same without the first step (one-off warm-up)",
        "peak (training)": "the trainer's definition on CPU: peak RSS (VmHWM) during the training "
        "steps, the high-water mark reset after loading through /proc/self/clear_refs",
        "max RSS (process)": "ru_maxrss of the child from os.wait4: the whole process, loading "
        "and eval included",
        "first-step loss": "mean loss per target token of step 1 (LoRA B = 0, so the base model's)",
        "final train loss": "the last step's mean loss per target token",
        "eval loss": "mean loss per target token over the eval slice after the last step",
        "numerics": "bf16 when the row computes in bf16 anywhere (autocast, bf16 base, bf16 4-bit "
        "compute), else fp32",
        "MFU": "model FLOP/s (tok/s x model FLOPs per token) / the measured matmul peak of the "
        "row's numerics",
        "model FLOPs": prepare.flop_formula(),
        "validity": " ".join((report.__doc__ or "").split("\n\n", 1)[-1].split()),
        "other CPU load": "CPU time used by every other process during the run (/proc/stat minus "
        "the child's rusage), as a share of all cores: above 10% the run's speed is suspect",
        "best peer": "the valid tuned peer (TRL, HF tuned) with the highest median tok/s",
    }


def summarise(runs: list[dict], context: dict, calibrations: list[dict]) -> dict[str, Any]:
    shared: prepare.Shared = context["shared"]
    peaks = {
        "fp32": max(c["peak_fp32"]["gflops"] for c in calibrations),
        "bf16": max(c["peak_bf16"]["gflops"] for c in calibrations),
        "threads": calibrations[0]["threads"],
    }
    flops = context["flops"]
    per_token = {s: sum(f["per_step"]) / sum(shared.step_tokens) for s, f in flops.items()}
    derived = [report.derive(r, shared, per_token[r["strategy"]], peaks) for r in runs]
    ref = (calibrations[0].get("reference") or {}).get("first_step_loss")
    report.validate(derived, {"lora": ref, "full": ref, "qlora": None})
    rows = report.aggregate(derived)
    return {
        "command": context["command"],
        "protocol": context["protocol_json"],
        "shared": shared.to_json(),
        "peaks": peaks,
        "calibrations": calibrations,
        "reference": calibrations[0].get("reference"),
        "flops": {
            "per_token_gflop": {s: round(v / 1e9, 4) for s, v in per_token.items()},
            "by_strategy": flops,
        },
        "rows": rows,
        "goals": report.goals(rows),
        "runs": derived,
        "definitions": definitions(),
    }


def rerender(out: Path) -> int:
    """The report again from a finished run's records (after a change to the report's code)."""
    import json

    recorded = json.loads((out / "results.json").read_text())
    context = {
        "shared": prepare.Shared.from_json(recorded["shared"]),
        "flops": recorded["flops"]["by_strategy"],
        "command": recorded["command"],
        "protocol_json": recorded["protocol"],
    }
    print(report.write(out, summarise(recorded["runs"], context, recorded["calibrations"])))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.rerender:
        return rerender(args.out)
    check_peers_installed(args.peers)
    bf16 = cpu_has_bf16() if args.tuned_precision == "auto" else args.tuned_precision == "bf16"
    args.out.mkdir(parents=True, exist_ok=True)
    proto = Protocol(
        args.max_steps, args.rows, args.eval_rows, args.max_length, args.threads, bf16, args.out,
        tuple(args.overrides),
    )  # fmt: skip
    numbers = {s: prepare.recipe_numbers(s) for s in args.strategies}
    shared = prepare.prepare(
        args.out, args.rows, args.eval_rows, args.max_length, args.max_steps, numbers
    )
    flops = {
        s: prepare.flops_per_step(shared.model_path, s, numbers[s]["r"], shared.step_lengths)
        for s in args.strategies
    }
    context = {
        "protocol": proto, "numbers": numbers, "shared": shared, "flops": flops,
        "command": shlex.join([Path(sys.executable).name, "benchmarks/vs_peers.py", *(argv or sys.argv[1:])]),
        "protocol_json": {**vars(args), "out": str(args.out), "tuned_bf16": bf16,
                          "batch_size": numbers[args.strategies[0]]["batch_size"], "numbers": numbers},
    }  # fmt: skip
    reference = bool({"lora", "full"} & set(args.strategies))
    calibrations = [runner.calibrate(shared, proto, "calibrate-before", reference)]
    runs = run_all(plan_runs(args), args.reps, context)
    calibrations.append(runner.calibrate(shared, proto, "calibrate-after", False))
    result = summarise(runs, context, calibrations)
    print(report.write(args.out, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
