"""YAML recipes: five sections, dotted `key=value` overrides, and one error listing every problem.

    model:    {name, dtype, trust_remote_code}
    task:     {name, options}
    data:     {train, eval, max_train_rows, max_eval_rows}
    strategy: {name, options}
    train:    adapterkit.training.config.TrainConfig (steps, batch, schedule, precision, ...)

`resolve` fills defaults and parses the strategy's and task's options into their dataclasses before
anything heavy loads (no torch import), so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field

from adapterkit import options as opts
from adapterkit.errors import RecipeError, UserError
from adapterkit.registry import Registry
from adapterkit.training.config import TrainConfig

SECTIONS = ("model", "task", "data", "strategy", "train")
# The name a recipe given as a mapping goes by in messages (its paths are relative to the cwd).
DICT_SOURCE = "<recipe dict>"

_Section = TypeVar("_Section")


@dataclasses.dataclass
class ModelSection:
    name: Annotated[str, Field(description="embedded short name or path to a local HF directory")]
    dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"],
        Field(
            description="dtype the frozen base loads in (auto: train.precision's compute dtype; "
            "trained weights stay float32)"
        ),
    ] = "auto"
    trust_remote_code: Annotated[
        bool, Field(description="run Python code shipped with the model (off: never)")
    ] = False


@dataclasses.dataclass
class DataSection:
    train: Annotated[str, Field(description="training data file (relative to the recipe)")]
    eval: Annotated[
        str | None, Field(description="held-out file for eval, best/ and early stopping")
    ] = None
    test: Annotated[
        str | None, Field(description="file scored once at the end; never used for selection")
    ] = None
    holdout: Annotated[
        int | None,
        Field(ge=1, description="no eval file: hold out N training rows (fixed slice) for eval"),
    ] = None
    max_train_rows: Annotated[int | None, Field(ge=1, description="use the first N rows")] = None
    max_eval_rows: Annotated[int | None, Field(ge=1, description="use the first N rows")] = None


@dataclasses.dataclass
class Named:
    """A `task` or `strategy` section: a registered name and its parsed Options."""

    name: str
    options: Any


@dataclasses.dataclass
class Recipe:
    source: str
    model: ModelSection
    task: Named
    data: DataSection
    strategy: Named
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe (every default filled), as saved next to an adapter."""
        return {
            "model": dataclasses.asdict(self.model),
            "task": {"name": self.task.name, "options": opts.as_dict(self.task.options)},
            "data": dataclasses.asdict(self.data),
            "strategy": {
                "name": self.strategy.name,
                "options": opts.as_dict(self.strategy.options),
            },
            "train": dataclasses.asdict(self.train),
        }


# ---- reading YAML with line numbers --------------------------------------------------------------


def _lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping key, by dotted path."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = key_node.start_mark.line + 1
            _lines(value_node, path, out)


def load_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a recipe file into (data, line of each dotted key)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read recipe: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(where, [f"invalid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            str(path), ["the recipe must be a mapping of sections: " + ", ".join(SECTIONS)]
        )
    lines: dict[str, int] = {}
    if node is not None:
        _lines(node, "", lines)
    return data, lines


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[list[str], list[str]]:
    """Apply `a.b.c=value` overrides in place (value parsed as YAML).

    Returns (dotted keys set, problems).
    """
    touched, problems = [], []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(
                f"override '{item}': expected section.key=value, e.g. train.max_steps=10"
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                problems.append(f"override '{item}': {where} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
            touched.append(key)
    return touched, problems


# ---- resolving -----------------------------------------------------------------------------------


def _section(data: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{name}: must be a mapping, got {type(value).__name__}")
        return {}
    return value


def _named(
    section: str, raw: dict[str, Any], registry: Registry, problems: list[str]
) -> Named | None:
    kind = "strategy" if section == "strategy" else "task"
    extra = sorted(set(raw) - {"name", "options"})
    problems += [f"{section}.{k}: unknown key{opts.closest(k, ['name', 'options'])}" for k in extra]
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{section}.name: required; one of {', '.join(registry.names(kind))}")
        return None
    if name not in registry.classes[kind]:
        choices = registry.names(kind)
        problems.append(
            f"{section}.name: unknown {kind} '{name}'{opts.closest(name, choices)}; "
            f"available: {', '.join(choices)}"
        )
        return None
    options_raw = raw.get("options")
    if options_raw is not None and not isinstance(options_raw, dict):
        problems.append(f"{section}.options: must be a mapping")
        return None
    cls = registry.classes[kind][name]
    parsed, errs = opts.parse(cls.Options, options_raw, f"{section}.options")
    problems += errs
    return Named(name, parsed) if parsed is not None else None


def _plain(
    cls: type[_Section], raw: dict[str, Any], where: str, problems: list[str]
) -> _Section | None:
    """`raw` parsed into `cls`; None, with the reasons added to `problems`, when it does not parse."""
    parsed, errs = opts.parse(cls, raw, where)
    problems += errs
    return parsed


def _resolve_path(value: str, base: Path, from_override: bool) -> str:
    """Paths in the file are relative to the recipe; paths typed on the command line to the cwd."""
    p = Path(value)
    # "~nobody/x" names no user: expanduser raises; keep it as written (reported as not found)
    with contextlib.suppress(RuntimeError):
        p = p.expanduser()
    if not p.is_absolute() and not from_override:
        p = base / p
    return str(p)


def resolve(
    path: str | Path | Mapping[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    registry: Registry | None = None,
) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem.

    `path` is a recipe file, or the recipe itself as a mapping (the Python API's `train({...})`):
    its data paths are then relative to the working directory, as overrides are.
    """
    if registry is None:
        from adapterkit.plugins import load_registry

        registry = load_registry()
    if isinstance(path, Mapping):
        data, lines = copy.deepcopy(dict(path)), {}
        label, base = DICT_SOURCE, Path.cwd()
    else:
        data, lines = load_yaml(Path(path))
        label, base = str(path), Path(path).resolve().parent
    touched, problems = apply_overrides(data, list(overrides))

    problems += [
        f"{key}: unknown section{opts.closest(str(key), SECTIONS)}; sections: {', '.join(SECTIONS)}"
        for key in data
        if key not in SECTIONS
    ]
    problems += [f"{s}: section missing" for s in SECTIONS[:4] if s not in data]
    sections = {s: _section(data, s, problems) for s in SECTIONS}

    model = _plain(ModelSection, sections["model"], "model", problems) if "model" in data else None
    dsec = _plain(DataSection, sections["data"], "data", problems) if "data" in data else None
    train = _plain(TrainConfig, sections["train"], "train", problems)
    task = _named("task", sections["task"], registry, problems) if "task" in data else None
    strategy = (
        _named("strategy", sections["strategy"], registry, problems) if "strategy" in data else None
    )

    if dsec is not None:
        _resolve_data(dsec, base, touched, problems)

    # A section is None only when it is missing or did not parse, and either is a problem.
    if (
        problems
        or model is None
        or task is None
        or dsec is None
        or strategy is None
        or train is None
    ):
        raise RecipeError(label, [_with_line(p, lines, touched) for p in problems])
    return Recipe(label, model, task, dsec, strategy, train)


def _resolve_data(dsec: DataSection, base: Path, touched: list[str], problems: list[str]) -> None:
    """Make the data paths absolute (file paths relative to `base`) and check the files exist."""
    dsec.train = _resolve_path(dsec.train, base, "data.train" in touched)
    if dsec.eval is not None and dsec.holdout is not None:
        problems.append("data.holdout: give data.eval or data.holdout, not both")
    for key in ("eval", "test"):
        value = getattr(dsec, key)
        if value is not None:
            setattr(dsec, key, _resolve_path(value, base, f"data.{key}" in touched))
    for key in ("train", "eval", "test"):
        value = getattr(dsec, key)
        if value is not None and not Path(value).is_file():
            problems.append(f"data.{key}: file not found: {value}")


def _with_line(problem: str, lines: dict[str, int], touched: list[str]) -> str:
    """Prefix 'line N: ' when the problem's key is in the file (not from an override)."""
    key = problem.split(":", 1)[0]
    while key:
        if key in touched:
            return f"{problem} (from a command-line override)"
        if key in lines:
            return f"line {lines[key]}: {problem}"
        key = key.rpartition(".")[0]
    return problem
