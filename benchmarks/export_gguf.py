"""GGUF export of SmolLM2-135M per tensor type: file size, logit error against the source model
(max |logit diff|, mean KL per token, as `adapterkit export` verifies it) and export time.

    .venv/bin/python benchmarks/export_gguf.py [--adapter RUN_DIR] [--types f16,bf16,q8_0]
        [--out benchmarks/results/export_gguf]

Without --adapter the embedded base (`smollm2-135m`) is exported; with it, the adapter merged into
its base (`adapterkit export`'s own path: `export_gguf`, verified on the run's held-out rows plus
the sample texts). Every type is written into a scratch directory, read back by transformers'
GGUF loader and compared; the figures are the verification report's. Results go to
`<out>/results.json` and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _export(adapter: Path | None, out: Path, type_: str, base: Any) -> dict[str, Any]:
    from adapterkit.export.to_gguf import Request, export_gguf, export_model_gguf

    started = time.perf_counter()
    if adapter is not None:
        report = export_gguf(adapter, out, type=type_, force=True)  # figures even if over
    else:
        model, tokenizer = base
        request = Request(out, type_, force=True, info={"name": "smollm2-135m"})
        report = export_model_gguf(model, tokenizer, request)
    report["seconds"]["total"] = round(time.perf_counter() - started, 2)
    return report


def _base() -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from adapterkit.storage import sources

    source = sources.resolve("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32)
    return model.eval(), sources.load_tokenizer(source)


def _row(type_: str, r: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": type_,
        "bytes": r["bytes"],
        "mb": round(r["bytes"] / 1e6, 1),
        "tensor_types": r["tensor_types"],
        "q8_0_fallbacks": len(r["q8_0_fallbacks"]),
        "rows": r["logits"]["rows"],
        "held_out_rows": r["logits"]["held_out_rows"],
        "tokens": r["logits"]["tokens"],
        "max_abs_logit_diff": r["logits"]["max_abs_logit_diff"],
        "mean_kl": r["logits"]["mean_kl"],
        "tolerance": r["tolerance"],
        "content_max_abs_logit_diff": r["content"]["max_abs_logit_diff"],
        "passed": r["passed"],
        "ids_equal": r["tokenizer"]["ids_equal"],
        "chat_template_kept": r["tokenizer"]["chat_template_kept"],
        "seconds": r["seconds"],
        "merge_seconds": r.get("merge_seconds"),
    }


def _markdown(rows: list[dict[str, Any]], what: str, held_out: str, note: str = "") -> str:
    lines = [
        "# GGUF export of SmolLM2-135M",
        "",
        f"Source: {what}. Held-out rows: {held_out}. Reader: transformers' GGUF loader. "
        f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}; `benchmarks/export_gguf.py`.",
        "",
        "| type | size | tensor types | max abs logit diff (limit) | mean KL (limit) | vs rounded source | ids | template | passed | write s | verify s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tol, s = r["tolerance"], r["seconds"]
        kinds = ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items())
        lines.append(
            f"| {r['type']} | {r['mb']} MB | {kinds} | {r['max_abs_logit_diff']:.4f} "
            f"({tol['max_abs']:g}) | {r['mean_kl']:.2e} ({tol['mean_kl']:g}) | "
            f"{r['content_max_abs_logit_diff']:.1e} | {'same' if r['ids_equal'] else 'DIFFER'} | "
            f"{'kept' if r['chat_template_kept'] else 'LOST'} | {'yes' if r['passed'] else 'NO'} | "
            f"{s['write']} | {s['verify']} | {s['total']} |"
        )
    lines += [
        "",
        f"Logits compared on {rows[0]['rows']} rows ({rows[0]['tokens']} tokens) per type; "
        "1-D tensors and norms are float32 in every type, as llama.cpp writes them. "
        "'vs rounded source': max |logit diff| between the file and the source rounded to the "
        "type in memory (limit 1e-3): what the export itself adds beyond the type's rounding.",
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, help="A SmolLM2 run directory (LoRA).")
    parser.add_argument("--types", default="f16,bf16,q8_0")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/export_gguf")
    parser.add_argument("--note", default="", help="A line for results.md (how the run was made).")
    args = parser.parse_args()
    base = None if args.adapter else _base()
    rows, held_out = [], "none (sample texts only)"
    with tempfile.TemporaryDirectory(prefix="export-gguf-") as scratch:
        for type_ in args.types.split(","):
            report = _export(args.adapter, Path(scratch) / f"smollm2-{type_}.gguf", type_, base)
            held_out = report.get("held_out", held_out)
            rows.append(_row(type_, report))
            print(json.dumps(rows[-1]), flush=True)
    what = f"LoRA adapter {args.adapter} merged" if args.adapter else "the embedded base"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"source": what, "held_out": held_out, "note": args.note, "rows": rows}, indent=2
        )
        + "\n"
    )
    (args.out / "results.md").write_text(_markdown(rows, what, held_out, args.note))
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
