"""`adapterkit plan`'s outputs: the table, the JSON form, the CLI and the out-of-memory advice."""

from __future__ import annotations

import json
from pathlib import Path

from adapterkit import testing
from adapterkit.planning.memory import plan
from adapterkit.planning.report import format_table


def _tiny_lora_recipe(tmp_path: Path, task: str) -> Path:
    """A LoRA recipe (batch 4) on a tiny Llama directory and a one-row instruction file."""
    from adapterkit.testing import save_tiny_llama_dir

    save_tiny_llama_dir(tmp_path / "m")
    (tmp_path / "d.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name: {tmp_path / 'm'}}}\ntask: {task}\n"
        "data: {train: d.jsonl}\nstrategy: {name: lora}\ntrain: {batch_size: 4}\n"
    )
    return recipe


def test_table_and_json_forms() -> None:
    plans = plan(
        testing.tiny_bert_config(), "sequence_classification", ["head", "lora"], None, 2, 8, "cpu"
    )
    table = format_table(plans, budget=2**30)
    assert table.count("\n") == 3 and "| head |" in table and "| lora |" in table
    loaded = json.loads(json.dumps([p.as_dict() for p in plans]))
    assert loaded[0]["components"]["total"] == plans[0].total


def test_plan_command_lists_every_strategy_and_the_budget(tmp_path) -> None:
    """`adapterkit plan` end to end on a tiny model directory, as JSON and as a table."""
    import json as _json

    from click.testing import CliRunner

    from adapterkit.cli import cli

    recipe = _tiny_lora_recipe(tmp_path, "{name: causal_lm, options: {max_length: 64}}")
    names = "full,head,last_n,lora,qlora"
    args = ["plan", str(recipe), "--strategies", names, "--device", "cpu"]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    plans = _json.loads(out.output)
    assert [p["strategy"] for p in plans] == names.split(",")
    assert all(p["batch_size"] == 4 and p["seq_len"] == 64 for p in plans)
    table = CliRunner().invoke(cli, [*args, "--budget", "2GiB"])
    assert table.exit_code == 0 and "fits 2.0 GiB" in table.output, table.output


def test_out_of_memory_advice_comes_from_the_plan(tmp_path) -> None:
    from adapterkit.planning.report import plan_advice
    from adapterkit.recipe import resolve

    recipe = _tiny_lora_recipe(tmp_path, "{name: causal_lm}")
    advice = plan_advice(resolve(recipe))
    assert "lora at batch 4 x 512 tokens needs about" in advice
    assert "train.gradient_checkpointing=true" in advice and "largest batch that fits" in advice
    assert "strategy qlora: about" in advice
