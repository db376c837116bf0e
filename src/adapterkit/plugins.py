"""Plugin discovery: hook specs, then built-ins, then entry points of group `adapterkit`.

Environment:
  ADAPTERKIT_PLUGINS           unset: load every installed plugin; empty: none; "a,b": only those
                               entry-point names. Built-ins always load.
  ADAPTERKIT_DISABLE_PLUGINS   "a,b": never load these entry-point names.

A plugin that fails to import, registers an invalid class, or takes a name already registered raises
PluginError naming the plugin, its distribution and version.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from importlib import import_module, metadata
from typing import Any

import pluggy

from adapterkit import __version__, hookspecs
from adapterkit.errors import PluginError
from adapterkit.registry import Kind, PluginInfo, Registry

GROUP = "adapterkit"
BUILTINS = ("adapterkit_strategies", "adapterkit.tasks")
HOOK_KINDS: dict[str, Kind] = {"register_strategies": "strategy", "register_tasks": "task"}


def _names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _wanted(entry_point_name: str) -> bool:
    only, blocked = _names("ADAPTERKIT_PLUGINS"), _names("ADAPTERKIT_DISABLE_PLUGINS") or set()
    return (only is None or entry_point_name in only) and entry_point_name not in blocked


def _entry_point_info(ep: metadata.EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?")


def get_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with built-ins registered, then the wanted installed plugins."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTINS:
        pm.register(import_module(module_name), name=module_name)
    for ep in metadata.entry_points(group=GROUP):
        if not _wanted(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"{_entry_point_info(ep)} failed to import ({ep.value}): "
                f"{type(exc).__name__}: {exc}. Fix or uninstall it, or set "
                f"ADAPTERKIT_DISABLE_PLUGINS={ep.name}"
            ) from exc
        if pm.is_registered(plugin):  # e.g. a built-in also published as an entry point
            continue
        try:
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            raise PluginError(f"{_entry_point_info(ep)} could not be registered: {exc}") from exc
    return pm


def plugin_info(pm: pluggy.PluginManager, name: str) -> PluginInfo:
    """Name, distribution, version and implemented hooks of the plugin registered as `name`."""
    plugin = pm.get_plugin(name)
    hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
    if name in BUILTINS:
        return PluginInfo(name, "adapterkit", __version__, hooks)
    for ep in metadata.entry_points(group=GROUP, name=name):
        info = _entry_point_info(ep)
        return PluginInfo(info.name, info.distribution, info.version, hooks)
    return PluginInfo(name, "(registered in-process)", "-", hooks)


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call each plugin's register_* hooks one plugin at a time, so every class has a known owner."""
    registry = Registry()
    infos = {name: plugin_info(pm, name) for name, _ in pm.list_name_plugin()}
    registry.plugins = [infos[name] for name, _ in pm.list_name_plugin()]
    for hook_name, kind in HOOK_KINDS.items():
        # get_hookimpls lists implementations last-registered first; built-ins must come first.
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
            owner = infos[impl.plugin_name]
            try:
                impl.function(register=_registrar(registry, kind, owner))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{owner} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
    return registry


def _registrar(registry: Registry, kind: Kind, owner: PluginInfo) -> Callable[[Any], None]:
    def register(cls: Any) -> None:
        registry.add(kind, cls, owner)

    return register


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (discovery runs once)."""
    return get_plugin_manager()


@functools.cache
def load_registry() -> Registry:
    """The process-wide registry, built from `plugin_manager()`."""
    return build_registry(plugin_manager())
