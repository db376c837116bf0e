"""The root `adapterkit` group and the error handling every command shares."""

from __future__ import annotations

import sys
from typing import Any

import click

from adapterkit.errors import UserError


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
