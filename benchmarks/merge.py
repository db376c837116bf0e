"""`adapterkit merge` on the shipped recipes: merge time, the verification figures, and the eval
metric of base + adapter and of the merged model, per written dtype and base.

    .venv/bin/python benchmarks/merge.py [--cases smollm2-lora,smollm2-qlora,minilm-sst2-lora]
        [--adapter CASE=RUN_DIR ...] [--dtypes fp32,bf16,fp16] [--max-rows 16]
        [--precision fp32] [--work DIR] [--out benchmarks/results/merge]

Each case trains briefly (`--steps`, 3 by default, on a slice of the recipe's data) unless
`--adapter` names a run to merge instead; then every (base, dtype) is merged with
`adapterkit.export.merge.merge(..., force=True)`, so a merge over its tolerance is recorded too,
with its pass/fail. QLoRA is merged into the dequantized NF4 base and into the original weights;
for the original base the report also compares the merged model with base + adapter as trained
(`vs_trained`), which is what shows the quantization error a merge onto the original weights
adds. Results: `<out>/results.json` and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, tuple[str, tuple[str, ...], list[str]]] = {
    "smollm2-lora": (
        "recipes/smollm2/lora.yaml",
        ("dequantized",),
        ["data.max_train_rows=24", "data.max_eval_rows=16", "train.batch_size=4"],
    ),
    "smollm2-qlora": (
        "recipes/smollm2/qlora.yaml",
        ("dequantized", "original"),
        ["data.max_train_rows=24", "data.max_eval_rows=16", "train.batch_size=4"],
    ),
    "minilm-sst2-lora": (
        "recipes/minilm/sst2-lora.yaml",
        ("dequantized",),
        ["data.max_train_rows=96", "data.holdout=32", "data.test=null"],
    ),
}
"""case -> (recipe, bases merged into, overrides that keep the brief training brief)."""


def _train(case: str, steps: int, precision: str, work: Path) -> tuple[Path, float]:
    from adapterkit import api
    from adapterkit.recipe import resolve

    recipe_file, _, overrides = CASES[case]
    extra = [f"train.max_steps={steps}", f"train.eval_every={steps}", *overrides]
    if precision != "auto":
        extra.append(f"train.precision={precision}")
    run = work / case
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    api.train(resolve(ROOT / recipe_file, extra), run, progress=False)
    return run, time.perf_counter() - started


def _merge(run: Path, out: Path, dtype: str, base: str, max_rows: int) -> dict[str, Any]:
    from adapterkit.export.merge import merge

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    report = merge(run, out, dtype=dtype, base=base, max_rows=max_rows, force=True)
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    report["bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors")
    shutil.rmtree(out, ignore_errors=True)
    return report


def _row(case: str, report: dict[str, Any]) -> dict[str, Any]:
    metric = report["metric"]
    vs = report.get("vs_trained")
    return {
        "case": case,
        "base": report["base"],
        "dtype": report["dtype"],
        "passed": report["passed"],
        "merge_s": report["merge_seconds"],
        "verify_s": report["verify_seconds"],
        "mb": round(report["bytes"] / 1e6, 1),
        "rows": report["rows"],
        "positions": report["positions"],
        "max_abs_logit_diff": report["max_abs_logit_diff"],
        "logit_scale": report["logit_scale"],
        "mean_kl": report["mean_kl"],
        "tolerance": report["tolerance"],
        "metric": metric["name"],
        "metric_before": metric["reference"],
        "metric_after": metric["merged"],
        "vs_trained": None
        if vs is None
        else {
            "max_abs_logit_diff": vs["max_abs_logit_diff"],
            "mean_kl": vs["mean_kl"],
            "metric_before": vs["metric"]["reference"],
            "metric_after": vs["metric"]["merged"],
        },
    }


def _g(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        "| case | base | dtype | merge s | verify s | MB | positions | max abs dlogit (tol) | "
        "mean KL (tol) | metric before → after | vs trained: max abs dlogit, KL, metric | passed |"
    )
    lines = [
        "# adapterkit merge",
        "",
        f"{meta['command']}",
        "",
        f"Machine: {meta['machine']} (a shared 2-core CPU: timings are contended). Training: "
        f"{meta['steps']} steps, precision {meta['precision']}. Verification on at most "
        f"{meta['max_rows']} held-out rows per merge; the reference is base + adapter as trained "
        "(for `original`: the float32 original base + adapter, unmerged, and `vs trained` "
        "compares with base + adapter as trained). Tolerances: docs/merge.md.",
        "",
        head,
        "|" + "---|" * 12,
    ]
    for r in rows:
        tol = r["tolerance"]
        vs = r["vs_trained"]
        vs_text = (
            "—"
            if vs is None
            else f"{_g(vs['max_abs_logit_diff'])}, {_g(vs['mean_kl'])}, "
            f"{_g(vs['metric_before'])} → {_g(vs['metric_after'])}"
        )
        lines.append(
            f"| {r['case']} | {r['base']} | {r['dtype']} | {r['merge_s']} | {r['verify_s']} | "
            f"{r['mb']} | {r['positions']} | {_g(r['max_abs_logit_diff'])} "
            f"({_g(tol['max_abs_logit_diff'])}) | {_g(r['mean_kl'])} ({_g(tol['mean_kl'])}) | "
            f"{r['metric']} {_g(r['metric_before'])} → {_g(r['metric_after'])} | {vs_text} | "
            f"{'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from adapterkit.storage.atomic import json_safe

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--adapter", action="append", default=[], help="CASE=RUN_DIR: no training")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="train.precision (auto: the recipe's)")
    parser.add_argument("--max-rows", type=int, default=16)
    parser.add_argument("--work", type=Path, help="where runs and merges go [a scratch directory]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "merge")
    args = parser.parse_args()

    given = dict(item.split("=", 1) for item in args.adapter)
    work = args.work or Path(tempfile.mkdtemp(prefix="adapterkit-merge-bench-"))
    rows, trained = [], {}
    for case in args.cases.split(","):
        if case in given:
            run, seconds = Path(given[case]), None
        else:
            run, seconds = _train(case, args.steps, args.precision, work)
        trained[case] = {"run": str(run), "train_seconds": seconds}
        for base in CASES[case][1]:
            for dtype in args.dtypes.split(","):
                report = _merge(run, work / f"{case}-{base}-{dtype}", dtype, base, args.max_rows)
                rows.append(json_safe(_row(case, report)))
                print(json.dumps(rows[-1]), flush=True)
    shown = ("cases", "dtypes", "steps", "precision", "max_rows")
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in shown]
    meta = {
        "command": "`.venv/bin/python benchmarks/merge.py " + " ".join(flags) + "`",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "steps": args.steps,
        "precision": args.precision,
        "max_rows": args.max_rows,
        "trained": trained,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (args.out / "results.md").write_text(_markdown(rows, meta))
    print(f"wrote {args.out}/results.md")


if __name__ == "__main__":
    main()
