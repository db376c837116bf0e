"""What the conformance checks share: failures a plugin author can read, and the option checks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import yaml

from adapterkit import options as opts
from adapterkit.errors import PluginError
from adapterkit.registry import Kind, PluginInfo, Registry

KIT = PluginInfo("adapterkit.testing", "(conformance check)", "-")


class ConformanceError(AssertionError):
    """A plugin does not meet its protocol; the message names the check and says why."""


class Check:
    """One subject under check (e.g. a strategy on one task); turns failures into ConformanceError."""

    def __init__(self, subject: str) -> None:
        self.subject = subject

    def fail(self, check: str, why: str) -> NoReturn:
        raise ConformanceError(f"{self.subject}: {check}: {why}")

    @contextlib.contextmanager
    def step(self, check: str) -> Iterator[None]:
        """Run a step; anything it raises (the plugin's own errors too) fails `check`."""
        try:
            yield
        except ConformanceError:
            raise
        except Exception as exc:
            self.fail(check, f"{type(exc).__name__}: {exc}")


def registers(check: Check, kind: Kind, cls: Any) -> None:
    """The class passes the registry's protocol check (what `register(cls)` in a hook does)."""
    try:
        Registry().add(kind, cls, KIT)
    except PluginError as exc:
        check.fail(f"registers as a {kind}", str(exc))


def parse_options(check: Check, cls: Any, options: Any, where: str) -> Any:
    """`options` as an instance of `cls.Options`: None means the defaults, a dict is parsed."""
    if options is None or isinstance(options, Mapping):
        parsed, problems = opts.parse(cls.Options, options or {}, where)
        if problems:
            check.fail("options parse", "; ".join(problems))
        return parsed
    if not isinstance(options, cls.Options):
        check.fail(
            "options parse",
            f"expected a {cls.Options.__name__} instance or a dict, got {type(options).__name__}",
        )
    return options


def round_trip(check: Check, cls: Any, options: Any, where: str) -> dict[str, Any]:
    """`options` -> as_dict -> YAML (a recipe) and JSON (a manifest) -> parse: equal options.

    Returns `as_dict(options)`. A tuple or set field, or a value YAML cannot write, fails here.
    """
    name = "options round-trip through a recipe and a manifest"
    with check.step(name):
        raw = opts.as_dict(options)
    try:
        from_yaml = yaml.safe_load(yaml.safe_dump({"options": raw}))["options"]
        from_json = json.loads(json.dumps(raw))
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        check.fail(
            name,
            f"as_dict(options) = {raw!r} cannot be written as YAML and JSON ({exc}); "
            "use plain types (str, int, float, bool, None, lists, dicts) for option fields",
        )
    for fmt, values in (("YAML", from_yaml), ("JSON", from_json)):
        parsed, problems = opts.parse(cls.Options, values, where)
        if problems:
            check.fail(name, f"its {fmt} form {values!r} does not parse: " + "; ".join(problems))
        if opts.as_dict(parsed) != raw:
            check.fail(name, f"{raw!r} comes back from {fmt} as {opts.as_dict(parsed)!r}")
    return raw


def differences(
    mine: Mapping[str, Any], theirs: Mapping[str, Any], same: Any, labels: tuple[str, str]
) -> str:
    """How two name -> value tables differ, in words ('' when they do not); values are shown
    when they are short (shapes), not when they are tensors."""
    only_a, only_b = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    differ = sorted(n for n in set(mine) & set(theirs) if not same(mine[n], theirs[n]))
    parts = [
        f"{label} ({len(names)}): {names[:5]}{' ...' if len(names) > 5 else ''}"
        for label, names in ((f"only {labels[0]}", only_a), (f"only {labels[1]}", only_b))
        if names
    ]
    if differ:
        shown = [
            f"{n}: {mine[n]!r} vs {theirs[n]!r}" if isinstance(mine[n], tuple) else n
            for n in differ[:5]
        ]
        parts.append(f"different ({len(differ)}): {', '.join(shown)}")
    return "; ".join(parts)
