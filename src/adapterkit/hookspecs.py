"""Hook specifications: the whole plugin API.

A plugin is a module (or object) with functions named like these hooks, marked with
`adapterkit.hookimpl`. Each hook receives a callback and calls it once per thing it contributes:

    from adapterkit import hookimpl

    @hookimpl
    def register_strategies(register):
        register(MyStrategy)

Built-ins are registered through these same hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("adapterkit")
hookimpl = pluggy.HookimplMarker("adapterkit")


@hookspec
def register_strategies(register: Callable[[type[Any]], None]) -> None:
    """Call `register(cls)` for each fine-tuning strategy class this plugin provides.

    The class must meet `adapterkit.strategy.Strategy`: a `name`, an `Options` dataclass, and the
    methods `load_kwargs`, `apply`, `adapter_state_dict` and `load_adapter_state_dict`.
    """


@hookspec
def register_tasks(register: Callable[[type[Any]], None]) -> None:
    """Call `register(cls)` for each task class (data -> batches -> loss and metrics)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the `adapterkit` command group."""
