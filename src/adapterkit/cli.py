"""The `adapterkit` command: a thin click layer over api.py.

Heavy libraries load inside commands, so `adapterkit --help` and the listing commands stay instant.
User errors (adapterkit.errors.UserError) print one message and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from adapterkit import units
from adapterkit.errors import UserError

if TYPE_CHECKING:
    from adapterkit.registry import Kind, Registry


class _Group(click.Group):
    """Turns UserError into a short message and its exit status (2; 128 + signal for a run stopped
    by SIGINT/SIGTERM); a traceback only with --debug. A Ctrl-C outside training (loading, say)
    exits 130 with one line, as shells expect."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.meta.get("adapterkit.debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.meta.get("adapterkit.debug"):
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for user errors.")
@click.version_option(package_name="adapterkit")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune language models with interchangeable, pluggable strategies.

    Start with `adapterkit train recipes/smollm2/lora.yaml`; list what is installed with
    `adapterkit strategies`, `adapterkit tasks` and `adapterkit plugins`.
    """
    ctx.meta["adapterkit.debug"] = debug


def _registry() -> Registry:
    from adapterkit.plugins import load_registry

    return load_registry()


def _option_rows(cls: type) -> list[dict[str, Any]]:
    from adapterkit.options import describe

    return [dict(vars(o)) for o in describe(cls.Options)]


def _list(kind: Kind, as_json: bool) -> None:
    reg = _registry()
    items = []
    for name in reg.names(kind):
        cls = reg.classes[kind][name]
        owner = reg.owners[(kind, name)]
        items.append(
            {
                "name": name,
                "description": getattr(cls, "description", "") or (cls.__doc__ or "").strip(),
                "plugin": owner.name,
                "distribution": owner.distribution,
                "options": _option_rows(cls),
            }
        )
    if as_json:
        click.echo(json.dumps(items, indent=2, default=str))
        return
    for item in items:
        click.secho(item["name"], bold=True, nl=False)
        click.echo(f"  ({item['distribution']})  {(item['description'].splitlines() or [''])[0]}")
        for o in item["options"]:
            click.echo(f"    {o['name']}: {o['type']} = {o['default']!r}  {o['help']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def strategies(as_json: bool) -> None:
    """List registered strategies with their options (type, default, help)."""
    _list("strategy", as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tasks(as_json: bool) -> None:
    """List registered tasks with their options (type, default, help)."""
    _list("task", as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins: name, distribution, version, hooks."""
    rows = [dict(vars(p)) for p in _registry().plugins]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for p in rows:
        click.echo(f"{p['name']}  {p['distribution']} {p['version']}  {', '.join(p['hooks'])}")


@cli.group()
def recipes() -> None:
    """Work with recipe files."""


@recipes.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def recipes_validate(paths: tuple[Path, ...]) -> None:
    """Check recipes without loading any model; report every problem of every file."""
    from adapterkit.recipe import resolve

    failed = []
    for path in paths:
        try:
            resolve(path)
            click.echo(f"ok  {path}")
        except UserError as exc:
            failed.append(str(exc))
    if failed:
        raise UserError("\n".join(failed))


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), help="Output directory [runs/<recipe>].")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in --out.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its latest checkpoint (same recipe; only "
    "train.max_steps may change).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still written).")
def train(
    recipe: Path,
    overrides: tuple[str, ...],
    out: Path | None,
    overwrite: bool,
    resume: bool,
    no_progress: bool,
) -> None:
    """Fine-tune as RECIPE says; OVERRIDES are section.key=value (e.g. train.max_steps=10).

    Ctrl-C or SIGTERM finishes the current step, writes a checkpoint, and prints the command
    that resumes the run.
    """
    import shlex

    from adapterkit import api
    from adapterkit.recipe import resolve

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one of them")
    resolved = resolve(recipe, overrides)
    out = out or Path("runs") / recipe.stem
    again = ["adapterkit", "train", str(recipe), *overrides, "--out", str(out), "--resume"]
    metrics = api.train(
        resolved,
        out,
        progress=not no_progress,
        overwrite=overwrite,
        resume=resume,
        resume_hint=shlex.join(again),
    )
    click.echo(api.summary(metrics, out))


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option(
    "--strategies",
    help="Comma-separated strategies to run, in this order [every registered one, by name].",
)
@click.option("--out", type=click.Path(path_type=Path), help="[runs/compare-<recipe>].")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON, not a table.")
@click.option("--memory-limit", help="Cap each run's address space, e.g. 4GiB (RLIMIT_AS).")
@click.option("--no-progress", is_flag=True, help="No per-run output (logs still written).")
def compare(
    recipe: Path,
    overrides: tuple[str, ...],
    strategies: str | None,
    out: Path | None,
    as_json: bool,
    memory_limit: str | None,
    no_progress: bool,
) -> None:
    """Train RECIPE once per strategy, each in its own process; print a comparison table.

    OVERRIDES are section.key=value for every run, or <strategy>.<option>=value for one (lora.r=16).
    A failed run keeps its row with the reason; the exit status is 2 only when every run failed.
    """
    from adapterkit.compare import runs

    limit = units.parse_size(memory_limit, "--memory-limit") if memory_limit else None
    if strategies is None:
        from adapterkit.plugins import load_registry

        strategies = ",".join(load_registry().names("strategy"))
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    out = out or Path("runs") / f"compare-{recipe.stem}"
    rows = runs.run(recipe, names, list(overrides), out, not no_progress, limit)
    text = json.dumps(rows, indent=2, default=str) if as_json else runs.markdown_table(rows)
    click.echo(text.rstrip("\n"))
    if all(r["error"] for r in rows):
        raise UserError(f"every run failed; see the table and {out}/logs/")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--strategies", help="Comma-separated strategies to plan [the recipe's own].")
@click.option("--budget", help="Memory budget, e.g. 24GiB: says what fits and the largest batch.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[cuda if present, else cpu]")
@click.option("--model", help="Plan another model: a config.json, a directory or a short name.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    help="Plan this train.precision [the recipe's, resolved as `train` resolves it].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(
    recipe: Path,
    overrides: tuple[str, ...],
    strategies: str | None,
    budget: str | None,
    device: Literal["cpu", "cuda"] | None,
    model: str | None,
    precision: str | None,
    as_json: bool,
) -> None:
    """Estimate training memory per strategy from the model's config alone (no weights read)."""
    from adapterkit.api import quiet_known_notices
    from adapterkit.plan import memory, report
    from adapterkit.recipe import resolve

    quiet_known_notices()
    extra = [f"model.name={model}"] if model else []
    extra += [f"train.precision={precision}"] if precision else []
    resolved = resolve(recipe, [*overrides, *extra])
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    plans = memory.from_recipe(resolved, names, device)
    if as_json:
        click.echo(report.to_json(plans))
    else:
        click.echo(
            report.format_table(plans, units.parse_size(budget, "--budget") if budget else None)
        )


@cli.command("eval")
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


@cli.command()
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


@cli.command()
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


def _add_plugin_commands() -> None:
    """Let plugins add commands (the register_commands hook)."""
    from adapterkit.plugins import plugin_manager

    plugin_manager().hook.register_commands(cli=cli)


def main() -> None:
    try:
        _add_plugin_commands()
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    cli()


if __name__ == "__main__":
    main()
