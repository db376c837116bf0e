"""--space KEY=SPEC: reading each kind, the errors (each names its item), and the check against the
recipe that runs before any trial (no process, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from adapterkit.cli import cli
from adapterkit.errors import RecipeError, UserError
from adapterkit.recipe import resolve
from adapterkit.search.space import (
    around,
    baseline,
    check_space,
    override_value,
    parse_item,
    parse_space,
)
from adapterkit.testing.fixtures import classification_rows


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "train.tsv").write_text(classification_rows())
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model: {name: tiny}\n"
        "task: {name: sequence_classification, options: {max_length: 32}}\n"
        "data: {train: train.tsv, holdout: 3}\n"
        "strategy: {name: lora, options: {r: 4}}\n"
        "train: {max_steps: 2, batch_size: 4, lr: 0.01}\n"
    )
    return path


def test_each_kind_reads_into_its_distribution() -> None:
    log = parse_item("train.lr=log(1e-5, 1e-3)")
    assert (log.key, log.text) == ("train.lr", "log(1.0e-05,0.001)")
    assert log.distribution() == FloatDistribution(1e-5, 1e-3, log=True)
    assert parse_item("train.weight_decay=float(0,0.1)").distribution() == FloatDistribution(0, 0.1)
    assert parse_item("train.epochs=int(1,3)").distribution() == IntDistribution(1, 3)
    choice = parse_item("strategy.options.r=choice(4, 8,16)")
    assert choice.distribution() == CategoricalDistribution([4, 8, 16])
    mixed = parse_item("train.schedule=choice(cosine,linear)").distribution()
    assert mixed == CategoricalDistribution(["cosine", "linear"])
    flags = parse_item("x.y=choice(true,null,0.5,'8')").args
    assert flags == (True, None, 0.5, "8")


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("train.lr", "expected KEY=SPEC"),
        ("train.lr=normal(1,2)", "cannot read 'normal(1,2)'"),
        ("train.lr=log(1e-3)", "takes 2 numbers, got 1"),
        ("train.lr=log(0,1)", "positive low end"),
        ("train.lr=log(1e-3,1e-5)", "must be below the high end"),
        ("train.lr=float(a,1)", "'a' is not a number"),
        ("train.epochs=int(1.5,3)", "'1.5' is not an integer"),
        ("train.lr=float(1,inf)", "not a finite number"),
        ("strategy.options.r=choice()", "at least one value"),
        ("strategy.options.r=choice(4,4)", "more than once"),
        ("strategy.options.r=choice(4,[1])", "not a single value"),
        ("data.test=choice(a.tsv)", "never searched over"),
    ],
)
def test_a_bad_spec_is_a_recipe_error_naming_the_item(item: str, says: str) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_item(item)
    assert caught.value.source == f"--space {item}"
    assert says in str(caught.value)


def test_the_space_needs_an_item_and_each_key_once() -> None:
    with pytest.raises(UserError, match="at least one KEY=SPEC"):
        parse_space([])
    with pytest.raises(RecipeError, match=r"train\.lr: searched more than once"):
        parse_space(["train.lr=log(1e-4,1e-3)", "train.lr=float(0.1,0.2)"])


def test_override_values_read_back_with_their_type() -> None:
    for value in (1e-05, 3e-4, 0.5, 1e20, 7, True, None, "true", "8", "cosine"):
        assert yaml.safe_load(override_value(value)) == value
        assert type(yaml.safe_load(override_value(value))) is type(value)


def test_check_against_the_recipe_names_the_item(recipe: Path) -> None:
    check_space(recipe, parse_space(["train.lr=log(1e-4,1e-1)", "strategy.options.r=choice(2,4)"]))
    with pytest.raises(RecipeError) as caught:
        check_space(recipe, parse_space(["train.lrr=log(1e-4,1e-3)"]))
    assert caught.value.source == "--space train.lrr=log(1e-4,1e-3)"
    assert "unknown key (did you mean 'lr'?)" in str(caught.value)
    with pytest.raises(RecipeError) as caught:
        check_space(recipe, parse_space(["train.batch_size=choice(8,0)"]))
    assert "greater than or equal to 1" in str(caught.value)
    assert "(with train.batch_size=0)" in str(caught.value)
    with pytest.raises(RecipeError, match="also set by an override"):
        check_space(recipe, parse_space(["train.lr=log(1e-4,1e-3)"]), ["train.lr=0.1"])


def test_cli_refuses_a_bad_space_before_any_trial(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["sweep", str(recipe), "--space", "strategy.options.rank=choice(2,4)", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "error: --space strategy.options.rank=choice(2,4): 1 problem" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_baseline_is_the_recipes_own_values_inside_the_space(recipe: Path) -> None:
    data = resolve(recipe).to_dict()
    specs = parse_space(
        ["train.lr=log(1e-3,1e-1)", "strategy.options.r=choice(2,8)", "train.warmup=int(0,10)"]
    )
    assert baseline(specs, data) == {"train.lr": 0.01, "train.warmup": 0}  # r=4 is no choice
    assert around(0.001) == "train.lr=log(0.0001,0.003)"
