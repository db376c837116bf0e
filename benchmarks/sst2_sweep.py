"""SST-2 learning-rate (and LoRA rank/dropout) sweep, selected on the held-out slice of train.

    .venv/bin/python benchmarks/sst2_sweep.py --datasets ../shared/datasets [--protocol cpu|gpu]
        [--jobs N] [--out benchmarks/results/sst2-sweep]
    .venv/bin/python benchmarks/sst2_sweep.py --report-only

Each configuration is one `benchmarks/tasks.py --tasks sst2` run (so one `adapterkit train`), in
OUT/<protocol>-<name>/. The protocols are issue 4's: cpu = a seeded 20,000-row subset for 1 epoch;
gpu = the whole training file for 3 epochs. Both hold out the recipe's fixed 1,000-row slice of
train for selection and report dev, which no choice here looks at: per protocol and strategy, the
configuration with the best held-out accuracy is the one marked as selected. The held-out slice
has 1,000 rows, so a difference of 0.003 is three sentences: the table shows how little separates
the top configurations.

Writes OUT/results.json (one row per run, collected from the runs' folders) and OUT/results.md;
`--report-only` collects and redraws without training (from OUT/results.json alone when the
runs' folders are not there, as in a fresh clone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (strategy, overrides). "recipe" is the recipe as shipped.
SWEEP: dict[str, dict[str, tuple[str, list[str]]]] = {
    "cpu": {
        "full-recipe": ("full", []),
        "full-lr3e-5": ("full", ["train.lr=3e-05"]),
        "full-lr1e-4": ("full", ["train.lr=0.0001"]),
        "full-lr2e-4": ("full", ["train.lr=0.0002"]),
        "lora-recipe": ("lora", []),
        "lora-lr3e-4": ("lora", ["train.lr=0.0003"]),
        "lora-lr1e-3": ("lora", ["train.lr=0.001"]),
        "lora-lr2e-3": ("lora", ["train.lr=0.002"]),
        "lora-lr1e-3-dropout0": ("lora", ["train.lr=0.001", "strategy.options.dropout=0.0"]),
        "lora-r16-lr1e-3": (
            "lora",
            ["train.lr=0.001", "strategy.options.r=16", "strategy.options.alpha=32"],
        ),
        "lora-r16-lr2e-3": (
            "lora",
            ["train.lr=0.002", "strategy.options.r=16", "strategy.options.alpha=32"],
        ),
        "qlora-recipe": ("qlora", []),
        "qlora-lr1e-3": ("qlora", ["train.lr=0.001"]),
    },
    "gpu": {
        "full-recipe": ("full", []),
        "lora-recipe": ("lora", []),
        "lora-lr3e-4": ("lora", ["train.lr=0.0003"]),
        "lora-lr1e-3": ("lora", ["train.lr=0.001"]),
    },
}
PROTOCOL_ARGS = {"cpu": [], "gpu": ["--sst2-rows", "all", "--set", "train.epochs=3"]}


def run(protocol: str, name: str, datasets: Path, out: Path) -> None:
    strategy, overrides = SWEEP[protocol][name]
    sets = [arg for o in ["train.precision=fp32", *overrides] for arg in ("--set", o)]
    cmd = [
        sys.executable, "benchmarks/tasks.py", "--datasets", str(datasets), "--tasks", "sst2",
        "--strategies", strategy, *PROTOCOL_ARGS[protocol], *sets,
        "--out", str(out / f"{protocol}-{name}"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:  # the run's own error row is collected; show why here
        print(f"{protocol}-{name} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}", flush=True)


def collect(out: Path) -> list[dict]:
    rows = []
    for protocol, configs in SWEEP.items():
        for name in configs:
            path = out / f"{protocol}-{name}" / "results.json"
            if not path.exists():
                continue
            (r,) = json.loads(path.read_text())
            if "error" in r:
                print(f"{protocol}-{name}: {r['error']} (left out)")
                continue
            if r.get("selection") is None:  # rows written before tasks.py recorded it
                metrics = path.parent / "runs" / f"sst2-{r['strategy']}" / "metrics.json"
                r["selection"] = json.loads(metrics.read_text())["best_eval"]["accuracy"]
            rows.append({"protocol": protocol, "config": name, **r})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = []
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        lines += [
            f"\n**{protocol} protocol**\n",
            "| strategy | configuration | held-out accuracy (selection) | dev accuracy (reported) "
            "| device | steps |",
            "|---|---|---|---|---|---|",
        ]
        mine = [r for r in rows if r["protocol"] == protocol]
        for strategy in dict.fromkeys(r["strategy"] for r in mine):
            group = [r for r in mine if r["strategy"] == strategy]
            best = max(group, key=lambda r: r["selection"])
            for r in group:
                mark = " **selected**" if r is best else ""
                lines.append(
                    f"| {strategy} | {r['config']}{mark} | {r['selection']:.3f} | {r['test']:.4f} "
                    f"| {r.get('device', 'cpu')} | {r['steps']} |"
                )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--protocol", choices=list(SWEEP), action="append")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sst2-sweep")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        todo = [(p, n) for p in args.protocol or list(SWEEP) for n in SWEEP[p]]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for fut in [pool.submit(run, p, n, args.datasets, args.out) for p, n in todo]:
                fut.result()
    rows = collect(args.out)
    if rows:
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    else:  # a fresh clone keeps only the collected rows: redraw from them
        rows = json.loads((args.out / "results.json").read_text())
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
