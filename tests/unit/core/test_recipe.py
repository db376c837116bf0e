"""Recipes: defaults, overrides, every error kind reported together, and the shipped recipes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapterkit.errors import RecipeError, UserError
from adapterkit.recipe import TrainConfig, apply_overrides, resolve

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
model:
  name: smollm2-135m
task:
  name: causal_lm
data:
  train: train.jsonl
strategy:
  name: lora
  options:
    r: 4
train:
  max_steps: 5
"""


def test_defaults_are_filled_and_options_parsed(tmp_path: Path) -> None:
    recipe = resolve(write(tmp_path, GOOD))
    assert recipe.strategy.options.r == 4
    assert recipe.strategy.options.alpha == 16  # default from the strategy's Options
    assert recipe.train.max_steps == 5 and recipe.train.batch_size == TrainConfig().batch_size
    assert recipe.data.train == str(tmp_path / "train.jsonl")  # relative to the recipe file
    assert recipe.task.options.max_length == 512
    assert recipe.to_dict()["strategy"] == {
        "name": "lora",
        "options": vars(recipe.strategy.options),
    }


def test_overrides_win_and_are_typed(tmp_path: Path) -> None:
    recipe = resolve(
        write(tmp_path, GOOD), ["train.max_steps=2", "strategy.options.r=16", "train.lr=1e-3"]
    )
    assert recipe.train.max_steps == 2 and recipe.strategy.options.r == 16
    assert recipe.train.lr == pytest.approx(1e-3)


def test_override_can_switch_strategy(tmp_path: Path) -> None:
    recipe = resolve(
        write(tmp_path, GOOD.replace("    r: 4\n", "    n: 1\n").replace("lora", "last_n"))
    )
    assert recipe.strategy.name == "last_n" and recipe.strategy.options.n == 1


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = """\
    model:
      name: smollm2-135m
      dtyp: float32
    task:
      name: causal_lmm
    data:
      train: missing.jsonl
    strategy:
      name: lora
      options:
        rr: 4
        alpha: "many"
        dropout: 2.5
    train:
      batch_size: 0
      shedule: cosine
    extras: {}
    """
    with pytest.raises(RecipeError) as exc:
        resolve(write(tmp_path, bad), ["train.max_steps=-1"])
    msg = str(exc.value)
    problems = exc.value.problems
    assert len(problems) >= 9, msg
    expected = [
        "line 3: model.dtyp: unknown key (did you mean 'dtype'?)",
        "line 5: task.name: unknown task 'causal_lmm' (did you mean 'causal_lm'?)",
        "line 11: strategy.options.rr: unknown key (did you mean 'r'?)",
        "line 12: strategy.options.alpha:",
        "line 13: strategy.options.dropout:",
        "line 15: train.batch_size: Input should be greater than or equal to 1",
        "line 16: train.shedule: unknown key (did you mean 'schedule'?)",
        "line 17: extras: unknown section",
        "line 7: data.train: file not found",
        "train.max_steps: Input should be greater than or equal to 1 (got -1) (from a command-line override)",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), f"{fragment!r} not in:\n{msg}"
    assert msg.startswith(str(tmp_path / "r.yaml"))


def test_unknown_strategy_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown strategy 'qlor' \(did you mean 'qlora'\?\)"):
        resolve(write(tmp_path, GOOD), ["strategy.name=qlor"])


def test_missing_sections_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as exc:
        resolve(write(tmp_path, "train: {}\n"))
    assert {"model: section missing", "strategy: section missing"} <= set(exc.value.problems)
    with pytest.raises(RecipeError, match=r"r.yaml:3:1: .*\n  - invalid YAML"):
        resolve(write(tmp_path, "model:\n  name: [unclosed\n"))
    with pytest.raises(UserError, match="recipe not found"):
        resolve(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("train.max_steps", "expected section.key=value"),
        ("=3", "expected section.key=value"),
        ("model.name.x=3", "model.name is not a section"),
    ],
)
def test_malformed_overrides(override: str, problem: str) -> None:
    data = {"model": {"name": "x"}}
    _, problems = apply_overrides(data, [override])
    assert problem in problems[0]


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_shipped_recipe_validates_and_opens_with_its_command(path: Path) -> None:
    resolve(path)
    first = path.read_text().splitlines()[0]
    assert first == f"# adapterkit train {path.relative_to(ROOT)}"


def test_validate_command_and_listing_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from adapterkit.cli import cli\n"
        "r = CliRunner().invoke(cli, ['recipes', 'validate', 'recipes/smollm2/lora.yaml'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['strategies'])\n"
        "assert r.exit_code == 0 and 'qlora' in r.output, r.output\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cli_exit_status_2_and_traceback_only_with_debug(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("r: 4", "r: 0"))
    cmd = [sys.executable, "-m", "adapterkit"]
    out = subprocess.run([*cmd, "recipes", "validate", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "line 10: strategy.options.r" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [*cmd, "--debug", "train", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode != 0 and "Traceback" in out.stderr
