"""distributed.py in one process: the data layout, the shard arithmetic, the completeness check
before every adapter write, and the resume guard. The two-process runs are in
tests/system/test_distributed_training.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adapterkit.errors import PluginError, UserError
from adapterkit.training import distributed
from adapterkit.training.config import TrainConfig
from adapterkit.training.inputs import AdapterBinding
from adapterkit.training.optim import RunLength, data_windows
from adapterkit.training.step import accumulate_gradients


class SquaredError:
    """A task whose loss is summed over its rows' targets (as every task's is)."""

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        err = (model(batch["x"]) - batch["y"]).pow(2).sum(-1)
        return (err * batch["mask"]).sum()


def _batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "x": torch.randn(3, 4, generator=g),
            "y": torch.randn(3, 2, generator=g),
            "mask": (torch.rand(3, generator=g) > 0.3).float(),
        }
        for _ in range(n)
    ]


def test_shards_with_the_global_target_count_sum_to_one_process_gradient() -> None:
    """What two ranks do (each its batches r::2, divided by the whole window's targets, then
    the gradients summed) is the gradient one process takes over the whole window."""
    torch.manual_seed(0)
    model, task, batches = nn.Linear(4, 2), SquaredError(), _batches(5)  # 5: uneven shards
    loss_one, total = accumulate_gradients(model, task, batches)  # type: ignore[arg-type]
    whole = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    summed, loss_two = [torch.zeros_like(g) for g in whole], 0.0
    for rank in range(2):
        model.zero_grad(set_to_none=True)
        group = distributed.Group(rank=rank, world=2)
        shard = [batches[j] for (j,) in group.shard([[i] for i in range(5)])]
        loss, _ = accumulate_gradients(model, task, shard, total=total)  # type: ignore[arg-type]
        loss_two += loss
        for s, p in zip(summed, model.parameters(), strict=True):
            s += p.grad
    assert loss_two == pytest.approx(loss_one, rel=1e-6)
    for a, b in zip(whole, summed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_layout_is_one_process_with_processes_times_the_accumulation() -> None:
    cfg = TrainConfig(batch_size=2, grad_accum=3, max_steps=None, epochs=1.0)
    group = distributed.Group(rank=1, world=2)
    layout = group.layout(cfg)
    assert layout.grad_accum == 6 and cfg.grad_accum == 3
    assert RunLength.of(25, layout).steps_per_epoch == 3  # 13 batches of 2, 6 a step
    window = next(data_windows(25, layout))
    shards = [distributed.Group(rank=r, world=2).shard(window.batches) for r in (0, 1)]
    rows = [i for s in shards for b in s for i in b]
    assert sorted(rows) == sorted(i for b in window.batches for i in b)  # disjoint, complete
    assert len(set(rows)) == len(rows) == 12
    assert distributed.Group().layout(cfg) is cfg  # one process: untouched


def test_resume_needs_as_many_processes_as_wrote_the_checkpoint() -> None:
    two = distributed.Group(rank=0, world=2)
    assert two.state() == {"processes": 2} and distributed.Group().state() == {}
    two.check_resumable({"processes": 2}, "ckpt")
    distributed.Group().check_resumable({}, "ckpt")  # older, one-process checkpoints
    with pytest.raises(UserError, match=r"ckpt: written by 1 process\(es\), resumed with 2"):
        two.check_resumable({}, "ckpt")


def _binding(model: nn.Linear, keep: str, written: list[Path]) -> AdapterBinding:
    def tensors(m: nn.Module) -> dict[str, Any]:
        named = {"weight": model.weight, "bias": model.bias}
        return {k: v for k, v in named.items() if k in keep}

    def save(m: nn.Module, path: Path) -> int:
        written.append(path)
        return 1

    return AdapterBinding(tensors=tensors, save=save)


@pytest.mark.parametrize(
    ("keep", "message"),
    [("", "refusing to write an empty adapter"), ("weight", "trainable but not saved: bias")],
)
def test_an_empty_or_partial_adapter_is_refused_never_written(
    keep: str, message: str, tmp_path: Path
) -> None:
    model, written = nn.Linear(4, 2), []
    save = distributed.checked_save(_binding(model, keep, written), distributed.Group())
    with pytest.raises(PluginError, match=message):
        save(model, tmp_path)
    assert written == []


def test_a_complete_adapter_is_written_by_the_main_process_only(tmp_path: Path) -> None:
    model, written = nn.Linear(4, 2), []
    binding = _binding(model, "weight bias", written)
    assert distributed.checked_save(binding, distributed.Group())(model, tmp_path) == 1
    assert (
        distributed.checked_save(binding, distributed.Group(rank=1, world=2))(model, tmp_path) == 0
    )
    assert written == [tmp_path]


def test_gradient_buckets_keep_one_dtype_and_a_bounded_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distributed, "BUCKET", 10)
    params = [torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(3, dtype=torch.float16)]
    sizes = [[p.numel() for p in b] for b in distributed._buckets(params)]
    assert sizes == [[4, 4], [4], [3]]


def test_one_process_collectives_return_their_input() -> None:
    group = distributed.Group()
    assert group.sum([1.5, 2]) == [1.5, 2] and group.any(False) is False
    assert group.agree("x") == "x" and group.max(None) is None
    with pytest.raises(ValueError, match="boom"), group.guard("step 1"):
        raise ValueError("boom")
