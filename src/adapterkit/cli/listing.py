"""Listing what is installed: strategies, tasks, plugins; checking recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from adapterkit.errors import UserError

if TYPE_CHECKING:
    from adapterkit.registry import Kind, Registry


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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def strategies(as_json: bool) -> None:
    """List registered strategies with their options (type, default, help)."""
    _list("strategy", as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tasks(as_json: bool) -> None:
    """List registered tasks with their options (type, default, help)."""
    _list("task", as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins: name, distribution, version, hooks."""
    rows = [dict(vars(p)) for p in _registry().plugins]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for p in rows:
        click.echo(f"{p['name']}  {p['distribution']} {p['version']}  {', '.join(p['hooks'])}")


@click.group()
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
