"""Using a trained adapter: `eval`, `predict`, `generate`."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

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


F = TypeVar("F", bound=Callable[..., Any])
_SETTINGS = ("max_new_tokens", "batch_size", "temperature", "top_p", "seed")


def _generation_options(batch_size: int, max_new_tokens: int | None) -> Callable[[F], F]:
    """The generation flags, handed to the command as one `settings` (sampling.Settings, checked:
    a bad value exits 2 before any model loads)."""
    tokens_help = "Most tokens generated per output" + (
        "." if max_new_tokens else " [the task's own max_new_tokens]."
    )
    flags = [
        click.option(
            "--max-new-tokens", type=int, default=max_new_tokens, show_default=True, help=tokens_help
        ),
        click.option(
            "--batch-size", type=int, default=batch_size, show_default=True,
            help="Prompts (rows) generated at once.",
        ),
        click.option(
            "--temperature", type=float, default=0.0, show_default=True,
            help="0: greedy (the task's search); above 0: sampling at this temperature.",
        ),
        click.option(
            "--top-p", type=float, default=1.0, show_default=True,
            help="Sampling: draw from the smallest set of tokens with this much probability.",
        ),
        click.option(
            "--seed", type=int, default=None,
            help="Sampling: the same seed gives the same outputs, whatever --batch-size "
            "[a fresh one, printed].",
        ),
    ]  # fmt: skip

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            from adapterkit.sampling import Settings

            settings = Settings(**{k: kwargs.pop(k) for k in _SETTINGS})
            if settings.sampling and settings.seed is None:
                settings = settings.resolved()
                click.echo(f"sampling with seed {settings.seed} (--seed repeats it)", err=True)
            return fn(settings=settings, **kwargs)

        for flag in reversed(flags):
            command = flag(command)
        return cast(F, command)

    return decorate


def _emit(rows: list[dict[str, Any]], out: Path | None, what: str) -> None:
    """JSON lines to stdout, or written atomically to `out`."""
    from adapterkit import generating

    if out is None:
        click.echo(generating.jsonl_text(rows), nl=False)
        return
    generating.write_jsonl(out, rows)  # never a half-written file under the real name
    click.echo(f"{len(rows)} {what} written to {out}", err=True)


@click.command()
@click.option("--adapter", type=click.Path(path_type=Path), required=True)
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Write JSON lines here [stdout].")
@_generation_options(batch_size=32, max_new_tokens=None)
def predict(adapter: Path, data: Path, out: Path | None, settings: Any) -> None:
    """Predict for each row of DATA, in the adapter's training format (labels optional): a label
    or tags, or for a task that generates, the output (greedy or sampled) beside the row's prompt
    and reference."""
    from adapterkit import generating

    if out is not None:
        generating.check_out(out)
    rows = generating.predict(adapter, data, settings)
    _emit(rows, out, "predictions")


@click.command()
@click.argument("prompt", required=False)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="A file of prompts instead of PROMPT: one a line, or a .jsonl file of "
    '{"prompt": ...} objects; - reads lines from stdin. Writes JSON lines.',
)
@click.option("--adapter", type=click.Path(path_type=Path), help="Adapter directory.")
@click.option("--model", help="Base model without an adapter (short name or path).")
@click.option(
    "--task",
    "task",
    help="With --model: the registered task to prompt it as; needed when several tasks generate.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help='Write JSON lines {"prompt", "output"} here [stdout].',
)
@_generation_options(batch_size=8, max_new_tokens=128)
def generate(
    prompt: str | None,
    prompts_file: Path | None,
    adapter: Path | None,
    model: str | None,
    task: str | None,
    out: Path | None,
    settings: Any,
) -> None:
    """Generate from PROMPT (or each of --prompts) with an adapter, in its training format, or a
    bare model; greedy unless --temperature is above 0. Outputs keep the prompts' order."""
    from adapterkit import generating

    if (adapter is None) == (model is None):
        raise UserError("give exactly one of --adapter DIR or --model NAME")
    if adapter is not None and task is not None:
        raise UserError("--task goes with --model; an adapter knows its task")
    if out is not None:
        generating.check_out(out)
    if prompt is not None and prompts_file is None:
        prompts = [prompt]
    elif prompt is None and prompts_file is not None:
        prompts = _read_prompts(prompts_file)
    else:
        raise UserError("give a PROMPT or --prompts FILE (one prompt a line; - for stdin)")
    texts = generating.generate(prompts, adapter, model, task, settings)
    if prompt is not None and out is None:
        click.echo(texts[0])
        return
    rows = [{"prompt": p, "output": t} for p, t in zip(prompts, texts, strict=True)]
    _emit(rows, out, "outputs")


def _read_prompts(path: Path) -> list[str]:
    """The prompts of --prompts: a file, or the lines of stdin for `-`."""
    from adapterkit import generating

    if str(path) != "-":
        return generating.read_prompts(path)
    return generating.parse_prompts(sys.stdin.read(), "<stdin>")
