"""Taking a trained adapter to another runtime: `export` (GGUF for llama.cpp and Ollama)."""

from __future__ import annotations

import json
from pathlib import Path

import click

TYPES = ("f16", "bf16", "q8_0")  # adapterkit.export.gguf.TYPES, without importing it for --help


@click.command("export")
@click.option("--adapter", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option(
    "--format", "format_", type=click.Choice(["gguf"]), required=True, help="File format."
)
@click.option(
    "--type", "type_", type=click.Choice(TYPES), default="f16", show_default=True,
    help="Tensor type of the weights (1-D tensors and norms stay float32).",
)  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The .gguf to write.")
@click.option("--ollama", is_flag=True, help="Also write a Modelfile beside it.")
@click.option(
    "--data", type=click.Path(path_type=Path),
    help="Held-out rows (the task's format) to verify on [the run's eval data].",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Keep the file even if verification fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the verification report as JSON.")
def export(
    adapter: Path,
    format_: str,
    type_: str,
    out: Path,
    ollama: bool,
    data: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Merge an adapter into its base and write one GGUF file (Llama-family causal LMs), verified
    by reading it back with transformers' GGUF loader: logits within the type's tolerance, the
    same token ids, the chat template kept. The report goes to OUT.verify.json."""
    from adapterkit.export.to_gguf import export_gguf, modelfile_path, verify_path

    del format_  # one format today; the option keeps the command open to others
    report = export_gguf(adapter, out, type=type_, ollama=ollama, force=force, data=data)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    logits, tokenizer = report["logits"], report["tokenizer"]
    verdict = "passed" if report["passed"] else "FAILED (kept: --force)"
    click.echo(f"{out}: {report['bytes'] / 1e6:.1f} MB, {type_}, {report['tensor_types']}")
    click.echo(
        f"verification {verdict}: max |logit diff| {logits['max_abs_logit_diff']:.4g} "
        f"(limit {report['tolerance']['max_abs']:g}), mean KL {logits['mean_kl']:.3g} "
        f"(limit {report['tolerance']['mean_kl']:g}) on {logits['rows']} rows; token ids "
        f"{'equal' if tokenizer['ids_equal'] else 'DIFFER'} on {tokenizer['texts']} texts; chat "
        f"template {'kept' if tokenizer['chat_template_kept'] else 'LOST'}"
    )
    click.echo(f"report: {verify_path(out)}")
    if ollama:
        click.echo(
            f"Modelfile: {modelfile_path(out)} (ollama create NAME -f {modelfile_path(out)})"
        )
