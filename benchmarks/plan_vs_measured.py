"""`adapterkit.planning.memory.plan` against the trainer's measured peak memory.

    .venv/bin/python benchmarks/plan_vs_measured.py [--models smollm2 minilm]
        [--strategies full head last_n lora qlora] [--points 8x64 32x128] [--max-steps 3]
        [--out benchmarks/results/plan] [--model-path smollm2=DIR] [--jobs N] [--precision bf16]
    .venv/bin/python benchmarks/plan_vs_measured.py --measure-runtime

For each embedded model (SmolLM2-135M with causal_lm on data/instructions, MiniLM-L6 with
sequence_classification on data/sst2), each built-in strategy and each (batch, length) point, it
runs `adapterkit train` in a child process (one at a time) and compares metrics.json's
`peak_memory_bytes` (CPU: the process's peak RSS during the training steps; CUDA: the allocator's
max_memory_allocated) with the plan for the same point. Runs use `--precision` (default fp32,
the arithmetic of the older tables; bf16: autocast with the base stored in bf16, which the plan
models too), on whatever device the trainer picks. Every row of the training file is made
long enough to be cut at the point's length (rows are concatenated), so every batch is exactly
batch x length tokens: the measured run and the plan see the same shapes.

`--model-path NAME=DIR` trains a local HF directory in place of an embedded model (the plan is
made from the same directory's config): memory depends only on the shapes, so a directory holding
the embedded model's config and tokenizer with randomly initialised weights measures the same
peak on a machine where the embedded package cannot be installed. `--jobs N` runs N points at
once; use it only on CUDA, where `max_memory_allocated` is per process and unaffected.

`--replan` keeps the measurements in OUT/results.json and makes every plan again with the current
code (how the tables are kept current when only the planner changes).

`--measure-runtime` reproduces the measurement behind estimate.CPU_RUNTIME_BYTES: the resident
memory of a fresh process once the libraries a training run imports are loaded.

Writes OUT/results.json (one record per point) and OUT/results.md (the table and the worst error).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

MODELS: dict[str, dict[str, Any]] = {
    "smollm2": {
        "recipe": "recipes/smollm2/{strategy}.yaml",
        "source": ROOT / "data/instructions/train.jsonl",
        "points": [(1, 256), (4, 128), (2, 512)],
    },
    "minilm": {
        "recipe": "recipes/minilm/sst2-{strategy}.yaml",
        "source": ROOT / "data/sst2/train.tsv",
        "points": [(8, 64), (32, 128), (16, 256)],
    },
}
_PLAN_LOCK = threading.Lock()
STRATEGIES = ["full", "head", "last_n", "lora", "qlora"]

_RUNTIME_PROBE = """
import torch, transformers, peft, accelerate, adapterkit.api, adapterkit.training.trainer
from adapterkit import testing
from adapterkit.strategy import ModelParts
import adapterkit_strategies as S
S.Lora().apply(testing.tiny_llama(), S.Lora.Options(), ModelParts(('lm_head',), False))
x = torch.randn(64, 64, requires_grad=True); (x @ x).sum().backward()
print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS')))
"""


def measure_runtime() -> int:
    """VmRSS of a fresh process after the training imports, a tiny LoRA model and one backward."""
    out = subprocess.run(
        [sys.executable, "-c", _RUNTIME_PROBE], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def long_rows(model: str, rows_needed: int, dest: Path) -> Path:
    """A training file whose every row is longer than any point's length (rows concatenated)."""
    src = MODELS[model]["source"]
    if model == "smollm2":
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        out = []
        for i in range(rows_needed):
            parts = [rows[(i * 7 + k) % len(rows)]["output"] for k in range(48)]  # > 2,000 tokens
            out.append(
                {"instruction": rows[i % len(rows)]["instruction"], "output": " ".join(parts)}
            )
        dest.write_text("".join(json.dumps(r) + "\n" for r in out))
        return dest
    lines = src.read_text().splitlines()[1:]
    data = [line.split("\t") for line in lines if "\t" in line]
    out_lines = ["sentence\tlabel"]
    for i in range(rows_needed):
        words = " ".join(data[(i * 13 + k) % len(data)][0].strip() for k in range(100))
        out_lines.append(f"{words}\t{data[i % len(data)][1].strip()}")
    dest.write_text("\n".join(out_lines) + "\n")
    return dest


def run_point(
    model: str,
    strategy: str,
    batch: int,
    length: int,
    max_steps: int,
    work: Path,
    model_path: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    from adapterkit.planning.memory import from_recipe
    from adapterkit.recipe import resolve

    recipe = MODELS[model]["recipe"].format(strategy=strategy)
    suffix = ".tsv" if model == "minilm" else ".jsonl"
    data = long_rows(
        model, batch * max_steps, work / f"{model}-{strategy}-{batch}x{length}{suffix}"
    )
    overrides = [
        f"train.max_steps={max_steps}",
        f"train.batch_size={batch}",
        f"task.options.max_length={length}",
        f"data.train={data}",
        "data.eval=null",
        "train.eval_every=null",
        "train.gradient_checkpointing=false",
        "train.precision=fp32",  # unless `extra` (--precision, --set) says otherwise
    ]
    if model_path:
        overrides.append(f"model.name={model_path}")
    overrides += extra
    if model == "minilm":
        overrides += ["data.holdout=null", "data.test=null"]
    out = work / f"{model}-{strategy}-{batch}x{length}"
    done = subprocess.run(
        [sys.executable, "-m", "adapterkit", "train", recipe, *overrides,
         "--out", str(out), "--overwrite", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{model} {strategy} {batch}x{length} failed:\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics["tokens"] != batch * length * max_steps:  # a short row would shrink the point
        raise RuntimeError(
            f"{model} {strategy} {batch}x{length}: trained on {metrics['tokens']} tokens, "
            f"not {batch * length * max_steps}: the rows are shorter than the point"
        )
    device = "cuda" if str(metrics["device"]).startswith("cuda") else "cpu"
    with _PLAN_LOCK:  # transformers' lazy imports are not thread-safe
        (p,) = from_recipe(resolve(ROOT / recipe, overrides), None, device)
    measured = int(metrics["peak_memory_bytes"])
    return {
        "model": model,
        "strategy": strategy,
        "batch_size": batch,
        "seq_len": length,
        "device": device,
        "device_name": metrics.get("device_name") or metrics["device"],
        "precision": metrics.get("precision", "fp32"),
        "measured_bytes": measured,
        "measured_kind": metrics["peak_memory_kind"],
        "measured_after_training": {
            k: metrics.get(k)
            for k in ("rss_anon_bytes", "rss_file_bytes", "load_peak_memory_bytes")
        },
        "planned_bytes": p.total,
        "error": (p.total - measured) / measured,
        "overrides": list(extra),
        "model_path": model_path,
        "trainable_params": {"plan": p.trainable_params, "run": metrics["trainable_params"]},
        "components": {k: v for k, v in p.components.items() if not k.endswith("detail")},
    }


def replan(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its plan made again by the current code (the measurement kept)."""
    from adapterkit.planning.memory import from_recipe
    from adapterkit.recipe import resolve

    recipe = MODELS[record["model"]]["recipe"].format(strategy=record["strategy"])
    overrides = [
        f"train.batch_size={record['batch_size']}",
        f"task.options.max_length={record['seq_len']}",
        "train.gradient_checkpointing=false",
        f"train.precision={record.get('precision', 'fp32')}",
        *record.get("overrides", []),
    ]
    if record.get("model_path"):  # else the embedded model, whose config a copy would share
        overrides.append(f"model.name={record['model_path']}")
    (p,) = from_recipe(resolve(ROOT / recipe, overrides), None, record["device"])
    measured = record["measured_bytes"]
    return {
        **record,
        "planned_bytes": p.total,
        "error": (p.total - measured) / measured,
        "components": {k: v for k, v in p.components.items() if not k.endswith("detail")},
    }


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| model | strategy | batch x length | device | precision | overrides | planned "
        "| measured | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['batch_size']} x {r['seq_len']} "
            f"| {r['device']} | {r.get('precision', 'fp32')} | {' '.join(r.get('overrides', []))} "
            f"| {r['planned_bytes'] / 2**20:,.1f} MiB "
            f"| {r['measured_bytes'] / 2**20:,.1f} MiB | {r['error']:+.1%} |"
        )
    if records:
        worst = max(records, key=lambda r: abs(r["error"]))
        lines.append(
            f"\nWorst error: {worst['error']:+.1%} ({worst['model']} {worst['strategy']} "
            f"{worst['batch_size']} x {worst['seq_len']}), over {len(records)} points."
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--points", nargs="+", help="BATCHxLENGTH, e.g. 8x64 (default: 3 each)")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/plan")
    parser.add_argument("--model-path", action="append", default=[], metavar="MODEL=DIR")
    parser.add_argument("--jobs", type=int, default=1, help="points at once (CUDA only)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="extra recipe override for every run (e.g. train.release_memory=true); recorded",
    )  # fmt: skip
    parser.add_argument(
        "--replan", action="store_true",
        help="keep OUT/results.json's measurements, recompute every plan with the current code",
    )  # fmt: skip
    parser.add_argument("--measure-runtime", action="store_true")
    args = parser.parse_args()
    if args.measure_runtime:
        print(f"runtime RSS: {measure_runtime()} bytes")
        return 0
    if args.replan:
        records = [replan(r) for r in json.loads((args.out / "results.json").read_text())]
        (args.out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
        (args.out / "results.md").write_text(table(records))
        print(table(records))
        return 0
    paths = dict(item.split("=", 1) for item in args.model_path)
    jobs = []
    for model in args.models:
        points = MODELS[model]["points"]
        if args.points:
            points = [tuple(int(x) for x in p.split("x")) for p in args.points]
        jobs += [(model, s, b, n) for s in args.strategies for b, n in points]
    args.out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    failed = 0
    with (
        tempfile.TemporaryDirectory(prefix="plan-vs-measured-") as tmp,
        ThreadPoolExecutor(max_workers=args.jobs) as pool,
    ):
        futures = [
            pool.submit(
                run_point,
                m,
                s,
                b,
                n,
                args.max_steps,
                Path(tmp),
                paths.get(m),
                (f"train.precision={args.precision}", *args.set),
            )
            for m, s, b, n in jobs
        ]
        for fut in futures:  # in grid order, each written as soon as it is in
            try:
                rec = fut.result()
            except Exception as exc:  # report it, keep the other points
                print(exc, file=sys.stderr, flush=True)
                failed += 1
                continue
            print(
                json.dumps({k: rec[k] for k in ("model", "strategy", "seq_len", "error")}),
                flush=True,
            )
            records.append(rec)
            (args.out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
            (args.out / "results.md").write_text(table(records))
    print(table(records))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
