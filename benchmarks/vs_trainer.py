"""adapterkit against the usual hand-written Trainer + peft script, on the same settings.

    .venv/bin/python benchmarks/vs_trainer.py [--max-steps 20] [--out benchmarks/results/vs_trainer]

Both are run as sibling child processes of this script (one after the other, so they never share
the CPU): `adapterkit train recipes/smollm2/lora.yaml` with matching overrides, and
benchmarks/trainer_peft_baseline.py. Same model (embedded SmolLM2-135M), data (the first 160
shipped Alpaca rows), batch 8, max length 256, LoRA r=8 on every linear layer, lr 1e-3 cosine,
fp32. Reports tokens/s and peak memory (both measured the trainer's way) as adapterkit / baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vs_trainer")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ours, theirs = args.out / "adapterkit", args.out / "trainer_peft"
    subprocess.run(
        [
            sys.executable, "-m", "adapterkit", "train", "recipes/smollm2/lora.yaml",
            f"train.max_steps={args.max_steps}", "data.max_train_rows=160", "data.eval=null",
            "train.eval_every=null", "--out", str(ours), "--overwrite", "--no-progress",
        ],
        cwd=ROOT, check=True,
    )  # fmt: skip
    subprocess.run(
        [
            sys.executable, "benchmarks/trainer_peft_baseline.py", "--out", str(theirs),
            "--max-steps", str(args.max_steps), "--rows", "160",
        ],
        cwd=ROOT, check=True,
    )  # fmt: skip
    a = json.loads((ours / "metrics.json").read_text())
    b = json.loads((theirs / "metrics.json").read_text())
    keys = ("tokens_per_s", "peak_memory_bytes", "load_peak_memory_bytes", "tokens", "train_time_s")
    result = {
        "steps": args.max_steps,
        "adapterkit": {k: a[k] for k in keys},
        "trainer_peft": {k: b[k] for k in keys},
        "ratio_tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
        "ratio_peak_memory": a["peak_memory_bytes"] / b["peak_memory_bytes"],
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        "| | tokens/s | peak memory (training, RSS) | tokens trained |\n|---|---|---|---|\n"
        f"| adapterkit | {a['tokens_per_s']:.1f} | {a['peak_memory_bytes'] / 2**30:.2f} GiB "
        f"| {a['tokens']:,} |\n"
        f"| Trainer + peft | {b['tokens_per_s']:.1f} | {b['peak_memory_bytes'] / 2**30:.2f} GiB "
        f"| {b['tokens']:,} |\n"
        f"| ratio | {result['ratio_tokens_per_s']:.2f} | {result['ratio_peak_memory']:.2f} | |\n"
    )
    (args.out / "result.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
