"""Where a training step's peak memory goes: the tensors alive at the peak, grouped by where they
were allocated. The diagnostic behind `plan`'s component formulas.

    .venv/bin/python benchmarks/plan_trace.py MODEL STRATEGY BATCH LENGTH [--model-path DIR]
        [--steps 2] [--out FILE.json]

MODEL is `smollm2` or `minilm` (the same recipes and long rows as plan_vs_measured.py). It runs
the real trainer in this process for `--steps` steps (fp32, no eval) and records every allocation:

- on CUDA with `torch.cuda.memory._record_memory_history` (the caching allocator's own trace, so
  the peak is the one `max_memory_allocated` reports, rounded blocks and cuBLAS workspaces in);
- on CPU with `torch.profiler`'s memory timeline (tensor storages only, from the first gradient
  on: what the C allocator keeps on top, and the runtime, are not in it), grouped by the
  profiler's categories (it records no Python frames per allocation there).

At the peak, live bytes are grouped by the innermost Python frame outside torch (for an op run
by the autograd engine in backward there is none: those are grouped as "backward"). The plan for
the same point is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plan_vs_measured as pvm

_MiB = 2**20


def _label(frames: list[dict]) -> str:
    for f in frames:  # innermost first
        name = f.get("filename", "")
        if "/torch/" not in name and name and not name.startswith("<"):
            short = "/".join(name.split("/")[-2:])
            return f"{short}:{f.get('line')} {f.get('name')}"
    return "backward" if frames else "no python frame"


def _cuda_peak(run: Callable[[], None]) -> tuple[int, int, Counter]:
    import torch

    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    torch.cuda.reset_peak_memory_stats()
    run()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    live: dict[int, tuple[int, str]] = {}
    cur = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for ev in snap["device_traces"][0]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = (ev["size"], _label(ev.get("frames", [])))
            cur += ev["size"]
            if cur > peak:
                peak, at_peak = cur, dict(live)
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])[0]
    groups: Counter = Counter()
    for size, label in at_peak.values():
        groups[label] += size
    return base + peak, int(torch.cuda.max_memory_allocated()), groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(pvm.MODELS))
    parser.add_argument("strategy")
    parser.add_argument("batch", type=int)
    parser.add_argument("length", type=int)
    parser.add_argument("--model-path")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from adapterkit import api
    from adapterkit.planning.memory import from_recipe
    from adapterkit.recipe import resolve

    work = Path(tempfile.mkdtemp(prefix="plan-trace-"))
    suffix = ".tsv" if args.model == "minilm" else ".jsonl"
    data = pvm.long_rows(args.model, args.batch * args.steps, work / f"train{suffix}")
    overrides = [
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
        f"task.options.max_length={args.length}", f"data.train={data}", "data.eval=null",
        "train.eval_every=null", "train.gradient_checkpointing=false", "train.precision=fp32",
    ]  # fmt: skip
    if args.model == "minilm":
        overrides += ["data.holdout=null", "data.test=null"]
    if args.model_path:
        overrides.append(f"model.name={args.model_path}")
    recipe_path = pvm.ROOT / pvm.MODELS[args.model]["recipe"].format(strategy=args.strategy)
    recipe = resolve(recipe_path, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (plan,) = from_recipe(recipe, None, device)

    def run() -> None:
        api.train(recipe, work / "out", progress=False)

    if device == "cuda":
        traced_peak, allocator_peak, groups = _cuda_peak(run)
    else:
        traced_peak, allocator_peak, groups = _cpu_peak(run)
    result = {
        "point": f"{args.model} {args.strategy} {args.batch}x{args.length}",
        "device": device,
        "traced_peak_MiB": round(traced_peak / _MiB, 1),
        "allocator_peak_MiB": round(allocator_peak / _MiB, 1) if allocator_peak else None,
        "plan_total_MiB": round(plan.total / _MiB, 1),
        "plan_MiB": {
            k: round(v / _MiB, 1) for k, v in plan.components.items() if isinstance(v, int)
        },
        "live_at_peak_MiB": {k: round(v / _MiB, 2) for k, v in groups.most_common(25)},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def _cpu_peak(run: Callable[[], None]) -> tuple[int, int, Counter]:
    from adapterkit.testing import profiled_tensor_peak

    peak, groups = profiled_tensor_peak(run, preexisting=True, from_first_gradient=True)
    return peak, 0, groups


if __name__ == "__main__":
    raise SystemExit(main())
