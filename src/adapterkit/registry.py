"""Strategies and tasks, keyed by the name their class declares.

Filled once by `plugins.load_registry()`; a second registration of a name is an error naming both
plugins. Look-ups of unknown names suggest the closest registered one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from adapterkit.errors import PluginError, UserError
from adapterkit.options import closest
from adapterkit.strategy import Strategy
from adapterkit.task import Task

Kind = Literal["strategy", "task"]


def protocol_members(protocol: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attributes, methods) a Protocol class declares: its annotations, and the functions in its
    body. Optional members are not declared there (see strategy.py and task.py), so these are
    exactly what a plugin class must have."""
    attributes = tuple(vars(protocol).get("__annotations__", {}))
    methods = tuple(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_"))
    return attributes, methods


_PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "strategy": protocol_members(Strategy),
    "task": protocol_members(Task),
}

# Members each kind of class must have (checked at registration, so a broken plugin fails at load).
REQUIRED: dict[str, tuple[str, ...]] = {k: a + m for k, (a, m) in _PROTOCOLS.items()}


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"plugin '{self.name}' ({self.distribution} {self.version})"


@dataclasses.dataclass
class Registry:
    classes: dict[Kind, dict[str, type]] = dataclasses.field(
        default_factory=lambda: {"strategy": {}, "task": {}}
    )
    owners: dict[tuple[Kind, str], PluginInfo] = dataclasses.field(default_factory=dict)
    plugins: list[PluginInfo] = dataclasses.field(default_factory=list)

    def add(self, kind: Kind, cls: Any, plugin: PluginInfo) -> None:
        """Register `cls`; raise PluginError naming `plugin` if it is invalid or its name is taken."""
        problems = _protocol_problems(kind, cls)
        if problems:
            raise PluginError(
                f"{plugin} registered {kind} {getattr(cls, '__name__', cls)!r}, which does not "
                f"meet the {kind} protocol: {'; '.join(problems)}"
            )
        name = cls.name
        if name in self.classes[kind]:
            raise PluginError(
                f"{kind} name '{name}' is registered twice: by {self.owners[(kind, name)]} "
                f"and by {plugin}; uninstall one or block it with ADAPTERKIT_DISABLE_PLUGINS"
            )
        self.classes[kind][name] = cls
        self.owners[(kind, name)] = plugin

    def get(self, kind: Kind, name: str) -> Any:
        """An instance of the registered class, or a UserError suggesting the closest name."""
        table = self.classes[kind]
        if name not in table:
            raise UserError(
                f"unknown {kind} '{name}'{closest(name, table)}; "
                f"available: {', '.join(sorted(table)) or 'none'}"
            )
        return table[name]()

    def strategy(self, name: str) -> Strategy:
        return self.get("strategy", name)

    def task(self, name: str) -> Task:
        return self.get("task", name)

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.classes[kind])


def _protocol_problems(kind: Kind, cls: Any) -> list[str]:
    if not isinstance(cls, type):
        return [f"expected a class, got {type(cls).__name__}"]
    problems = [f"missing '{m}'" for m in REQUIRED[kind] if not hasattr(cls, m)]
    name = getattr(cls, "name", None)
    if hasattr(cls, "name") and (not isinstance(name, str) or not name.strip()):
        problems.append("'name' must be a non-empty string")
    options = getattr(cls, "Options", None)
    if options is not None and not dataclasses.is_dataclass(options):
        problems.append("'Options' must be a dataclass")
    for member in _PROTOCOLS[kind][1]:
        if hasattr(cls, member) and not callable(getattr(cls, member)):
            problems.append(f"'{member}' must be a method")
    return problems
