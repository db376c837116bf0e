"""Training and its planning: `train`, `compare`, `plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import click

from adapterkit import units
from adapterkit.errors import UserError


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), help="Output directory [runs/<recipe>].")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in --out.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its latest checkpoint (same recipe; only "
    "train.max_steps and train.log_with may change).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still written).")
@click.option(
    "--num-processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel processes on this machine (torch elastic; one GPU each, or CPU). "
    "The global batch is batch_size x grad_accum x processes (docs/distributed.md).",
)
def train(
    recipe: Path,
    overrides: tuple[str, ...],
    out: Path | None,
    overwrite: bool,
    resume: bool,
    no_progress: bool,
    num_processes: int,
) -> None:
    """Fine-tune as RECIPE says; OVERRIDES are section.key=value (e.g. train.max_steps=10).

    Ctrl-C or SIGTERM finishes the current step, writes a checkpoint, and prints the command
    that resumes the run. Under a launcher (`accelerate launch -m adapterkit train ...`,
    torchrun) every process trains its share of each step; only the main one writes.
    """
    import shlex

    from adapterkit import api
    from adapterkit.recipe import resolve
    from adapterkit.training import distributed

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one of them")
    resolved = resolve(recipe, overrides)
    out = out or Path("runs") / recipe.stem
    if num_processes > 1 and distributed.world_size() == 1:  # launch them; each runs this again
        flags = ["--overwrite"] * overwrite + ["--resume"] * resume
        flags += ["--no-progress"] * no_progress
        argv = ["train", str(recipe), *overrides, "--out", str(out), *flags]
        distributed.launch(num_processes, argv)
        return
    again = ["adapterkit", "train", str(recipe), *overrides, "--out", str(out), "--resume"]
    if distributed.world_size() > 1:
        again += ["--num-processes", str(distributed.world_size())]
    metrics = api.train(
        resolved,
        out,
        progress=not no_progress,
        overwrite=overwrite,
        resume=resume,
        resume_hint=shlex.join(again),
    )
    if distributed.is_main_process():
        click.echo(api.summary(metrics, out))


@click.command()
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
@click.option(
    "--tune",
    type=click.IntRange(min=1),
    help="Sweep each strategy first (N trials, selected on the eval data) and compare them at "
    "their selected settings [no sweep].",
)
@click.option(
    "--tune-space",
    multiple=True,
    metavar="KEY=SPEC",
    help="With --tune: what to search, as `sweep --space` [train.lr=log(lr/10,lr*3), around "
    "each strategy's recipe value].",
)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --tune: trial processes at once.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="With --tune: sampler seed.")
def compare(
    recipe: Path,
    overrides: tuple[str, ...],
    strategies: str | None,
    out: Path | None,
    as_json: bool,
    memory_limit: str | None,
    no_progress: bool,
    **tuning: Any,
) -> None:
    """Train RECIPE once per strategy, each in its own process; print a comparison table.

    OVERRIDES are section.key=value for every run, or <strategy>.<option>=value for one (lora.r=16).
    A failed run keeps its row with the reason; the exit status is 2 only when every run failed.
    With --tune N each strategy is first swept (`adapterkit sweep`, in OUT/tune/<strategy>/) and
    its row is its selected trial; the table says which settings each row used.
    """
    from adapterkit.comparison import runs

    limit = units.parse_size(memory_limit, "--memory-limit") if memory_limit else None
    _check_tuning(tuning, limit)
    if strategies is None:
        from adapterkit.plugins import load_registry

        strategies = ",".join(load_registry().names("strategy"))
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    out = out or Path("runs") / f"compare-{recipe.stem}"
    if tuning["tune"]:
        from adapterkit.comparison import tuned

        rows = tuned.run(
            recipe,
            names,
            list(overrides),
            out,
            trials=tuning["tune"],
            space=list(tuning["tune_space"]),
            jobs=tuning["jobs"],
            seed=tuning["seed"],
            progress=not no_progress,
        )
    else:
        rows = runs.run(recipe, names, list(overrides), out, not no_progress, limit)
    text = json.dumps(rows, indent=2, default=str) if as_json else runs.markdown_table(rows)
    click.echo(text.rstrip("\n"))
    if all(r["error"] for r in rows):
        raise UserError(f"every run failed; see the table and {out}/logs/")


def _check_tuning(tuning: dict[str, Any], memory_limit: int | None) -> None:
    """--tune-space, --jobs and --seed belong to --tune; --memory-limit does not combine with it."""
    if tuning["tune"]:
        if memory_limit is not None:
            raise UserError("--memory-limit does not combine with --tune (a sweep has --budget)")
        return
    given = [f"--{k.replace('_', '-')}" for k in ("tune_space",) if tuning[k]]
    given += ["--jobs"] * (tuning["jobs"] != 1) + ["--seed"] * (tuning["seed"] != 0)
    if given:
        raise UserError(f"{', '.join(given)}: only with --tune N")


@click.command()
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
    from adapterkit.planning import memory, report
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
