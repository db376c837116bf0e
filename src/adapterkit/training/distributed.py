"""Data-parallel training: several processes, through accelerate over torch.distributed.

gloo on CPU, nccl on CUDA.

A run is multi-process when a launcher set WORLD_SIZE > 1 (`accelerate launch`, `torchrun`, or
`adapterkit train --num-processes N`, which starts torch elastic itself). Then:

- every optimizer step's window holds `grad_accum x processes` batches of `batch_size` (the data
  order is one process's with that many batches per step); process r takes batches r, r+N, ...:
  disjoint, seeded, and resumable from the same (epoch, next batch) position;
- the loss is divided by the target count of the whole global window (an all-reduce of every
  process's count), and the gradients are summed over processes (one all-reduce per step, after
  the local micro-batches): the same gradient as one process taking the whole window;
- the gradients are summed explicitly rather than by torch's DDP wrapper: a task may compute its
  loss through the model's submodules, which DDP's reducer never sees, and its buckets would hold
  a second copy of every gradient (accelerate places the model and gives it the autocast forward;
  rank 0's trainable weights are broadcast at the start);
- every decision is taken from all-reduced figures, so all processes take it at the same step:
  a non-finite loss or norm, patience, a stop signal on any rank (`any`), a failure on any rank
  (`guard`: each process raises, the failed one its own error, the others a TrainingError naming
  the rank and the cause);
- only the main process writes (the adapter, best/, checkpoints, logs, trackers, the progress bar).

With one process every member below is a no-op that returns its input: the loop is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from adapterkit.errors import PluginError, TrainingError, TrainingInterrupted, UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.training.config import TrainConfig
    from adapterkit.training.inputs import AdapterBinding

T = TypeVar("T")
BUCKET = 1 << 25  # elements per gradient all-reduce (128 MiB of fp32)


def world_size() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    return rank() == 0


def start() -> None:
    """Join the process group (accelerate's shared state), once; nothing with one process."""
    if world_size() > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def _broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def prepare_run_dir(out_dir: Path, overwrite: bool, resume: bool) -> Path | None:
    """`run_dir.prepare_out_dir` on the main process only (it may delete an older run); the
    others wait for it and get its answer: the checkpoint to resume from, or its UserError."""
    from adapterkit.storage.run_dir import prepare_out_dir, recover_run_dir

    if world_size() == 1:
        recover_run_dir(out_dir)
        return prepare_out_dir(out_dir, overwrite, resume)
    start()
    found, error = None, None
    if is_main_process():
        try:
            recover_run_dir(out_dir)
            found = prepare_out_dir(out_dir, overwrite, resume)
        except UserError as exc:
            error = str(exc)
    found, error = _broadcast((None if found is None else str(found), error))
    if error is not None:
        raise UserError(error)
    return None if found is None else Path(found)


@dataclass(frozen=True)
class Group:
    """The processes of a run, as the loop sees them (one process: every member a no-op)."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"

    @classmethod
    def of(cls, accelerator: Any) -> Group:
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def where(self) -> str:
        """Appended to "step S on DEVICE" in messages: which process."""
        return f" (rank {self.rank} of {self.world})" if self.world > 1 else ""

    def layout(self, cfg: TrainConfig) -> TrainConfig:
        """The run's data layout: one process's, with `grad_accum x processes` batches a step."""
        return cfg if self.world == 1 else replace(cfg, grad_accum=cfg.grad_accum * self.world)

    def shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This process's batches of a step's window: r, r+N, r+2N, ..."""
        return batches if self.world == 1 else batches[self.rank :: self.world]

    def prepare(self, accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any) -> Any:
        """`accelerator.prepare` of the three. Several processes: the model is placed and given
        the autocast forward but not wrapped in DDP (its reducer would see no forward, and its
        buckets would hold a second copy of every gradient); rank 0's trainable weights are
        broadcast, and the scheduler steps once per optimizer step (accelerate steps it once
        per process, for a loader it shards itself)."""
        if self.world == 1:
            return accelerator.prepare(model, optimizer, scheduler)
        import torch.distributed as dist

        model = accelerator.prepare_model(model, evaluation_mode=True)
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
        scheduler.split_batches = True
        return model, optimizer, scheduler

    def state(self) -> dict[str, Any]:
        """Kept in every checkpoint of a multi-process run: the number of processes."""
        return {} if self.world == 1 else {"processes": self.world}

    def check_resumable(self, state: dict[str, Any], where: str) -> None:
        """A UserError unless the checkpoint was written with as many processes as run now."""
        saved = int(state.get("processes", 1))
        if saved != self.world:
            raise UserError(
                f"{where}: written by {saved} process(es), resumed with {self.world}; the data "
                f"order depends on it: resume with --num-processes {saved}"
            )

    # ---- collectives ---------------------------------------------------------------------------

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each of `values` summed over the processes (float64)."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def max(self, value: int | None) -> int | None:
        """The largest of every process's `value` (None where every one is None)."""
        if self.world == 1:
            return value
        (top,) = self.sum_max([-1 if value is None else value])
        return None if top < 0 else int(top)

    def sum_max(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [float(v) for v in t.tolist()]

    def max_memory(self, figures: T) -> T:
        """A run's memory figures (measure.MemoryFigures) with each peak the largest over the
        processes: the peak of the device that needed most."""
        if self.world > 1 and isinstance(figures, dict):
            for key in ("peak_memory_bytes", "cuda_peak_reserved_bytes", "load_peak_memory_bytes"):
                figures[key] = self.max(figures[key])
        return figures

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on one."""
        return flag if self.world == 1 else self.sum_max([float(flag)])[0] > 0

    def agree(self, value: T) -> T:
        """Rank 0's `value` everywhere (a decision every process must take alike)."""
        return value if self.world == 1 else _broadcast(value)

    def share_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Sum every parameter's gradient over the processes. A parameter with no gradient on
        any process keeps none (the optimizer skips it, as on one process)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        has = torch.tensor([p.grad is not None for p in params], device=self.device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        for bucket in _buckets(live):
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                part = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is None:
                    p.grad = part.clone()
                else:
                    p.grad.copy_(part)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the block on every process; when it raises on any, every process raises: the
        failed ones their own error, the others a TrainingError naming the first failed rank and
        its cause. No collective may run inside the block (one process would wait for ever)."""
        if self.world == 1:
            yield
            return
        error: Exception | None = None
        try:
            yield
        except Exception as exc:
            error = exc
        if not self.any(error is not None):
            return
        import torch.distributed as dist

        causes: list[Any] = [None] * self.world
        mine = None if error is None else f"{type(error).__name__}: {error}"
        dist.all_gather_object(causes, mine)
        if error is not None:
            raise error
        first = next(r for r, c in enumerate(causes) if c is not None)
        raise TrainingError(f"rank {first} of {self.world} failed at {what}: {causes[first]}")


def _buckets(params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """`params` in runs of one dtype of at most BUCKET elements (one all-reduce each)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        if bucket and (p.dtype != bucket[0].dtype or size + p.numel() > BUCKET):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


class NoLogs:
    """A non-main process's logs: it writes nothing (tracking.RunLogs' interface)."""

    def write(self, record: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


def checked_save(adapter: AdapterBinding, group: Group) -> Callable[[nn.Module, Path], int]:
    """The adapter's `save`, run on the main process only, after checking on the state it is
    about to write that the adapter is complete: not empty, and exactly the trainable
    parameters (by storage and shape); an incomplete adapter is an error, never written."""
    from adapterkit.strategy import trainable_named_parameters

    def save(model: nn.Module, directory: Path) -> int:
        tensors = adapter.tensors(model)
        if not tensors or not any(True for _ in trainable_named_parameters(model)):
            raise PluginError(
                f"refusing to write an empty adapter to {directory}: the strategy's adapter "
                "state has no tensors (a bug in the strategy, or a sharded state not gathered)"
            )
        adapter.check_matches_trainable(model)
        return adapter.save(model, directory) if group.is_main else 0

    return save


def launch(processes: int, argv: Sequence[str]) -> None:
    """Run `python -m adapterkit <argv>` in `processes` processes on this machine through torch
    elastic (torchrun's launcher, as `accelerate launch` uses it); a TrainingError with the first
    failed rank's exit status when one fails (its own message is on stderr above)."""
    import sys

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default would be 1 thread each
        per_process = max(1, (os.cpu_count() or 1) // processes)
        os.environ["OMP_NUM_THREADS"] = str(per_process)
    options = ["--standalone", f"--nproc-per-node={processes}", "--max-restarts=0"]
    args = torchrun.get_args_parser().parse_args([*options, "--module", "adapterkit", *argv])
    try:
        torchrun.run(args)
    except SignalException as exc:  # the launcher was signalled: it passed the signal on
        raise TrainingInterrupted(
            f"stopped by {exc.sigval.name}; every process finished its step and the main one "
            "wrote a checkpoint (its message is above). To continue: the same command with --resume",
            int(exc.sigval),
            "",
        ) from None
    except ChildFailedError as exc:
        failed, failure = exc.get_first_failure()
        code = failure.exitcode
        cause = f"exit status {code}" if code >= 0 else f"signal {-code}"
        error = TrainingError(
            f"rank {failed} of {processes} stopped ({cause}); every process has stopped; "
            "its message is above"
        )
        error.exit_code = code if 0 < code < 256 else 1
        sys.stdout.flush()
        raise error from None
