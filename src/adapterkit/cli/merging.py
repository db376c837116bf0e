"""`adapterkit merge`: an adapter merged into its base as a Hugging Face model directory, verified."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option(
    "--adapter",
    type=click.Path(path_type=Path),
    required=True,
    help="The run or adapter directory.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="The new model directory."
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="dtype of the written weights (the merge itself is float32).",
)
@click.option(
    "--base",
    type=click.Choice(["dequantized", "original"]),
    default="dequantized",
    show_default=True,
    help="Merge into the weights the adapter trained on (a 4-bit base dequantized), or into the "
    "checkpoint's own full-precision weights.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Held-out rows to verify on, in the task's format [the run's eval data].",
)
@click.option("--max-rows", type=int, default=64, show_default=True, help="Rows verified on.")
@click.option("--force", is_flag=True, help="Keep the output even when verification fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the verification report as JSON.")
def merge(
    adapter: Path,
    out: Path,
    dtype: str,
    base: str,
    data: Path | None,
    max_rows: int,
    force: bool,
    as_json: bool,
) -> None:
    """Merge an adapter into its base model and write a plain Hugging Face model directory
    (safetensors, config with the labels, tokenizer and chat template, generation config),
    verified against base + adapter on held-out rows: verify.json beside it; exit status 2 when
    the merged model is off by more than its dtype's tolerance (nothing is written unless
    --force)."""
    from adapterkit.export import verify
    from adapterkit.export.merge import merge as merge_adapter
    from adapterkit.storage.atomic import json_safe

    report = merge_adapter(
        adapter, out, dtype=dtype, base=base, data=data, max_rows=max_rows, force=force
    )
    if as_json:
        click.echo(json.dumps(json_safe(report), indent=2, default=str))
    else:
        click.echo(verify.summary(report))
    if not report["passed"]:
        click.echo(f"warning: {out} kept although its verification failed (--force)", err=True)
