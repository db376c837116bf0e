"""Typed options for strategies, tasks and recipe sections: plain dataclasses, validated by pydantic.

A plugin declares its options as a stdlib dataclass; constraints and help text ride on the type:

    @dataclass
    class Options:
        r: Annotated[int, Field(ge=1, description="LoRA rank")] = 8

`parse` turns a mapping (from YAML and `key=value` overrides) into that dataclass and returns every
problem at once; `describe` lists each option's type, default and help without importing torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: Any
    help: str


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    name = getattr(tp, "__name__", None)
    if name and not typing.get_args(tp):
        return name
    return str(tp).replace("typing.", "")


def _field_help(f: dataclasses.Field, hint: Any) -> str:
    if f.metadata.get("help"):
        return str(f.metadata["help"])
    for meta in typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ():
        desc = getattr(meta, "description", None)
        if desc:
            return str(desc)
    return ""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def describe(options_cls: type) -> list[OptionInfo]:
    """Each option's name, type, default and help text, in declaration order."""
    hints = typing.get_type_hints(options_cls, include_extras=True)
    return [
        OptionInfo(f.name, _type_name(hints[f.name]), _default(f), _field_help(f, hints[f.name]))
        for f in dataclasses.fields(options_cls)
    ]


def closest(name: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def parse(options_cls: type, values: Mapping[str, Any] | None, where: str) -> tuple[Any, list[str]]:
    """Build `options_cls` from `values`. Returns (instance or None, problems).

    `where` prefixes each problem with the recipe key it is about, e.g. 'strategy.options'.
    """
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(options_cls)]
    problems = [
        f"{where}.{key}: unknown key{closest(key, known)}; valid keys: {', '.join(known) or 'none'}"
        for key in values
        if key not in known
    ]
    clean = {k: v for k, v in values.items() if k in known}
    try:
        instance = TypeAdapter(options_cls).validate_python(clean)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}.{loc}: {err['msg']} (got {err.get('input')!r})")
        return None, problems
    return (None if problems else instance), problems


def as_dict(options: Any) -> dict[str, Any]:
    """A JSON-friendly dict of an options instance (for manifests and resolved recipes)."""
    return dataclasses.asdict(options)
