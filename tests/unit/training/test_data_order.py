"""Length-grouped, seeded, resumable data windows; fused AdamW; `gradient_checkpointing: auto`."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from adapterkit.training import optim, resolve
from adapterkit.training.config import TrainConfig
from adapterkit.training.optim import data_windows, fused_adamw_supported, make_optimizer

_RNG = random.Random(7)
LENGTHS = [_RNG.randint(3, 200) for _ in range(437)]


def epoch_windows(cfg: TrainConfig, lengths: list[int] | None, epoch: int = 0) -> list[list[int]]:
    """One epoch's windows, each as the examples of its optimizer step in order."""
    windows = data_windows(len(LENGTHS), cfg, epoch, 0, lengths)
    steps = optim.RunLength.of(len(LENGTHS), cfg).steps_per_epoch
    return [[i for b in w.batches for i in b] for w in itertools.islice(windows, steps)]


def padding(cfg: TrainConfig, lengths: list[int] | None) -> int:
    """Padded positions over an epoch's batches (each batch padded to its longest row)."""
    windows = data_windows(len(LENGTHS), cfg, 0, 0, lengths)
    steps = optim.RunLength.of(len(LENGTHS), cfg).steps_per_epoch
    batches = [b for w in itertools.islice(windows, steps) for b in w.batches]
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_grouping_keeps_every_example_once_and_cuts_padding() -> None:
    cfg = TrainConfig(batch_size=8, seed=3)
    grouped = [i for w in epoch_windows(cfg, LENGTHS) for i in w]
    assert sorted(grouped) == list(range(len(LENGTHS)))
    assert padding(cfg, LENGTHS) < 0.2 * padding(cfg, None)


def test_grouped_order_depends_on_seed_and_epoch_only() -> None:
    cfg = TrainConfig(batch_size=4, grad_accum=2, seed=1)
    first = epoch_windows(cfg, LENGTHS)
    assert epoch_windows(cfg, list(LENGTHS)) == first
    assert epoch_windows(cfg, LENGTHS, epoch=1) != first
    assert epoch_windows(TrainConfig(batch_size=4, grad_accum=2, seed=2), LENGTHS) != first
    # the windows are shuffled: not simply longest first
    means = [sum(LENGTHS[i] for i in w) / len(w) for w in first[:-1]]
    assert means != sorted(means, reverse=True)


def test_same_examples_per_step_for_any_batch_times_accumulation() -> None:
    big = epoch_windows(TrainConfig(batch_size=4, grad_accum=1), LENGTHS)
    small = epoch_windows(TrainConfig(batch_size=1, grad_accum=4), LENGTHS)
    two = epoch_windows(TrainConfig(batch_size=2, grad_accum=2), LENGTHS)
    assert big == small == two


def test_a_resume_replays_the_grouped_order() -> None:
    cfg = TrainConfig(batch_size=3, grad_accum=2, seed=5)
    whole = list(itertools.islice(data_windows(len(LENGTHS), cfg, 0, 0, LENGTHS), 120))
    stop = whole[97]  # in the second epoch
    resumed = data_windows(len(LENGTHS), cfg, stop.epoch, stop.first, LENGTHS)
    assert list(itertools.islice(resumed, 23)) == whole[97:]


def test_grouping_is_off_when_switched_off_or_the_task_packs() -> None:
    from adapterkit.training.inputs import TrainData

    examples = [{"input_ids": [1] * n} for n in (3, 5, 2)]

    class Plain:
        pass

    class Packs:
        def packs(self, options: object) -> bool:
            return True

    def lengths(task: object, cfg: TrainConfig) -> list[int] | None:
        data = TrainData(task, None, examples, None, None)  # type: ignore[arg-type]
        return optim.grouping_lengths(data, cfg)

    assert lengths(Plain(), TrainConfig()) == [3, 5, 2]
    assert lengths(Plain(), TrainConfig(group_by_length=False)) is None
    assert lengths(Packs(), TrainConfig()) is None


# ---- fused AdamW ---------------------------------------------------------------------------------


def test_adamw_is_fused_where_torch_has_the_kernel() -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model, TrainConfig())
    assert optimizer.defaults["fused"] is True
    assert not fused_adamw_supported([torch.zeros(2, device="meta")])
    assert not fused_adamw_supported([])


def test_fused_adamw_matches_the_default_update() -> None:
    def trained(fused: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused or None)
        for _ in range(5):
            model(torch.randn(16, 8)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        return model.weight.detach()

    torch.testing.assert_close(trained(True), trained(False), rtol=1e-5, atol=1e-6)


# ---- gradient_checkpointing: auto --------------------------------------------------------------


class _Plan:
    def __init__(self, peak: int) -> None:
        self._peak = peak

    def peak(self, checkpointed: bool | None = None) -> int:
        assert checkpointed is False
        return self._peak


@pytest.fixture
def recipe(tmp_path: Path):
    from adapterkit.recipe import resolve as resolve_recipe
    from adapterkit.testing import save_tiny_llama_dir

    save_tiny_llama_dir(tmp_path / "m", tied=True)
    (tmp_path / "t.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "r.yaml").write_text(
        f"model: {{name: {tmp_path / 'm'}}}\ntask: {{name: causal_lm}}\n"
        "data: {train: t.jsonl}\nstrategy: {name: lora}\n"
    )
    return resolve_recipe(tmp_path / "r.yaml")


@pytest.mark.parametrize(("peak", "on"), [(10 * 2**30, True), (2**30, False)])
def test_auto_checkpointing_turns_on_when_the_plan_does_not_fit(
    recipe, monkeypatch, peak: int, on: bool
) -> None:
    from adapterkit.planning import memory
    from adapterkit.training import measure

    assert recipe.train.gradient_checkpointing == "auto"
    monkeypatch.setattr(measure, "machine_memory", lambda: ("cpu", 4 * 2**30))
    monkeypatch.setattr(memory, "from_recipe", lambda r, s, d: [_Plan(peak)])
    assert resolve.checkpointing(recipe) is on


def test_auto_checkpointing_plans_the_real_recipe_and_honours_true_false(recipe) -> None:
    import dataclasses

    assert resolve.checkpointing(recipe) is False  # a tiny model fits any machine
    for value in (True, False):
        train = dataclasses.replace(recipe.train, gradient_checkpointing=value)
        assert resolve.checkpointing(dataclasses.replace(recipe, train=train)) is value


def test_auto_checkpointing_is_on_when_the_task_cannot_be_planned(recipe, monkeypatch) -> None:
    from adapterkit.planning import memory

    def cannot(*_: object) -> None:
        raise ValueError("task 'x' has no meta_model")

    monkeypatch.setattr(memory, "from_recipe", cannot)
    assert resolve.checkpointing(recipe) is True
