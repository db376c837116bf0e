"""Hyperparameter search: `sweep`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from adapterkit.errors import UserError


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option(
    "--space",
    "space",
    multiple=True,
    required=True,
    metavar="KEY=SPEC",
    help="A recipe key and its range, repeatable: 'train.lr=log(1e-5,1e-3)', "
    "'train.epochs=int(1,3)', 'train.weight_decay=float(0,0.1)', "
    "'strategy.options.r=choice(4,8,16)' (quote them for the shell).",
)
@click.option("--trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Trials in all (with --resume: the total, old ones included).")  # fmt: skip
@click.option("--budget", help="Refuse trials the plan says need more memory, e.g. 8GiB.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trial processes at once.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), help="[runs/sweep-<recipe>].")
@click.option("--resume", is_flag=True, help="Continue the sweep in --out (same recipe and space).")
@click.option("--seed", type=int, default=0, show_default=True, help="The sampler's seed.")
@click.option(
    "--no-baseline", is_flag=True, help="Do not run the recipe's own values as the first trial."
)
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json, not the table.")
@click.option("--no-progress", is_flag=True, help="No line per trial on stderr.")
def sweep(recipe: Path, overrides: tuple[str, ...], **options: Any) -> None:
    """Search RECIPE's settings with Optuna; each trial is its own `adapterkit train` process.

    OVERRIDES (section.key=value) apply to every trial. Trials are selected on the eval data
    (data.eval or data.holdout) alone; the selected adapter goes to OUT/best and is scored once
    on data.test. OUT holds study.db (resume with --resume), sweep.md, sweep.json, the trials'
    runs and plots. The exit status is 2 when no trial completed.
    """
    from adapterkit.search.run import sweep as run_sweep
    from adapterkit.search.select import BEST

    out: Path = options["out"] or Path("runs") / f"sweep-{recipe.stem}"
    doc = run_sweep(
        recipe,
        list(options["space"]),
        trials=options["trials"],
        out=out,
        budget=options["budget"],
        jobs=options["jobs"],
        resume=options["resume"],
        seed=options["seed"],
        overrides=list(overrides),
        use_baseline=not options["no_baseline"],
        progress=not options["no_progress"],
    )
    if options["as_json"]:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        click.echo((out / "sweep.md").read_text().rstrip("\n"))
    if doc["best"] is None:
        raise UserError(f"no trial completed; see the table and {out}/logs/")
    click.echo(f"selected adapter: {out / BEST}", err=True)
