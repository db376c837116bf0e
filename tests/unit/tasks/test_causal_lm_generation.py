"""The causal LM task's generation metrics and predictions, on a tiny Llama trained for seconds.

Training a few steps on four rows makes the replies the model generates real text: the figures
the training evals, `adapterkit eval` and the test set report are checked against
`_text_metrics.score` on what `adapterkit predict` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from adapterkit import api
from adapterkit import options as opts
from adapterkit.cli import cli
from adapterkit.errors import DataError
from adapterkit.recipe import resolve
from adapterkit.tasks import _text_metrics
from adapterkit.tasks.causal_lm import CausalLM, Options, generation
from adapterkit.testing import tiny_llama

TASK = CausalLM()
NAMES = ["bleu", "chrf", "rouge", "exact_match"]
ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {
        "instruction": "what is the sun",
        "output": "the sun is big and fire .",
        "references": ["the sun is big .", "the sun is fire ."],
    },
    {"instruction": "tell a cat", "output": "the cat is happy ."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: more threads only spin (on a shared 2-core machine, a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> dict[str, Any]:
    """A full fine-tune of the tiny Llama on ROWS (20 steps), eval and test on ROWS."""
    root = tmp_path_factory.mktemp("generation")
    write_jsonl(root / "train.jsonl", ROWS * 3)
    write_jsonl(root / "eval.jsonl", ROWS)
    options = {
        "max_length": 64,
        "metrics": NAMES,
        "max_eval_generate": 3,  # of the 4 eval rows
        "max_new_tokens": 8,
        "generate_batch_size": 2,
    }
    recipe = {
        "model": {"name": str(llama_dir)},
        "task": {"name": "causal_lm", "options": options},
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "test": "eval.jsonl"},
        "strategy": {"name": "full"},
        "train": {
            "max_steps": 20,
            "batch_size": 4,
            "lr": 0.01,
            "schedule": "constant",
            "threads": 1,
        },
    }
    (root / "recipe.yaml").write_text(json.dumps(recipe))
    out = root / "run"
    metrics = api.train(resolve(root / "recipe.yaml"), out, progress=False)
    figures = api.evaluate(out, root / "eval.jsonl")
    return {"out": out, "eval": root / "eval.jsonl", "metrics": metrics, "figures": figures}


def test_training_reports_generation_metrics_before_and_after(trained):
    metrics = json.loads((trained["out"] / "metrics.json").read_text())
    before, after = metrics["initial_eval"], metrics["final_eval"]
    for figures in (before, after, metrics["test_eval"]):
        assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(figures)
        assert figures["generated_rows"] == 3
        assert figures["bleu_signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a|")
        assert "eval_loss" in figures
    assert after["bleu"] > before["bleu"] + 20  # the trained replies are the responses
    assert after["chrf"] > before["chrf"] and after["eval_loss"] < before["eval_loss"]


def test_eval_metrics_equal_the_scores_of_the_predicted_text(trained):
    figures = trained["figures"]  # api.evaluate on the eval file
    preds = api.predict(trained["out"], trained["eval"], batch_size=2)
    assert [p["line"] for p in preds] == [1, 2, 3, 4]  # predict writes every row
    assert preds[2]["references"] == ROWS[2]["references"]
    first = preds[:3]  # max_eval_generate
    expected = _text_metrics.score(
        NAMES, [p["prediction"] for p in first], [p["references"] for p in first]
    )
    assert {k: figures[k] for k in expected} == expected
    assert figures["generated_rows"] == 3
    assert figures["eval_loss"] == pytest.approx(trained["metrics"]["final_eval"]["eval_loss"])
    assert any(p["prediction"] == p["references"][0] for p in preds)


def test_batched_left_padded_replies_equal_one_prompt_at_a_time(trained):
    loaded = api.load(trained["out"])
    model, tok, options = loaded.model, loaded.tokenizer, loaded.task_options
    prompts = ["write one two three", "name a colour\n\nred or blue", "tell a cat", "what is it"]
    rendered = [
        TASK._render(
            tok, TASK._messages({"messages": [{"role": "user", "content": p}]}, options), True
        )
        for p in prompts
    ]
    assert len({len(r) for r in rendered}) > 1  # padding is really exercised
    batched = generation.replies(model, tok, rendered, options, batch_size=4)
    single = [
        TASK.generate(model, tok, p, options, max_new_tokens=options.max_new_tokens)
        for p in prompts
    ]
    assert batched == single
    assert len(set(batched)) > 2


class Recorder:
    """Wraps a model's `generate`, recording each call's batch size, mode and grad state."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[int, bool, bool]] = []
        self.inner = model.generate  # type: ignore[attr-defined]
        model.generate = self  # type: ignore[method-assign]
        self.model = model

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        self.calls.append(
            (kwargs["input_ids"].shape[0], self.model.training, torch.is_grad_enabled())
        )
        return self.inner(**kwargs)


def test_generation_is_bounded_in_eval_mode_without_gradients(tok):
    model = tiny_llama().train()
    recorder = Recorder(model)
    options = Options(
        metrics=["bleu", "exact_match"],
        max_eval_generate=3,
        max_new_tokens=3,
        generate_batch_size=2,
    )
    examples = TASK.encode(ROWS * 2, tok, options)
    figures = TASK.generated_metrics(model, tok, examples, options)
    assert figures["generated_rows"] == 3
    assert [n for n, _, _ in recorder.calls] == [2, 1]
    assert all(not training and not grad for _, training, grad in recorder.calls)
    assert model.training  # the mode it had is restored
    assert examples[2]["references"] == ROWS[2]["references"]
    assert examples[0]["references"] == [ROWS[0]["output"]]


def test_no_metrics_or_no_rows_generate_nothing(tok):
    model = tiny_llama()
    recorder = Recorder(model)
    for options in (Options(), Options(metrics=["bleu"], max_eval_generate=0)):
        examples = TASK.encode(ROWS, tok, options)
        assert TASK.generated_metrics(model, tok, examples, options) == {}
    assert recorder.calls == []
    assert "references" not in TASK.encode(ROWS, tok, Options())[0]  # nothing kept for nothing


def test_cli_eval_json_and_predict_show_them(trained, tmp_path):
    runner = CliRunner()
    args = ["--adapter", str(trained["out"])]
    shown = runner.invoke(cli, ["eval", *args, "--data", str(trained["eval"]), "--json"])
    assert shown.exit_code == 0, shown.output
    figures = json.loads(shown.stdout)
    assert figures == trained["figures"]
    assert isinstance(figures["chrf_signature"], str) and figures["bleu"] > 0
    out = tmp_path / "pred.jsonl"
    done = runner.invoke(cli, ["predict", *args, str(trained["eval"]), "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows][:1] == ["write one two three"]
    assert all(isinstance(r["prediction"], str) for r in rows) and len(rows) == 4


def test_bad_references_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {**ROWS[0], "references": []}])
    with pytest.raises(DataError) as err:
        TASK.read(path, Options())
    assert str(err.value).startswith(f"{path}:2: ") and '"references"' in str(err.value)


def test_unknown_metric_in_a_recipe_names_the_key_and_the_choices():
    _, problems = opts.parse(Options, {"metrics": ["bleu", "blue"]}, "task.options")
    (problem,) = problems
    assert problem.startswith("task.options.metrics.1: ") and "'blue'" in problem
    assert all(f"'{name}'" in problem for name in _text_metrics.METRICS)
