"""adapterkit compare: per-strategy child processes, failure rows, the Pareto front, the outputs."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterkit.cli import cli
from adapterkit.comparison import report as compare_report
from adapterkit.comparison import runs as compare
from adapterkit.errors import UserError
from adapterkit.testing import save_tiny_llama_dir

ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "what is the sun", "output": "the sun is big and fire ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
]
ALL = ["full", "head", "last_n", "lora", "qlora"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    save_tiny_llama_dir(root / "tied", tied=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "recipe.yaml").write_text(
        f"model: {{name: {root / 'tied'}}}\n"
        "task: {name: causal_lm, options: {max_length: 64}}\n"
        "data: {train: train.jsonl, eval: eval.jsonl}\n"
        "strategy: {name: lora, options: {r: 4}}\n"
        "train: {max_steps: 4, batch_size: 4, lr: 0.01}\n"
    )
    return root


# ---- pure helpers --------------------------------------------------------------------------------


def _row(name: str, memory: float | None, value: float | None, error: str | None = None) -> dict:
    return {"strategy": name, "peak_memory_bytes": memory, "eval_value": value, "error": error}


TABLE = [
    _row("a", 100, 0.5),
    _row("b", 200, 0.7),
    _row("c", 200, 0.6),  # b beats it: same memory, better metric
    _row("d", 300, 0.7),  # b beats it: same metric, less memory
    _row("e", 200, 0.7),  # identical to b: neither dominates, both stay
    _row("failed", 50, 0.9, error="out of memory"),  # would dominate everything if counted
    _row("no-memory", None, 0.99),
    _row("h", 400, 0.9),
]


def _names(rows: list[dict]) -> list[str]:
    return [r["strategy"] for r in rows]


def test_pareto_front_higher_is_better() -> None:
    front = compare_report.pareto_front(TABLE, "eval_value", higher_is_better=True)
    assert _names(front) == ["a", "b", "e", "h"]


def test_pareto_front_lower_is_better() -> None:
    front = compare_report.pareto_front(TABLE, "eval_value", higher_is_better=False)
    assert _names(front) == ["a"]
    tie = [_row("x", 10, 2.0), _row("y", 10, 2.0), _row("z", 5, 3.0), _row("w", 20, 1.0)]
    assert _names(compare_report.pareto_front(tie, "eval_value", False)) == ["z", "x", "y", "w"]
    assert compare_report.pareto_front([_row("f", 1, 1.0, "boom")], "eval_value", False) == []


def test_strategy_overrides() -> None:
    known = ALL
    given = ["train.max_steps=2", "lora.r=16", "qlora.alpha=4", "data.max_train_rows=3"]
    # the recipe's own strategy keeps its options; its own prefix becomes strategy.options.*
    assert compare.strategy_overrides("lora", "lora", given, known) == [
        "train.max_steps=2",
        "data.max_train_rows=3",
        "strategy.options.r=16",
    ]
    # another strategy starts from its defaults
    assert compare.strategy_overrides("lora", "qlora", given, known) == [
        "train.max_steps=2",
        "data.max_train_rows=3",
        "strategy.name=qlora",
        "strategy.options={}",
        "strategy.options.alpha=4",
    ]
    with pytest.raises(UserError, match=r"lora\.r=16"):
        compare.strategy_overrides("lora", "full", ["strategy.options.r=16"], known)
    with pytest.raises(UserError, match="qlora, which is not among"):
        compare.check_overrides(["qlora.r=2"], ["full", "lora"], known)


def test_classify_failure() -> None:
    assert compare.classify_failure(-signal.SIGKILL, "step 3") == compare.OOM_KILLED
    alloc = "RuntimeError: [enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"
    assert compare.classify_failure(1, "Traceback\n" + alloc).startswith("out of memory: Runtime")
    user = "train: 10%\rtrain: 20%\nerror: strategy.options.n: 9 blocks asked\n  - line 3: x\n"
    assert compare.classify_failure(2, user) == "strategy.options.n: 9 blocks asked\n  - line 3: x"
    thread = "RuntimeError: can't start new thread"
    assert compare.classify_failure(1, thread) == f"failed (exit 1): {thread}"
    assert compare.classify_failure(1, thread, memory_limited=True).startswith("out of memory")
    assert compare.classify_failure(-signal.SIGTERM, "") == "killed by SIGTERM"


def test_parse_size() -> None:
    assert compare.parse_size("2GiB") == 2 * 1024**3
    assert compare.parse_size("300MB") == 300_000_000
    assert compare.parse_size("512") == 512
    with pytest.raises(UserError, match="--memory-limit"):
        compare.parse_size("lots")


def test_markdown_table_keeps_failed_rows() -> None:
    rows = [
        compare._empty_row("full")
        | {"peak_memory_bytes": 2**20, "trainable_params": 1234, "eval_metric": "eval_loss"},
        compare._empty_row("lora") | {"error": "strategy.options.r: bad | worse\n  - more"},
    ]
    lines = compare_report.markdown_table(rows).splitlines()
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in lines]  # an escaped pipe is no border
    assert cells == [cells[0]] * 4
    assert "eval_loss" in lines[0] and "| 1,234 |" in lines[2] and "| 1.0 |" in lines[2]
    assert lines[3].startswith("| lora |") and "bad \\| worse   - more" in lines[3]


# ---- real runs (child processes) -----------------------------------------------------------------


def test_compare_all_five_strategies_writes_every_file(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    rows = compare.run(
        workspace / "recipe.yaml", ALL, ["train.max_steps=2", "qlora.r=4"], out, progress=False
    )
    assert [r["strategy"] for r in rows] == ALL
    assert [r["error"] for r in rows] == [None] * 5, [r["error"] for r in rows]
    for name in ALL:
        on_disk = json.loads((out / f"{name}.json").read_text())
        assert set(on_disk) == set(compare.FIELDS)
        assert on_disk["steps"] == 2 and on_disk["eval_metric"] == "eval_loss"
        assert on_disk["eval_value"] > 0 and on_disk["peak_memory_bytes"] > 0
        assert on_disk["wall_time_s"] >= on_disk["trainer_wall_time_s"] > 0
    summary = json.loads((out / "compare.json").read_text())
    assert [r["strategy"] for r in summary["rows"]] == ALL
    table = (out / "compare.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ALL
    for png in ("pareto.png", "loss.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    by = {r["strategy"]: r for r in rows}
    trainable = {name: by[name]["trainable_params"] for name in ALL}
    assert trainable["full"] == by["full"]["total_params"] == max(trainable.values())
    assert trainable["lora"] == trainable["qlora"]  # both r=4: the recipe's own, the override
    assert by["lora"]["options"]["r"] == by["qlora"]["options"]["r"] == 4
    assert by["last_n"]["options"]["n"] == 2  # default: the recipe's lora options were dropped
    assert any(r["pareto"] for r in rows)


def test_failing_strategies_keep_their_rows(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    rows = compare.run(
        workspace / "recipe.yaml",
        ["lora", "head", "last_n"],
        ["train.max_steps=1", "lora.r=0", "last_n.n=9"],
        out,
        progress=True,
    )
    err = capsys.readouterr().err
    assert "[1/3] lora: failed: " in err and "[2/3] head\n" in err
    assert "train: 100%" in err  # the child's own progress bar came through live
    lora, head, last_n = rows
    # a bad option is caught before any process starts
    assert "strategy.options.r" in lora["error"] and lora["returncode"] is None
    assert not (out / "runs" / "lora").exists()
    # an error the child finds after loading the model (2 blocks, 9 asked) is its user error
    assert last_n["returncode"] == 2 and "strategy.options.n" in last_n["error"]
    assert "Traceback" not in last_n["error"]
    assert head["error"] is None and head["trainable_params"] > 0
    assert head["pareto"] and not lora["pareto"] and not last_n["pareto"]
    failed = json.loads((out / "lora.json").read_text())
    assert set(failed) == set(compare.FIELDS) and failed["peak_memory_bytes"] is None
    assert "strategy.options.r" in (out / "compare.md").read_text()


def test_out_of_memory_child_is_reported(workspace: Path, tmp_path: Path) -> None:
    # 300 MB of address space: torch's libraries alone do not fit, so the child fails for memory.
    rows = compare.run(
        workspace / "recipe.yaml",
        ["head"],
        ["train.max_steps=1"],
        tmp_path / "cmp",
        progress=False,
        memory_limit_bytes=300 * 10**6,
    )
    assert rows[0]["error"].startswith("out of memory"), rows[0]["error"]
    assert rows[0]["returncode"] != 0
    assert (tmp_path / "cmp" / "logs" / "head.log").stat().st_size > 0


def test_cli_exits_2_only_when_every_run_failed(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    recipe = str(workspace / "recipe.yaml")
    args = ["compare", recipe, "lora.r=0", "--strategies", "lora", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 2
    assert "| lora |" in result.output and "every run failed" in result.output
    assert (out / "compare.json").is_file()
