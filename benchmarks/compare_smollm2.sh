#!/usr/bin/env bash
# Instruction tuning on the embedded SmolLM2-135M: every built-in strategy, same recipe, 8 steps
# (CPU-sized), eval on 16 held-out rows. Output: benchmarks/results/compare-smollm2/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m adapterkit compare recipes/smollm2/lora.yaml \
    --strategies full,head,last_n,lora,qlora \
    train.max_steps=8 data.max_eval_rows=16 train.eval_every=null \
    --out benchmarks/results/compare-smollm2 --no-progress "$@"
