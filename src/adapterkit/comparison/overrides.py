"""Which overrides each compared run gets: the common ones, its strategy, and its own options.

On the command line an option of one strategy is `<strategy>.<option>=value`; here it becomes that
run's `strategy.options.<option>=value`. The strategy names that count as such a prefix are the
registered ones, given by the caller: nothing here knows any strategy by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adapterkit.errors import UserError
from adapterkit.recipe import SECTIONS, load_yaml


def recipe_strategy_name(recipe_path: str | Path) -> str | None:
    """The strategy the recipe file names, or None where it names none (resolve reports that)."""
    data, _ = load_yaml(Path(recipe_path))
    section = data.get("strategy")
    name = section.get("name") if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def _per_strategy_form(item: str, example_strategy: str | None) -> str:
    """How to write `strategy.options.<option>=value` for one compared strategy."""
    key, _, value = item.partition("=")
    option = key.strip().removeprefix("strategy.options.")
    form = "<strategy>.<option>=value"
    if option == key.strip() or "." in option or not example_strategy:
        return form
    return f"{form}, e.g. {example_strategy}.{option}={value}"


def split_overrides(
    overrides: Sequence[str], strategies: Sequence[str], example_strategy: str | None = None
) -> tuple[list[str], dict[str, list[str]]]:
    """Split overrides into those for every run and `<strategy>.<option>=v` ones for one run.

    `strategies` are the names that count as a prefix (the registered ones). `strategy.*`
    overrides are refused: with several strategies they would be ambiguous (an option of one
    strategy is an unknown key for another); the message shows the per-strategy form, with
    `example_strategy` (the recipe's own) as the example.
    """
    common: list[str] = []
    per: dict[str, list[str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        head, dot, rest = key.strip().partition(".")
        if head == "strategy":
            raise UserError(
                f"override '{item}': compare sets each run's strategy; give an option of one "
                f"strategy as {_per_strategy_form(item, example_strategy)}"
            )
        if head in strategies and head not in SECTIONS and sep and dot and rest:
            per.setdefault(head, []).append(f"strategy.options.{rest}={value}")
        else:
            common.append(item)
    return common, per


def strategy_overrides(
    recipe_strategy: str | None,
    strategy: str,
    overrides: Sequence[str],
    known: Sequence[str] = (),
) -> list[str]:
    """The overrides one run gets: the common ones, its strategy, and its own options.

    The recipe's own strategy keeps the recipe's options; any other strategy starts from its
    defaults (the recipe's options belong to another strategy and would be unknown keys).
    Overrides prefixed with another strategy's name (`known`: the registered names) are dropped.
    """
    common, per = split_overrides(overrides, [*known, strategy], recipe_strategy)
    own = (
        [] if strategy == recipe_strategy else [f"strategy.name={strategy}", "strategy.options={}"]
    )
    return [*common, *own, *per.get(strategy, [])]


def check_overrides(
    overrides: Sequence[str],
    strategies: Sequence[str],
    known: Sequence[str],
    recipe_strategy: str | None = None,
) -> None:
    """Refuse `<strategy>.x=v` for a strategy that is not compared: it would silently do nothing."""
    _, per = split_overrides(overrides, [*known, *strategies], recipe_strategy)
    stray = sorted(set(per) - set(strategies))
    if stray:
        raise UserError(
            f"overrides for {', '.join(stray)}, which is not among the strategies compared "
            f"({', '.join(strategies)})"
        )
