"""The one training loop every strategy and task shares (accelerate; one process or several).

It trains whatever parameters a strategy left trainable, through the Task protocol, and reaches the
strategy only through an AdapterBinding (which tensors form the adapter, how to save and reload it).
Files written under `out_dir` (the binding's `save` adds the adapter files next to them):
    log.jsonl        one line per logged step, one per evaluation
    metrics.json     the run's figures, each defined in its "definitions"
    best/            the adapter with the best eval metric (when there is eval data)
    checkpoints/     step-NNNNNN/ every `checkpoint_every` steps, the last `keep_checkpoints` kept
A resumed run restores the weights, optimizer, schedule, every RNG, the data position and the
LoopState, so it ends bit for bit where an uninterrupted one would (same machine and threads).
SIGINT/SIGTERM finish the step, checkpoint and raise TrainingInterrupted; a non-finite loss or
gradient, or running out of memory, raise TrainingError before the optimizer step.
Several processes (a launcher's WORLD_SIZE) train data-parallel: distributed.py says how.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError, TrainingError, TrainingInterrupted
from adapterkit.storage import faults
from adapterkit.storage.checkpoints import save_checkpoint, set_rng_state
from adapterkit.strategy import trainable_named_parameters
from adapterkit.task import generated_metrics, selection
from adapterkit.training import distributed, measure, optim, stops, tracking
from adapterkit.training.config import TrainConfig
from adapterkit.training.inputs import (
    AdapterBinding,
    Resume,
    TrainData,
    check_adapter_matches_trainable,
)
from adapterkit.training.metrics import RunMetrics
from adapterkit.training.optim import RunLength, Window, seed
from adapterkit.training.selection import BestAdapter
from adapterkit.training.state import LoopState
from adapterkit.training.step import StepStats, accumulate_gradients, gradient_norm

if TYPE_CHECKING:
    from torch import Tensor, nn
    from tqdm import tqdm


# Also imported from here by the API and the tests: the loop's public face.
__all__ = ["AdapterBinding", "Resume", "TrainConfig", "TrainData", "Trainer"]
__all__ += ["accumulate_gradients", "check_adapter_matches_trainable", "fit", "seed"]

_logger = logging.getLogger(__name__)

LOSS_FIX = "Lower train.lr, keep train.max_grad_norm set, or use train.precision=fp32"
GRAD_FIX = "Lower train.lr or use train.precision=fp32"


class Trainer:
    """One training run. The setup phases run in __init__, in order; run() reads top to bottom.

    `quantized_strategies`: the registered strategies whose base model is 4-bit, suggested when a
    step runs out of memory.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TrainData,
        adapter: AdapterBinding,
        cfg: TrainConfig,
        out_dir: Path,
        *,
        resume: Resume | None = None,
        progress: bool = True,
        quantized_strategies: Sequence[str] = (),
    ) -> None:
        self.started = time.perf_counter()
        self.model, self.data, self.adapter, self.cfg = model, data, adapter, cfg
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume or Resume()
        self.progress = progress
        self.oom_advice = stops.out_of_memory_advice(cfg, quantized_strategies)
        if not data.train:
            raise DataError(
                "no training examples left after encoding; check the data and max_length"
            )
        self._setup_runtime()
        if cfg.gradient_checkpointing is True:  # "auto" is the API's to decide; here: off
            optim.enable_gradient_checkpointing(self.model)
        self._setup_optimization()
        # Checked after `prepare`, which may move parameters: the same storages train and are saved.
        adapter.check_matches_trainable(self.bare)
        self.eval_batches = data.eval_batches(cfg.eval_batch_size or cfg.batch_size)
        self._setup_bookkeeping()
        if self.resume.checkpoint is not None:
            self._restore(self.resume.checkpoint)
        self.windows = optim.data_windows(
            len(data.train),
            self.group.layout(cfg),
            self.state.epoch,
            self.state.next_batch,
            optim.grouping_lengths(data, cfg),
        )

    # ---- setup phases ----------------------------------------------------------------------------

    def _setup_runtime(self) -> None:
        """Threads, seeds and the accelerator; refuses a model with nothing to train."""
        import torch

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed(cfg.seed + distributed.rank())  # rank 0 (one process): the recipe's seed
        self.accelerator = optim.make_accelerator(cfg.precision)
        self.device = self.accelerator.device
        self.group = distributed.Group.of(self.accelerator)
        if cfg.release_memory and self.device.type == "cpu" and not measure.release_freed_memory():
            _logger.warning(
                "train.release_memory: this C library has no mallopt (not glibc); ignored"
            )
        if not any(True for _ in trainable_named_parameters(self.model)):
            raise TrainingError(
                "the model has no trainable parameters; the strategy froze everything"
            )

    def _setup_optimization(self) -> None:
        """Optimizer over exactly the trainable parameters; schedule length in optimizer steps."""
        optimizer = optim.make_optimizer(self.model, self.cfg)
        self.length = RunLength.of(len(self.data.train), self.group.layout(self.cfg))
        scheduler = optim.make_scheduler(optimizer, self.cfg, self.length.total_steps)
        prepared = self.group.prepare(self.accelerator, self.model, optimizer, scheduler)
        self.model, self.optimizer, self.scheduler = prepared
        self.bare = self.accelerator.unwrap_model(self.model)  # what computes (distributed.py)
        self.params = [p for p in self.bare.parameters() if p.requires_grad]
        self.save = distributed.checked_save(self.adapter, self.group)

    def _setup_bookkeeping(self) -> None:
        """The loop state (a resumed run's from its checkpoint), log.jsonl and best/."""
        checkpoint, task = self.resume.checkpoint, self.data.task
        self.state = LoopState() if checkpoint is None else LoopState.from_json(checkpoint["state"])
        resume_step = None if checkpoint is None else self.state.step
        main, out, cfg = self.group.is_main, self.out_dir, self.cfg
        logs = tracking.RunLogs(out, resume_step, cfg, self.resume, self.device) if main else None
        self.log = logs or distributed.NoLogs()
        metric, higher_is_better = selection(task, self.data.task_options)
        self.best = BestAdapter(
            self.out_dir / "best",
            self.save,
            metric,
            higher_is_better,
            self.cfg.patience,
            record=self.state.best,
        )

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Put a checkpoint's weights, optimizer, schedule and RNG streams back."""
        where = str(checkpoint.get("path", "checkpoint"))
        self.group.check_resumable(checkpoint["state"], where)
        self.adapter.restore(self.bare, checkpoint["tensors"], where)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"])  # last, so nothing above draws from the restored streams

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> RunMetrics:
        """Train to the last step, or until patience runs out; write and return the metrics."""
        self._initial_eval()
        meter = measure.MemoryMeter(self.device)
        load_peak = meter.reset()  # loading's peak; from here on, the training steps' own
        was_training = self.model.training
        self.model.train()
        stopped_early = False
        with self._progress_bar() as bar, stops.StopSignals() as stop:
            while self.state.step < self.length.total_steps:
                window = next(self.windows)
                stats = self._train_step(window)  # raises before optimizer.step on nan/inf/OOM
                self.state.advance(window, self.length.n_batches, stats)
                self._log_step(stats, bar)
                faults.pause_after_step(self.state.step, lambda: stop.received is not None)
                step = self.state.step
                if self.eval_batches and _due(step, self.cfg.eval_every) and self._evaluate():
                    stopped_early = True  # patience has run out
                    break
                saved = self._save_checkpoint() if _due(step, self.cfg.checkpoint_every) else None
                if self.group.any(stop.received is not None):  # on any process: on every one
                    self._interrupted(stop.received or signal.SIGTERM, saved)
        memory = self.group.max_memory(measure.memory_figures(meter.peak(), load_peak))
        if self.eval_batches and self.state.last_eval_step != self.state.step:
            self._evaluate()  # the final adapter's figure
        self.model.train(was_training)
        return self._finish(memory, stopped_early)

    def _train_step(self, window: Window) -> StepStats:
        """One optimizer step over this process's share of the window's batches (all of them on
        one process); raises before optimizer.step on nan/inf/OOM, on every process alike."""
        started = time.perf_counter()
        step, kept, group, task = self.state.step + 1, self._last_good, self.group, self.data.task
        where = f"step {step} on {self.device}{group.where}"
        oom = stops.OutOfMemoryStop(where, kept, self.oom_advice, self._drop_gradients)
        with group.guard(f"step {step}"), oom:
            seed, epoch = self.cfg.seed, window.epoch
            shard = group.shard(window.batches)
            batches = [self._to_device(self.data.batch(i, seed, epoch)) for i in shard]
            local = [sum(task.targets(b) for b in batches)]
        total = max(1, int(group.sum(local)[0]))  # the whole window's targets
        with group.guard(f"step {step}"), oom:
            backward = self.accelerator.backward
            autocast = lambda: self.accelerator.autocast()  # noqa: E731
            loss, _ = accumulate_gradients(self.bare, task, batches, backward, autocast, total)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        loss, tokens = group.sum([loss, tokens])  # one process: unchanged
        with oom:
            group.share_gradients(self.params)
            stops.ensure_finite(loss, "the loss", step, kept, LOSS_FIX)
            norm = gradient_norm(self.bare, self.accelerator, self.cfg.max_grad_norm)
            if self.accelerator.scaler is None:  # fp16's scaler skips an overflowed step itself
                norm = stops.ensure_finite(norm, "the gradient norm", step, kept, GRAD_FIX)
        with group.guard(f"step {step}"), oom:
            lr = float(self.scheduler.get_last_lr()[0])
            self.optimizer.step()
        self.scheduler.step()
        self._drop_gradients()
        return StepStats(loss, lr, norm, int(tokens), time.perf_counter() - started)

    def _log_step(self, stats: StepStats, bar: tqdm) -> None:
        """Every `log_every` steps and at the last: a log.jsonl line and the progress bar's figures."""
        step = self.state.step
        if step % self.cfg.log_every == 0 or step == self.length.total_steps:
            bar.set_postfix(stats.postfix(), refresh=False)  # shown by the update below
            epoch = step / self.length.steps_per_epoch
            self.log.write(stats.record(step, epoch, self._elapsed()))
        bar.update(1)

    # ---- evaluation ------------------------------------------------------------------------------

    def _eval_metrics(self) -> dict[str, Any]:
        """The task's metrics over every eval batch (the model left in eval mode)."""
        import torch

        self.model.eval()
        data = self.data
        with torch.no_grad(), self.accelerator.autocast():
            batches = [self._to_device(b) for b in self.eval_batches]
            metrics = data.task.evaluate(self.bare, batches, data.task_options)
            gen = generated_metrics(
                data.task, self.bare, data.tokenizer, data.eval or [], data.task_options
            )
            return {**metrics, **gen}

    def _initial_eval(self) -> None:
        """The "before" figure of a fresh run: the model as the strategy prepared it (a low-rank
        adapter starts as the identity). Log-only: not a candidate for best/ (trained adapters)."""
        if self.eval_batches and self.cfg.eval_at_start and self.resume.checkpoint is None:
            self.state.initial_eval = self._eval_metrics()
            self.log.write({"step": 0, "eval": self.state.initial_eval, "elapsed": self._elapsed()})

    def _evaluate(self) -> bool:
        """Evaluate at this step, keep the best adapter; True when patience has run out."""
        metrics = self._eval_metrics()
        self.model.train()
        step = self.state.step
        self.state.last_eval, self.state.last_eval_step = metrics, step
        self.log.write({"step": step, "eval": metrics, "elapsed": self._elapsed()})
        with self.group.guard(f"the evaluation at step {step}"):  # best/: written by the main
            out_of_patience = self.best.update(self.bare, metrics, step)
        return self.group.agree(out_of_patience)

    # ---- checkpoints, stops and the end ----------------------------------------------------------

    def _save_checkpoint(self) -> Path:
        """The main process writes the checkpoint; every process returns its path."""
        state = self.state.to_json(self.cfg, {**self.resume.run_state, **self.group.state()})
        saved = None
        with self.group.guard(f"the checkpoint at step {self.state.step}"):
            if self.group.is_main:
                saved = save_checkpoint(
                    self.out_dir / "checkpoints",
                    self.state.step,
                    self.adapter.tensors(self.bare),
                    self.optimizer,
                    self.scheduler,
                    state,
                    self.cfg.keep_checkpoints,
                )
        return Path(self.group.agree(str(saved)))

    def _interrupted(self, signum: int, saved: Path | None) -> None:
        """Raise TrainingInterrupted for `signum`, checkpointing first unless this step just did."""
        saved = saved or self._save_checkpoint()
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} after step {self.state.step} of "
            f"{self.length.total_steps}; checkpoint written to {saved}. "
            f"To continue: {self.resume.hint}",
            signum,
            str(saved),
        )

    def _finish(self, memory: measure.MemoryFigures, stopped_early: bool) -> RunMetrics:
        """Save the final adapter, write metrics.json, and hand the model back unwrapped."""
        self.log.close()  # the trackers, before the save moves the run's files
        with self.group.guard("saving the adapter"):  # checked, then written by the main
            adapter_bytes = self.save(self.bare, self.out_dir)
        state = self.state
        metrics = RunMetrics(
            train_loss=state.train_loss,
            initial_eval=state.initial_eval,
            final_eval=state.last_eval,
            best_eval=state.best.eval,
            best_step=state.best.step,
            steps=state.step,
            epochs=state.step / self.length.steps_per_epoch,
            stopped_early=stopped_early,
            tokens=state.tokens,
            tokens_per_s=state.tokens / state.train_time_s if state.train_time_s > 0 else 0.0,
            train_time_s=state.train_time_s,
            **memory,
            **measure.parameter_counts(self.bare),
            adapter_bytes=adapter_bytes,
            precision=self._precision(),
            device=str(self.device),
            final_dir=".",
            best_dir="best" if self.best.saved else None,
            wall_time_s=time.perf_counter() - self.started,
        )
        if self.group.is_main:
            metrics.write(self.out_dir)
        # Leave the model as it came: without accelerate's autocast wrapper around forward.
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        return metrics

    # ---- small helpers ---------------------------------------------------------------------------

    def _progress_bar(self) -> tqdm:
        from tqdm.auto import tqdm

        total, step = self.length.total_steps, self.state.step
        off = not (self.progress and self.group.is_main)
        return tqdm(total=total, initial=step, disable=off, desc="train", unit="step")

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _precision(self) -> str:
        """metrics.json's "precision": the arithmetic the run trained in."""
        mixed = self.accelerator.mixed_precision
        return mixed if mixed in ("bf16", "fp16") else "fp32"

    def _drop_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _last_good(self) -> str:
        return stops.last_good(self.out_dir / "checkpoints")

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started


def _due(step: int, every: int | None) -> bool:
    """Whether something done `every` steps (None: never) is due at `step`."""
    return bool(every) and step % every == 0


def fit(
    model: nn.Module,
    data: TrainData,
    adapter: AdapterBinding,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    resume: Resume | None = None,
    progress: bool = True,
    quantized_strategies: Sequence[str] = (),
) -> dict[str, Any]:
    """Train `model`'s trainable parameters on `data`; returns (and writes) metrics.json's dict.

    `resume`: how the run continues (a checkpoint from `checkpoints.load_checkpoint`, the run
    state stored in every checkpoint, the hint that ends an interrupted run's message).
    `quantized_strategies`: the strategies with a 4-bit base, suggested when a step runs out of
    memory.
    """
    trainer = Trainer(
        model,
        data,
        adapter,
        cfg,
        out_dir,
        resume=resume or Resume(),
        progress=progress,
        quantized_strategies=quantized_strategies,
    )
    return trainer.run().to_json()
