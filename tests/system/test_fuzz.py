"""Fuzzing the parsers with hypothesis: random recipes, override strings and data lines.

The only allowed outcomes are success or a UserError (the error family of docs/errors.md); any
other exception is a crash a user would see as a traceback. Examples per test (derandomized, so
CI runs the same ones every time): override strings 200, recipes 200, data lines 300 per reader
(causal_lm JSONL; sequence_classification JSONL, CSV and TSV; token_classification CoNLL).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapterkit.errors import UserError
from adapterkit.recipe import resolve


def fuzz(examples: int) -> settings:
    """Derandomized (the same examples every run), no deadline (CI machines are slow)."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# One directory for the whole module: hypothesis runs many examples per test function.
WORK = Path(tempfile.mkdtemp(prefix="adapterkit-fuzz-"))
(WORK / "train.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
BASE = (
    "model: {name: smollm2-135m}\n"
    "task: {name: causal_lm}\n"
    "data: {train: train.jsonl}\n"
    "strategy: {name: lora}\n"
    "train: {max_steps: 2}\n"
)
(WORK / "recipe.yaml").write_text(BASE)

KEYS = [
    "model.name",
    "model.dtype",
    "model.trust_remote_code",
    "task.name",
    "task.options.max_length",
    "data.train",
    "data.eval",
    "data.holdout",
    "strategy.name",
    "strategy.options.r",
    "strategy.options.target_modules",
    "train.lr",
    "train.max_steps",
    "train.batch_size",
    "train.schedule",
    "train",
    "bogus.key",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def allowed(call: Any) -> None:
    """Run `call`; success and UserError are fine, anything else fails the test."""
    with contextlib.suppress(UserError):
        call()


@fuzz(200)
@given(
    st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=20)),
            st.builds(
                lambda k, v: f"{k}={json.dumps(v)}",
                st.sampled_from(KEYS),
                values,
            ),
            st.text(max_size=30),  # anything at all, '=' or not
        ),
        max_size=4,
    )
)
def test_override_strings(overrides: list[str]) -> None:
    allowed(lambda: resolve(WORK / "recipe.yaml", overrides))


sections = st.fixed_dictionaries(
    {},
    optional={
        "model": st.dictionaries(st.sampled_from(["name", "dtype", "x"]), values, max_size=3),
        "task": st.dictionaries(st.sampled_from(["name", "options", "y"]), values, max_size=3),
        "data": st.dictionaries(st.sampled_from(["train", "eval", "holdout"]), values, max_size=3),
        "strategy": st.dictionaries(st.sampled_from(["name", "options"]), values, max_size=2),
        "train": st.dictionaries(
            st.sampled_from(["lr", "max_steps", "batch_size", "seed", "zz"]), values, max_size=3
        ),
        "extra": values,
    },
)


@fuzz(200)
@given(st.one_of(sections.map(json.dumps), st.text(max_size=80)))
def test_recipes(text: str) -> None:
    """JSON is YAML: structured recipes, plus arbitrary text (broken YAML, scalars, lists)."""
    path = WORK / "fuzz-recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    allowed(lambda: resolve(path))


def _registry_task(name: str) -> Any:
    from adapterkit.plugins import load_registry

    return load_registry().task(name)


def _options(task: Any, **values: Any) -> Any:
    from adapterkit import options as opts

    parsed, errors = opts.parse(type(task).Options, values, "task.options")
    assert not errors
    return parsed


json_rows = st.one_of(
    st.dictionaries(
        st.sampled_from(["instruction", "input", "output", "messages", "sentence", "label", "q"]),
        values,
        max_size=4,
    ).map(json.dumps),
    st.text(max_size=40),
)
table_lines = st.lists(st.text(max_size=10), min_size=0, max_size=4)

READERS = {
    # name: (task, options, file suffix, a line strategy, a first line)
    "causal_lm-jsonl": ("causal_lm", {}, ".jsonl", json_rows, None),
    "seqcls-jsonl": ("sequence_classification", {}, ".jsonl", json_rows, None),
    "seqcls-csv": (
        "sequence_classification",
        {},
        ".csv",
        table_lines.map(lambda xs: ",".join(xs)),
        "sentence,label",
    ),
    "seqcls-tsv": (
        "sequence_classification",
        {},
        ".tsv",
        table_lines.map(lambda xs: "\t".join(xs)),
        "sentence\tlabel",
    ),
    "conll": (
        "token_classification",
        {},
        ".conll",
        st.one_of(table_lines.map(lambda xs: " ".join(xs)), st.just(""), st.text(max_size=15)),
        None,
    ),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_data_lines(reader: str) -> None:
    task_name, opts, suffix, lines, header = READERS[reader]
    task = _registry_task(task_name)
    options = _options(task, **opts)
    path = WORK / f"fuzz{suffix}"

    @fuzz(300)
    @given(st.lists(lines, max_size=6), st.booleans())
    def check(body: list[str], with_header: bool) -> None:
        text = "\n".join(([header] if header and with_header else []) + body)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        allowed(lambda: task.read(path, options))

    check()
