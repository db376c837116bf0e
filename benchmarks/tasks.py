"""Benchmark: every built-in strategy on SST-2, MRPC and CoNLL-2003 with the embedded MiniLM encoder.

    .venv/bin/python benchmarks/tasks.py --datasets ../shared/datasets [--tasks sst2,mrpc,conll2003]
        [--strategies full,head,last_n,lora,qlora] [--out benchmarks/results/tasks]
    .venv/bin/python benchmarks/tasks.py --tasks sst2 --strategies full,lora --sst2-rows all \
        --set train.epochs=3 --out benchmarks/results/tasks-gpu          # GPU protocol

CPU protocol (issue 4): SST-2 on a seeded 20,000-row training subset for 1 epoch, model selection
on a further fixed 1,000-row slice of train, reported on dev; MRPC on its full train (300 rows
held out for selection) for 3 epochs, reported on dev; CoNLL-2003 on its full train for up to 3
epochs, selection on valid, reported on test. Each run is `adapterkit train` in its own process
(so memory figures do not leak between runs). Results: results.json and results.md in --out,
rewritten after every run.

GPU protocol (issue 4, on a CUDA machine): the whole SST-2 training file (its first 1,000 rows
held out for selection by the recipe) for 3 epochs, reported on dev. Peak memory is then the
allocator's max_memory_allocated, not the process RSS; each row records which.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRIC = {"sst2": "accuracy", "mrpc": "accuracy", "conll2003": "f1"}
REPORTED = {"sst2": "dev", "mrpc": "dev", "conll2003": "test"}  # never used for selection


def sst2_subset(datasets: Path, out: Path, rows: int = 21_000, seed: int = 0) -> Path:
    """A seeded sample of SST-2 train: 20,000 rows to train on + 1,000 the recipe holds out."""
    if rows == 0:  # the whole file, as it is
        return datasets / "sst2" / "train.tsv"
    lines = (datasets / "sst2" / "train.tsv").read_text(encoding="utf-8").split("\n")
    header, body = lines[0], [x for x in lines[1:] if x]
    sample = random.Random(seed).sample(body, rows)
    path = out / f"sst2-train-{rows}-seed{seed}.tsv"
    path.write_text("\n".join([header, *sample]) + "\n", encoding="utf-8")
    return path


def overrides(task: str, datasets: Path, out: Path, sst2_rows: int = 21_000) -> list[str]:
    if task == "sst2":
        train = sst2_subset(datasets, out, sst2_rows)
        return [f"data.train={train}", f"data.test={datasets / 'sst2/dev.tsv'}"]
    if task == "mrpc":
        return [
            f"data.train={datasets / 'mrpc/train.tsv'}",
            f"data.test={datasets / 'mrpc/dev.tsv'}",
        ]
    return [
        f"data.train={datasets / 'conll2003/train.txt'}",
        f"data.eval={datasets / 'conll2003/valid.txt'}",
        f"data.test={datasets / 'conll2003/test.txt'}",
    ]


def row(task: str, strategy: str, metrics: dict, wall: float) -> dict:
    test = metrics.get("test_eval") or {}
    out = {
        "task": task,
        "strategy": strategy,
        "metric": METRIC[task],
        "test": test.get(METRIC[task]),
        "selection": (metrics.get("best_eval") or {}).get(METRIC[task]),  # held-out / valid
        "trainable_params": metrics["trainable_params"],
        "trainable_percent": metrics["trainable_percent"],
        "adapter_bytes": metrics["adapter_bytes"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "peak_memory_kind": metrics["peak_memory_kind"],
        "device": metrics["device"],
        "precision": metrics.get("precision"),
        "tokens_per_s": metrics["tokens_per_s"],
        "steps": metrics["steps"],
        "epochs": metrics["epochs"],
        "best_step": metrics.get("best_step"),
        "wall_time_s": wall,
    }
    if task == "mrpc":
        out["test_f1"] = test.get("f1")
    return out


_KIND = {"process_rss": "RSS", "cuda_allocated": "CUDA max allocated"}


def markdown(rows: list[dict]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sets = {" ".join(r.get("overrides") or []) for r in rows if r["task"] == task}
        devices = sorted({str(r.get("device", "cpu")) for r in rows if r["task"] == task})
        extra = " | dev F1" if task == "mrpc" else ""
        lines += [
            f"\n### {task}"
            + (f" (with {', '.join(sorted(s for s in sets if s))})" if any(sets) else "")
            + (f" on {', '.join(devices)}" if devices != ["cpu"] else "")
            + "\n",
            f"| strategy | {REPORTED[task]} {METRIC[task]}{extra} | trainable params | adapter size | "
            "peak memory | tokens/s | steps | wall time |",
            "|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""),
        ]
        order = {s: i for i, s in enumerate(("full", "head", "last_n", "lora", "qlora"))}
        mine = sorted(
            (r for r in rows if r["task"] == task), key=lambda r: order.get(r["strategy"], 9)
        )
        for r in mine:
            if "error" in r:
                lines.append(f"| {r['strategy']} | failed: {r['error']} |")
                continue
            f1 = f" | {r['test_f1']:.4f}" if task == "mrpc" else ""
            kind = r.get("peak_memory_kind", "process_rss")
            jobs = r.get("concurrent_runs", 1)
            together = f" ({jobs} runs at once)" if jobs > 1 else ""
            lines.append(
                f"| {r['strategy']} | {r['test']:.4f}{f1} | {r['trainable_params']:,} "
                f"({r['trainable_percent']:.2f}%) | {r['adapter_bytes'] / 1e6:.1f} MB | "
                f"{r['peak_memory_bytes'] / 2**30:.2f} GiB ({_KIND.get(kind, kind)}) | "
                f"{r['tokens_per_s']:.0f} | "
                f"{r['steps']} | {r['wall_time_s'] / 60:.1f} min{together} |"
            )
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> None:
    """Per task, the same plots `adapterkit compare` draws: reported metric against peak memory
    (Pareto front marked) and every strategy's training loss, from the runs' own logs."""
    from adapterkit.comparison.report import plot_losses, plot_pareto

    for task in dict.fromkeys(r["task"] for r in rows):
        done = [r for r in rows if r["task"] == task and "error" not in r]
        as_compare_rows = [
            {
                "strategy": r["strategy"],
                "error": None,
                "eval_metric": f"{REPORTED[task]} {METRIC[task]}",
                "higher_is_better": True,
                "eval_value": r["test"],
                "peak_memory_bytes": r["peak_memory_bytes"],
                "peak_memory_kind": r.get("peak_memory_kind", "process_rss"),
            }
            for r in done
        ]
        plot_pareto(as_compare_rows, out / f"{task}-pareto.png")
        runs = {r["strategy"]: out / "runs" / f"{task}-{r['strategy']}" for r in done}
        plot_losses(runs, out / f"{task}-loss.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--tasks", default="sst2,mrpc,conll2003")
    parser.add_argument("--strategies", default="full,head,last_n,lora,qlora")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tasks")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="extra recipe override for every run (e.g. train.epochs=1); recorded in the results",
    )  # fmt: skip
    parser.add_argument(
        "--sst2-rows", default="21000",
        help="SST-2 training rows sampled (20,000 + the 1,000 held out), or 'all' for the whole file",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="runs at once (for a GPU with room to spare; wall times then overlap, and say so)",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="redraw md and plots only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    if args.report_only:
        (args.out / "results.md").write_text(markdown(rows))
        plots(rows, args.out)
        return 0
    scratch = args.out / "runs"
    scratch.mkdir(exist_ok=True)
    runs = []
    for task in args.tasks.split(","):
        sst2_rows = 0 if args.sst2_rows == "all" else int(args.sst2_rows)
        extra = [*overrides(task, args.datasets, scratch, sst2_rows), *args.set]
        for strategy in args.strategies.split(","):
            run_dir = scratch / f"{task}-{strategy}"
            cmd = [
                sys.executable, "-m", "adapterkit", "train", f"recipes/minilm/{task}-{strategy}.yaml",
                *extra, "--out", str(run_dir), "--overwrite", "--no-progress",
            ]  # fmt: skip
            runs.append((task, strategy, run_dir, cmd))

    def run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
        print(" ".join(cmd[2:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        return done, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run, cmd): (task, strategy, run_dir)
            for task, strategy, run_dir, cmd in runs
        }
        for fut in as_completed(futures):
            (task, strategy, run_dir), (done, wall) = futures[fut], fut.result()
            rows = [r for r in rows if (r["task"], r["strategy"]) != (task, strategy)]
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({"task": task, "strategy": strategy, "error": error})
            else:
                metrics = json.loads((run_dir / "metrics.json").read_text())
                rec = row(task, strategy, metrics, wall)
                rows.append({**rec, "overrides": args.set, "concurrent_runs": args.jobs})
            print(f"  -> {rows[-1]}", flush=True)
            results_path.write_text(json.dumps(rows, indent=2) + "\n")
            (args.out / "results.md").write_text(markdown(rows))
    plots(rows, args.out)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
