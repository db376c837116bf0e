"""Using a trained adapter: `eval`, `predict`, `generate`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapterkit.errors import UserError


@click.command("eval")
@click.option("--adapter", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_(adapter: Path, data: Path, batch_size: int, as_json: bool) -> None:
    """Score an adapter on a data file in its task's format; print the task's metrics."""
    from adapterkit import api

    metrics = api.evaluate(adapter, data, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            click.echo(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")


@click.command()
@click.option("--adapter", type=click.Path(path_type=Path), required=True)
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Write JSON lines here [stdout].")
@click.option("--batch-size", type=int, default=32, show_default=True)
def predict(adapter: Path, data: Path, out: Path | None, batch_size: int) -> None:
    """Label each row of DATA (or tag each word), in the adapter's training format; labels optional."""
    from adapterkit import api

    rows = api.predict(adapter, data, batch_size=batch_size)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out is None:
        click.echo(text, nl=False)
        return
    from adapterkit.storage.atomic import write_text_atomic

    write_text_atomic(out, text)  # never leave a half-written file under the real name
    click.echo(f"{len(rows)} predictions written to {out}", err=True)


@click.command()
@click.argument("prompt")
@click.option("--adapter", type=click.Path(path_type=Path), help="Adapter directory.")
@click.option("--model", help="Base model without an adapter (short name or path).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option(
    "--task", "task", help="With --model: the registered task to prompt it as; "
    "needed when several tasks generate.",
)  # fmt: skip
def generate(
    prompt: str, adapter: Path | None, model: str | None, max_new_tokens: int, task: str | None
) -> None:
    """Generate from PROMPT with an adapter (in its training format) or a bare model."""
    from adapterkit import api

    if (adapter is None) == (model is None):
        raise UserError("give exactly one of --adapter DIR or --model NAME")
    if adapter is not None and task is not None:
        raise UserError("--task goes with --model; an adapter knows its task")
    text = api.generate(
        prompt, adapter=adapter, model=model, max_new_tokens=max_new_tokens, task=task
    )
    click.echo(text)
