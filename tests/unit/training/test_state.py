"""The loop's own objects: LoopState (checkpoint round trip, old checkpoints), BestAdapter (direction,
patience, nan), RunLog, and RunMetrics (its definitions, metrics.json's keys, compare's fields)."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
from safetensors.torch import save_file

from adapterkit.comparison import runs
from adapterkit.strategy import freeze, trainable_state_dict, unfreeze
from adapterkit.tasks.causal_lm import CausalLM, Options
from adapterkit.testing import tiny_llama, tiny_tokenizer
from adapterkit.training.config import TrainConfig
from adapterkit.training.inputs import AdapterBinding, Resume, TrainData
from adapterkit.training.metrics import RunLog, RunMetrics, trim_log
from adapterkit.training.optim import Window
from adapterkit.training.selection import BestAdapter, BestRecord
from adapterkit.training.state import LoopState
from adapterkit.training.step import StepStats
from adapterkit.training.trainer import fit

# Every key trainer_state.json has held, in the order it is written (run_state's keys follow).
CHECKPOINT_KEYS = [
    "step",
    "epoch",
    "next_batch",
    "seed",
    "best_value",
    "best_step",
    "best_eval",
    "bad_evals",
    "initial_eval",
    "last_eval",
    "last_eval_step",
    "recent_losses",
    "tokens",
    "train_time_s",
    "config",
]

ROWS = [
    {"instruction": "hello", "output": "the cat"},
    {"instruction": "write a list of four big red things", "output": "the sun , the fire ."},
    {"instruction": "why", "input": "the dog is sad", "output": "no"},
    {"instruction": "tell me", "output": "one two three four five six seven eight nine ten"},
]


def _save(model, path: Path) -> int:
    f = Path(path) / "adapter_model.safetensors"
    save_file({k: v.detach().contiguous() for k, v in trainable_state_dict(model).items()}, f)
    return f.stat().st_size


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, TrainConfig]:
    """A short real run with eval and checkpoints: (out_dir, returned metrics, its config)."""
    tok = tiny_tokenizer()
    examples = CausalLM().encode(ROWS, tok, Options())
    model = tiny_llama(tied=False)
    freeze(model)
    unfreeze(model.lm_head)
    cfg = TrainConfig(max_steps=4, batch_size=2, eval_every=2, checkpoint_every=2, lr=1e-2)
    out = tmp_path_factory.mktemp("trained")
    metrics = fit(
        model,
        TrainData(CausalLM(), Options(), examples, examples[:2], tok),
        AdapterBinding(trainable_state_dict, _save),
        cfg,
        out,
        resume=Resume(run_state={"recipe": {"train": {"max_steps": 4}}}),
        progress=False,
    )
    return out, metrics, cfg


# ---- LoopState ---------------------------------------------------------------------------------


def _stats(loss: float) -> StepStats:
    return StepStats(loss=loss, lr=0.1, grad_norm=1.0, tokens=7, seconds=0.5)


def test_loop_state_round_trips_through_its_checkpoint_keys() -> None:
    cfg = TrainConfig(seed=3, max_steps=9)
    state = LoopState(
        step=5,
        epoch=1,
        next_batch=2,
        best=BestRecord(value=0.25, step=4, eval={"eval_loss": 0.25}, bad_evals=1),
        initial_eval={"eval_loss": 2.0},
        last_eval={"eval_loss": 0.3},
        last_eval_step=5,
        recent_losses=[float(i) for i in range(12)],
        tokens=123,
        train_time_s=4.5,
    )
    data = state.to_json(cfg, {"recipe": {"x": 1}})
    assert list(data) == [*CHECKPOINT_KEYS, "recipe"]
    assert data["seed"] == 3 and data["config"]["max_steps"] == 9
    assert data["recent_losses"] == [float(i) for i in range(2, 12)]  # the last 10 only
    assert (data["best_value"], data["best_step"], data["bad_evals"]) == (0.25, 4, 1)
    back = LoopState.from_json(json.loads(json.dumps(data)))
    assert back == LoopState(**{**vars(state), "recent_losses": data["recent_losses"]})
    assert back.to_json(cfg, {"recipe": {"x": 1}}) == data


def test_an_old_checkpoint_state_without_the_optional_keys_resumes() -> None:
    old = {
        "step": 6,
        "epoch": 2,
        "next_batch": 0,
        "seed": 0,
        "best_value": None,
        "best_step": None,
        "bad_evals": 0,
        "config": {"max_steps": 6},
        "recipe": {},
    }
    state = LoopState.from_json(old)
    assert (state.step, state.epoch, state.next_batch) == (6, 2, 0)
    assert state.best == BestRecord()
    assert state.initial_eval is None and state.last_eval is None
    assert state.last_eval_step == -1 and state.recent_losses == []
    assert state.tokens == 0 and state.train_time_s == 0.0
    assert math.isnan(state.train_loss)  # no losses recorded: no figure, and no crash
    with pytest.raises(KeyError):  # the data position is not optional
        LoopState.from_json({k: v for k, v in old.items() if k != "next_batch"})


def test_the_loops_own_checkpoint_reads_back_to_the_same_file(trained) -> None:
    out, _, cfg = trained
    for ckpt in sorted((out / "checkpoints").glob("step-*")):
        written = json.loads((ckpt / "trainer_state.json").read_text())
        assert list(written) == [*CHECKPOINT_KEYS, "recipe"]
        again = LoopState.from_json(written).to_json(cfg, {"recipe": written["recipe"]})
        assert json.loads(json.dumps(again)) == written
    last = json.loads((out / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert (last["step"], last["epoch"], last["next_batch"]) == (4, 2, 0)
    assert last["best_step"] in (2, 4) and last["last_eval_step"] == 4


def test_advance_moves_the_data_position_and_rolls_over_the_epoch() -> None:
    state = LoopState()
    state.advance(Window(epoch=0, first=0, batches=[[0, 1], [2, 3]]), 3, _stats(1.0))
    assert (state.step, state.epoch, state.next_batch) == (1, 0, 2)
    state.advance(Window(epoch=0, first=2, batches=[[4]]), 3, _stats(3.0))
    assert (state.step, state.epoch, state.next_batch) == (2, 1, 0)
    assert state.tokens == 14 and state.train_time_s == 1.0 and state.train_loss == 2.0
    for i in range(20):
        state.advance(Window(epoch=1, first=0, batches=[[0]]), 3, _stats(float(i)))
    assert state.recent_losses == [float(i) for i in range(10, 20)]


# ---- BestAdapter -------------------------------------------------------------------------------


def _best(tmp_path: Path, higher: bool, patience: int | None = None) -> tuple[BestAdapter, list]:
    saves: list[tuple[object, Path]] = []

    def save(model, path: Path) -> int:
        saves.append((model, path))
        return 0

    return BestAdapter(tmp_path / "best", save, "metric", higher, patience), saves


@pytest.mark.parametrize(
    ("higher", "values", "best_step"),
    [(True, [0.5, 0.7, 0.6, 0.7], 2), (False, [0.5, 0.7, 0.4, 0.4], 3)],
)
def test_best_adapter_follows_the_direction(tmp_path, higher, values, best_step) -> None:
    best, saves = _best(tmp_path, higher)
    for step, value in enumerate(values, 1):
        assert best.update("model", {"metric": value, "other": step}, step) is False
    assert best.record.step == best_step
    assert best.record.value == values[best_step - 1]
    assert best.record.eval == {"metric": values[best_step - 1], "other": best_step}
    assert [p for _, p in saves] == [tmp_path / "best"] * 2  # the first, then one improvement
    assert best.record.bad_evals == len(values) - best_step  # a tie is no improvement
    assert best.saved and (tmp_path / "best").is_dir()


def test_patience_counts_evaluations_without_improvement(tmp_path) -> None:
    best, _ = _best(tmp_path, higher=False, patience=2)
    assert best.update("m", {"metric": 1.0}, 1) is False
    assert best.update("m", {"metric": 1.0}, 2) is False  # one without improvement
    assert best.update("m", {"metric": 0.5}, 3) is False  # improvement: the count restarts
    assert best.update("m", {"metric": 0.6}, 4) is False
    assert best.update("m", {"metric": 0.5}, 5) is True  # two in a row: out of patience
    assert best.record.step == 3 and best.record.bad_evals == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("higher", [True, False])
def test_a_non_finite_value_is_never_best(tmp_path, bad, higher) -> None:
    best, saves = _best(tmp_path, higher)
    best.update("m", {"metric": bad}, 1)
    assert best.record == BestRecord(bad_evals=1) and not saves and not best.saved
    assert not (tmp_path / "best").exists()
    best.update("m", {"metric": 3.0}, 2)
    best.update("m", {"metric": bad}, 3)
    assert (best.record.value, best.record.step, len(saves)) == (3.0, 2, 1)


def test_best_adapter_updates_the_loop_states_record(tmp_path) -> None:
    state = LoopState()
    best = BestAdapter(tmp_path / "best", lambda m, p: 0, "metric", True, record=state.best)
    best.update("m", {"metric": 2.0}, 7)
    assert state.to_json(TrainConfig())["best_step"] == 7


# ---- RunLog ------------------------------------------------------------------------------------


def test_run_log_starts_empty_or_continues_from_the_resumed_step(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("stale\n")
    log = RunLog(path)
    assert path.read_text() == ""
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float("nan") if step == 3 else 1.0})
    assert json.loads(path.read_text().splitlines()[2]) == {"step": 3, "loss": None}
    with path.open("a") as f:
        f.write('{"step": 4, "lo')  # a line cut by a kill
    RunLog(path, resume_step=2).write({"step": 3, "loss": 0.5})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    trim_log(path, 0)
    assert path.read_text() == ""


# ---- RunMetrics --------------------------------------------------------------------------------


def test_every_figure_has_a_definition() -> None:
    names = [f.name for f in fields(RunMetrics)]
    definitions = RunMetrics.definitions()
    assert list(definitions) == names
    assert all(isinstance(d, str) and len(d) > 10 for d in definitions.values())


# metrics.json's keys, in order, as the loop wrote them before it was split into objects: a rename
# or a dropped key breaks every reader of the file, so they are pinned here, not derived.
METRICS_JSON_KEYS = [
    "train_loss", "initial_eval", "final_eval", "best_eval", "best_step", "steps", "epochs",
    "stopped_early", "tokens", "tokens_per_s", "train_time_s", "peak_memory_bytes",
    "peak_memory_kind", "peak_memory_reset", "cuda_peak_reserved_bytes", "load_peak_memory_bytes",
    "rss_anon_bytes", "rss_file_bytes", "trainable_params", "total_params", "trainable_percent",
    "adapter_bytes", "precision", "device", "final_dir", "best_dir", "wall_time_s",
]  # fmt: skip
# The figures compare copies from each run's metrics.json (compare.METRICS_FIELDS before the split).
COMPARED = {
    "trainable_params", "trainable_percent", "total_params", "adapter_bytes", "peak_memory_bytes",
    "peak_memory_kind", "peak_memory_reset", "cuda_peak_reserved_bytes", "load_peak_memory_bytes",
    "rss_anon_bytes", "rss_file_bytes", "tokens_per_s", "train_loss", "steps",
}  # fmt: skip


def test_metrics_json_holds_exactly_the_figures_and_their_definitions(trained) -> None:
    out, metrics, _ = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved) == [*METRICS_JSON_KEYS, "definitions"]
    assert [f.name for f in fields(RunMetrics)] == METRICS_JSON_KEYS
    assert saved["definitions"] == RunMetrics.definitions()
    assert saved == json.loads(json.dumps(metrics))
    assert saved["steps"] == 4 and saved["best_dir"] == "best" and saved["final_dir"] == "."
    assert saved["best_step"] in (2, 4) and saved["stopped_early"] is False


def test_compare_takes_its_columns_and_their_definitions_from_run_metrics() -> None:
    compared = RunMetrics.compared_fields()
    assert compared == runs.METRICS_FIELDS
    assert set(compared) == COMPARED
    assert set(compared) < {f.name for f in fields(RunMetrics)}
    assert {"peak_memory_bytes", "trainable_params", "train_loss", "steps"} <= set(compared)
    assert [k for k in runs.FIELDS if k in compared] == list(compared)
    assert list(runs.DEFINITIONS) == list(runs.FIELDS)  # every column of a row is defined
    for key in compared:
        assert runs.DEFINITIONS[key] == RunMetrics.definitions()[key]
