"""The `adapterkit` command: a thin click layer over api.py, one module per group of commands.

Heavy libraries load inside commands, so `adapterkit --help` and the listing commands stay instant.
User errors (adapterkit.errors.UserError) print one message and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import sys

import click

from adapterkit.cli import exporting, inspecting, listing, merging, sweeping, training, using
from adapterkit.cli._group import cli
from adapterkit.errors import UserError

__all__ = ["cli", "main"]

for _command in (
    listing.strategies,
    listing.tasks,
    listing.plugins,
    listing.recipes,
    training.train,
    training.compare,
    sweeping.sweep,
    training.plan,
    using.eval_,
    using.predict,
    using.generate,
    inspecting.inspect,
    exporting.export,
    merging.merge,
):
    cli.add_command(_command)


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
