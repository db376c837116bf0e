"""The search space: `--space KEY=SPEC` items, read into Optuna distributions and checked against
the recipe before any trial runs.

    train.lr=log(1e-5,1e-3)          a float on a log scale, both ends included
    train.warmup=int(0,100)          an integer, both ends included
    train.weight_decay=float(0,0.1)  a float on a linear scale
    strategy.options.r=choice(4,8,16)   one of the values (numbers, words, true/false, null)

KEY is any dotted recipe key, exactly as an override writes it. Every end of a range and every
choice is tried as an override of the recipe (`recipe.resolve`), so an unknown key or a value the
recipe refuses is reported, naming the `--space` item, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from adapterkit.errors import RecipeError, UserError

KINDS = ("log", "float", "int", "choice")
_SPEC = re.compile(r"\s*(\w+)\s*\((.*)\)\s*", flags=re.DOTALL)
# Never searched: the test data is scored once, after the search, and takes no part in it.
FORBIDDEN = ("data.test",)
EXAMPLES = "log(1e-5,1e-3), float(0,0.1), int(1,3) or choice(4,8,16)"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One searched key: its distribution's kind and arguments, as the item wrote them."""

    key: str
    kind: str
    args: tuple[Any, ...]
    item: str  # the `KEY=SPEC` text, for messages

    @property
    def text(self) -> str:
        """The SPEC in a normal form (`log(1e-05,0.001)`): what sweep.json and the study keep."""
        return f"{self.kind}({','.join(_show(a) for a in self.args)})"

    def distribution(self) -> Any:
        """The Optuna distribution this SPEC names."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(list(self.args))
        if self.kind == "int":
            return IntDistribution(int(self.args[0]), int(self.args[1]))
        return FloatDistribution(self.args[0], self.args[1], log=self.kind == "log")

    @property
    def log_scale(self) -> bool:
        return self.kind == "log"

    def contains(self, value: Any) -> bool:
        """Whether `value` (a recipe's own setting) is one this SPEC can draw."""
        if self.kind == "choice":
            return any(_same(value, c) for c in self.args)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.args[0] <= value <= self.args[1]

    def probes(self) -> tuple[Any, ...]:
        """The values tried against the recipe: both ends of a range, every choice."""
        return self.args


def _same(a: Any, b: Any) -> bool:
    """Equal, and true/false never equal to 1/0."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return override_value(value)


def override_value(value: Any) -> str:
    """`value` written so that an override's YAML reading gives it back with its type.

    PyYAML reads `1e-05` as a string (a YAML 1.1 float needs a dot), so floats get one.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value}")
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        return text
    if isinstance(value, str):
        return json.dumps(value)  # JSON is YAML: quoted, so 'true' or '8' stay strings
    return json.dumps(value)  # int, bool (true/false), None (null)


def override(key: str, value: Any) -> str:
    """The `key=value` override that sets `key` to `value`."""
    return f"{key}={override_value(value)}"


# ---- reading -------------------------------------------------------------------------------------


def _number(text: str, item: str, integer: bool) -> float | int:
    text = text.strip()
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise _problem(item, f"'{text}' is not {kind}") from None
    if not integer and not math.isfinite(value):
        raise _problem(item, f"'{text}' is not a finite number")
    return value


def _scalar(text: str, item: str) -> Any:
    """A choice: an integer, a number, or a YAML scalar (a word, a quoted string, true, null)."""
    text = text.strip()
    if not text:
        raise _problem(item, "an empty choice")
    for convert in (int, float):
        try:
            value = convert(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            break
        return value
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if not (value is None or isinstance(value, bool | int | float | str)):
        raise _problem(
            item, f"choice '{text}' is not a single value (a number, a word, true, null)"
        )
    return value


def _problem(item: str, what: str) -> RecipeError:
    return RecipeError(f"--space {item}", [f"{what}; a SPEC is {EXAMPLES}"])


def _range(kind: str, args: list[str], item: str) -> tuple[Any, ...]:
    if len(args) != 2:
        raise _problem(item, f"{kind}(low,high) takes 2 numbers, got {len(args)}")
    low, high = (_number(a, item, integer=kind == "int") for a in args)
    if not low < high:
        raise _problem(item, f"the low end {low} must be below the high end {high}")
    if kind == "log" and low <= 0:
        raise _problem(item, f"a log range needs a positive low end, got {low}")
    if kind != "int":
        low, high = float(low), float(high)
    return (low, high)


def parse_item(item: str) -> Spec:
    """One `KEY=SPEC` item; a RecipeError naming it when the key or the SPEC cannot be read."""
    key, sep, spec = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise _problem(item, "expected KEY=SPEC, e.g. train.lr=log(1e-5,1e-3)")
    if key in FORBIDDEN:
        raise RecipeError(
            f"--space {item}",
            [f"{key} is scored once after the search and never searched over"],
        )
    match = _SPEC.fullmatch(spec)
    if not match or match.group(1) not in KINDS:
        raise _problem(item, f"cannot read '{spec.strip()}'")
    kind, body = match.groups()
    args = body.split(",") if body.strip() else []
    if kind == "choice":
        if not args:
            raise _problem(item, "choice() needs at least one value")
        values = tuple(_scalar(a, item) for a in args)
        if len({json.dumps(v) for v in values}) != len(values):
            raise _problem(item, "a value is listed more than once")
        return Spec(key, kind, values, item)
    return Spec(key, kind, _range(kind, args, item), item)


def parse_space(items: Sequence[str]) -> list[Spec]:
    """Every item read; at least one, each key once."""
    if not items:
        raise UserError(f"--space: give at least one KEY=SPEC, e.g. --space 'train.lr={EXAMPLES}'")
    specs = [parse_item(item) for item in items]
    keys = [s.key for s in specs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise RecipeError("--space", [f"{k}: searched more than once" for k in twice])
    return specs


# ---- checking against the recipe -----------------------------------------------------------------


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {item.partition("=")[0].strip() for item in overrides}


def check_space(
    recipe_path: Path | Mapping[str, Any], specs: Sequence[Spec], overrides: Sequence[str] = ()
) -> None:
    """Resolve the recipe with every probe of every item; the first item the recipe refuses
    raises its problems under that item's name. Nothing heavy loads (no torch)."""
    from adapterkit.recipe import resolve

    fixed = _override_keys(overrides)
    for spec in specs:
        if spec.key in fixed:
            raise RecipeError(
                f"--space {spec.item}",
                [f"{spec.key} is also set by an override; search it or set it, not both"],
            )
        for value in spec.probes():
            try:
                resolve(recipe_path, [*overrides, override(spec.key, value)])
            except RecipeError as exc:
                problems = [f"{p} (with {spec.key}={_show(value)})" for p in exc.problems]
                raise RecipeError(f"--space {spec.item}", problems) from None


def recipe_value(recipe: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of dotted `key` in a resolved recipe's dict."""
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def baseline(specs: Sequence[Spec], recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's own value of each searched key that its SPEC can draw (the first trial)."""
    out = {}
    for spec in specs:
        found, value = recipe_value(recipe, spec.key)
        if found and spec.contains(value):
            out[spec.key] = float(value) if spec.kind in ("log", "float") else value
    return out


def around(value: float, key: str = "train.lr", below: float = 10.0, above: float = 3.0) -> str:
    """A `KEY=log(value/below,value*above)` item: the default space of `compare --tune`."""
    return f"{key}=log({value / below:.6g},{value * above:.6g})"
