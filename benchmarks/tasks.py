"""Benchmark: every built-in strategy on SST-2, MRPC and CoNLL-2003 with the embedded MiniLM encoder.

    .venv/bin/python benchmarks/tasks.py --datasets ../shared/datasets [--tasks sst2,mrpc,conll2003]
        [--strategies full,head,last_n,lora,qlora] [--out benchmarks/results/tasks]

CPU protocol (issue 4): SST-2 on a seeded 20,000-row training subset for 1 epoch, model selection
on a further fixed 1,000-row slice of train, reported on dev; MRPC on its full train (300 rows
held out for selection) for 3 epochs, reported on dev; CoNLL-2003 on its full train for up to 3
epochs, selection on valid, reported on test. Each run is `adapterkit train` in its own process
(so memory figures do not leak between runs). Results: results.json and results.md in --out,
rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRIC = {"sst2": "accuracy", "mrpc": "accuracy", "conll2003": "f1"}
REPORTED = {"sst2": "dev", "mrpc": "dev", "conll2003": "test"}  # never used for selection


def sst2_subset(datasets: Path, out: Path, rows: int = 21_000, seed: int = 0) -> Path:
    """A seeded sample of SST-2 train: 20,000 rows to train on + 1,000 the recipe holds out."""
    lines = (datasets / "sst2" / "train.tsv").read_text(encoding="utf-8").split("\n")
    header, body = lines[0], [x for x in lines[1:] if x]
    sample = random.Random(seed).sample(body, rows)
    path = out / f"sst2-train-{rows}-seed{seed}.tsv"
    path.write_text("\n".join([header, *sample]) + "\n", encoding="utf-8")
    return path


def overrides(task: str, datasets: Path, out: Path) -> list[str]:
    if task == "sst2":
        train = sst2_subset(datasets, out)
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
        "trainable_params": metrics["trainable_params"],
        "trainable_percent": metrics["trainable_percent"],
        "adapter_bytes": metrics["adapter_bytes"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "tokens_per_s": metrics["tokens_per_s"],
        "steps": metrics["steps"],
        "epochs": metrics["epochs"],
        "best_step": metrics.get("best_step"),
        "wall_time_s": wall,
    }
    if task == "mrpc":
        out["test_f1"] = test.get("f1")
    return out


def markdown(rows: list[dict]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sets = {" ".join(r.get("overrides") or []) for r in rows if r["task"] == task}
        extra = " | dev F1" if task == "mrpc" else ""
        lines += [
            f"\n### {task}"
            + (f" (with {', '.join(sorted(s for s in sets if s))})" if any(sets) else "")
            + "\n",
            f"| strategy | {REPORTED[task]} {METRIC[task]}{extra} | trainable params | adapter size | "
            "peak memory (RSS) | tokens/s | steps | wall time |",
            "|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""),
        ]
        for r in (r for r in rows if r["task"] == task):
            if "error" in r:
                lines.append(f"| {r['strategy']} | failed: {r['error']} |")
                continue
            f1 = f" | {r['test_f1']:.4f}" if task == "mrpc" else ""
            lines.append(
                f"| {r['strategy']} | {r['test']:.4f}{f1} | {r['trainable_params']:,} "
                f"({r['trainable_percent']:.2f}%) | {r['adapter_bytes'] / 1e6:.1f} MB | "
                f"{r['peak_memory_bytes'] / 2**30:.2f} GiB | {r['tokens_per_s']:.0f} | "
                f"{r['steps']} | {r['wall_time_s'] / 60:.1f} min |"
            )
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> None:
    """Per task, the same plots `adapterkit compare` draws: reported metric against peak memory
    (Pareto front marked) and every strategy's training loss, from the runs' own logs."""
    from adapterkit.compare_report import plot_losses, plot_pareto

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
                "peak_memory_kind": "process_rss",
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
    for task in args.tasks.split(","):
        extra = [*overrides(task, args.datasets, scratch), *args.set]
        for strategy in args.strategies.split(","):
            run_dir = scratch / f"{task}-{strategy}"
            cmd = [
                sys.executable, "-m", "adapterkit", "train", f"recipes/minilm/{task}-{strategy}.yaml",
                *extra, "--out", str(run_dir), "--overwrite", "--no-progress",
            ]  # fmt: skip
            print(" ".join(cmd[2:]), flush=True)
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            rows = [r for r in rows if (r["task"], r["strategy"]) != (task, strategy)]
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({"task": task, "strategy": strategy, "error": error})
            else:
                metrics = json.loads((run_dir / "metrics.json").read_text())
                rows.append({**row(task, strategy, metrics, wall), "overrides": args.set})
            print(f"  -> {rows[-1]}", flush=True)
            results_path.write_text(json.dumps(rows, indent=2) + "\n")
            (args.out / "results.md").write_text(markdown(rows))
    plots(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
