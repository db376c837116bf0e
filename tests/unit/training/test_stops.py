"""The loop's guards: a non-finite figure, running out of memory (and the advice, which names only
the quantizing strategies it is given), and sizes read from the command line (units)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterkit import units
from adapterkit.comparison import runs
from adapterkit.errors import OutOfMemoryError, TrainingError, UserError
from adapterkit.strategy import freeze, trainable_state_dict, unfreeze
from adapterkit.tasks.causal_lm import CausalLM, Options
from adapterkit.testing import tiny_llama, tiny_tokenizer
from adapterkit.training.config import TrainConfig
from adapterkit.training.inputs import AdapterBinding, TrainData
from adapterkit.training.stops import (
    OutOfMemoryStop,
    ensure_finite,
    last_good,
    out_of_memory_advice,
)
from adapterkit.training.trainer import fit

QUANTIZED = "  (a 4-bit base model: far less weight memory)"


def test_advice_names_exactly_the_quantizing_strategies_it_is_given() -> None:
    cfg = TrainConfig(batch_size=8, grad_accum=1)
    plain = out_of_memory_advice(cfg)
    assert "train.batch_size=4 train.grad_accum=2" in plain
    assert "train.gradient_checkpointing=true" in plain
    assert "strategy.name=" not in plain  # the core knows no strategy by name
    lines = out_of_memory_advice(cfg, ["four_bit", "nf4_other"]).splitlines()
    assert lines[-2:] == [
        f"  strategy.name=four_bit{QUANTIZED}",
        f"  strategy.name=nf4_other{QUANTIZED}",
    ]
    one = out_of_memory_advice(TrainConfig(batch_size=1, gradient_checkpointing=True), ["q"])
    assert one.splitlines() == [
        "  task.options.max_length=<fewer tokens>  (batch_size=1 already)",
        f"  strategy.name=q{QUANTIZED}",
    ]


def test_ensure_finite() -> None:
    assert ensure_finite(1.5, "the loss", 3, lambda: "unused", "fix it") == 1.5
    asked: list[int] = []

    def kept() -> str:
        asked.append(1)
        return "nothing was kept"

    with pytest.raises(TrainingError) as info:
        ensure_finite(float("inf"), "the gradient norm", 3, kept, "Lower train.lr")
    assert str(info.value) == (
        "diverged: the gradient norm became inf at step 3; the step was not applied and "
        "nothing was kept. Lower train.lr"
    )
    assert asked == [1]  # asked only once it failed


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore"), MemoryError()],
)
def test_out_of_memory_inside_the_block_becomes_advice(exc: BaseException) -> None:
    cleaned: list[int] = []
    stop = OutOfMemoryStop(
        "step 4 on cpu", lambda: "no checkpoint was saved", "  try", lambda: cleaned.append(1)
    )
    with pytest.raises(OutOfMemoryError) as info, stop:
        raise exc
    message = str(info.value)
    assert message.startswith("out of memory at step 4 on cpu (")
    assert "\n" not in message.split(")")[0]  # the first line of the cause only
    assert message.endswith(
        "no checkpoint was saved. Try one of these overrides "
        "(`adapterkit plan` estimates what fits):\n  try"
    )
    assert info.value.__cause__ is exc and cleaned == [1]


def test_other_errors_pass_the_out_of_memory_stop_unchanged() -> None:
    cleaned: list[int] = []
    with (
        pytest.raises(ValueError, match="not memory"),
        OutOfMemoryStop("step 1 on cpu", lambda: "", "", lambda: cleaned.append(1)),
    ):
        raise ValueError("not memory")
    with OutOfMemoryStop("step 1 on cpu", lambda: "", "", lambda: cleaned.append(1)):
        pass
    assert cleaned == []


def test_last_good_names_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert last_good(tmp_path / "checkpoints") == "no checkpoint was saved"
    for step in (2, 4):
        d = tmp_path / "checkpoints" / f"step-{step:06d}"
        d.mkdir(parents=True)
        for name in ("trainable.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"):
            (d / name).write_text("x")
    (tmp_path / "checkpoints" / "step-000006").mkdir()  # incomplete: not a good one
    assert "step-000004, is kept" in last_good(tmp_path / "checkpoints")


class RunsOutOfMemory(CausalLM):
    """The second micro-batch of step 2 cannot allocate (as the CPU allocator says it), after
    the first one's backward left gradients."""

    calls = 0

    def loss(self, model, batch):
        RunsOutOfMemory.calls += 1
        if RunsOutOfMemory.calls > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
        return super().loss(model, batch)


def test_fit_passes_the_quantizing_strategies_to_the_advice(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = tiny_llama()
    freeze(model)
    unfreeze(model.lm_head)
    rows = [{"instruction": "hello", "output": "the cat"}] * 4
    with pytest.raises(OutOfMemoryError) as info:
        fit(
            model,
            TrainData(
                RunsOutOfMemory(), Options(), CausalLM().encode(rows, tok, Options()), None, tok
            ),
            AdapterBinding(trainable_state_dict, lambda m, p: 0),
            TrainConfig(max_steps=3, batch_size=1, grad_accum=2, checkpoint_every=1),
            tmp_path,
            progress=False,
            quantized_strategies=["four_bit"],
        )
    message = str(info.value)
    assert message.startswith("out of memory at step 2 on cpu (DefaultCPUAllocator")
    assert "step-000001, is kept" in message
    assert f"strategy.name=four_bit{QUANTIZED}" in message
    assert all(p.grad is None for p in model.parameters())  # the failed step's gradients dropped
    assert not (tmp_path / "checkpoints" / "step-000002").exists()


# ---- units -------------------------------------------------------------------------------------


def test_sizes_are_read_and_refused_under_the_option_that_gave_them() -> None:
    assert units.parse_size("2GiB") == 2 * 1024**3
    assert units.parse_size("300MB") == 300_000_000
    assert units.parse_size("512M") == 512_000_000
    assert units.parse_size(" 1.5 kib ") == 1536
    assert units.parse_size("1e9") == 10**9
    for text, problem in (
        ("lots", "cannot read 'lots'"),
        ("1.2.3G", "cannot read"),
        ("0", "must be positive"),
    ):
        with pytest.raises(UserError, match=f"^--budget: {problem}"):
            units.parse_size(text, "--budget")
    with pytest.raises(UserError, match=r"^--memory-limit: "):
        runs.parse_size("lots")  # the old name, for compare's option


def test_sizes_are_written_for_people() -> None:
    assert units.human_bytes(512) == "512 B"
    assert units.human_bytes(1536) == "1.5 KiB"
    assert units.human_bytes(3 * 2**30) == "3.0 GiB"
    assert units.human_bytes(5 * 2**40) == "5120.0 GiB"
    assert units.mib(None) == "" and units.mib(2**30) == "1,024.0"
