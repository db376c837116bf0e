"""The machine's matmul peaks and the fp32 reference first-step loss, in a fresh child process.

    PYTHONPATH=benchmarks .venv/bin/python -m peers.calibrate --out FILE.json [--threads N]
        [--model-path DIR --first-batch FILE.jsonl]

Peaks: the best of repeated square `torch.mm` products (2048 and 4096 a side, each timed for about
a second after a warm-up), in float32 and in bfloat16, with the thread count the runs use. That
is the dense-GEMM ceiling MFU is measured against, on this machine, in this run.

Reference loss: the base model in float32 (no autocast), the first step's 8 examples right-padded,
the summed cross entropy over the shifted targets divided by their count. LoRA starts with B = 0,
so every correct LoRA or full fine-tuning run's first-step loss is this figure, up to summation
order in fp32 (qlora's NF4 base differs, so it has no reference here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from peers import common


def gemm_peak_gflops(dtype_name: str, sizes: tuple[int, ...] = (2048, 4096)) -> dict:
    """Best GFLOP/s of `torch.mm` over `sizes`, about a second of repeats each."""
    import torch

    dtype = getattr(torch, dtype_name)
    best: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=c)  # warm-up: oneDNN/MKL primitive creation, first touch
        fastest, until, reps = float("inf"), time.perf_counter() + 1.0, 0
        while time.perf_counter() < until or reps < 3:
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            fastest, reps = min(fastest, time.perf_counter() - t0), reps + 1
        best[str(n)] = 2 * n**3 / fastest / 1e9
    return {"gflops": max(best.values()), "by_size": best}


def reference_loss(model_path: str, first_batch: str) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    batch = common.pad(common.read_jsonl(first_batch))
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
    labels = batch["labels"][:, 1:]
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
    total = F.cross_entropy(flat, labels.reshape(-1), reduction="sum")
    targets = int((labels != common.IGNORE).sum())
    return {"first_step_loss": float(total) / targets, "targets": targets}


def main(argv: list[str] | None = None) -> dict:
    common.offline()
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-path")
    parser.add_argument("--first-batch")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    import torch

    result: dict = {"threads": torch.get_num_threads()}
    result["peak_fp32"] = gemm_peak_gflops("float32")
    result["peak_bf16"] = gemm_peak_gflops("bfloat16")
    if args.model_path and args.first_batch:
        result["reference"] = reference_loss(args.model_path, args.first_batch)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
