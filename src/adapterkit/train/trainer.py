"""The one training loop every strategy and task shares (accelerate, single process).

It knows nothing about strategies: it trains whatever parameters have `requires_grad=True`, asks the
caller for the tensors that form the adapter (`adapter_tensors`), and lets the caller write them
(`save_adapter`). It knows tasks only through the Task protocol (collate, targets, loss, evaluate).

Files written under `out_dir` (the caller's `save_adapter` adds the adapter files next to them):
    log.jsonl        one line per logged step, one per evaluation
    metrics.json     the run's figures, each defined in its "definitions"
    best/            the adapter with the best eval metric (when there is eval data)
    checkpoints/     step-NNNNNN/ every `checkpoint_every` steps, the last `keep_checkpoints` kept

Resuming (`resume=` a loaded checkpoint) restores the trainable weights, optimizer and scheduler,
every RNG, the data position, the best-adapter bookkeeping and the recent losses, so a resumed run
ends bit for bit where an uninterrupted one would (same machine, same thread count).

Stopping: SIGINT/SIGTERM finish the current step, write a checkpoint and raise TrainingInterrupted;
a non-finite loss or gradient, or running out of memory, raise TrainingError before the optimizer
step, so the last checkpoint on disk is the last good state.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import (
    DataError,
    OutOfMemoryError,
    PluginError,
    TrainingError,
    TrainingInterrupted,
)
from adapterkit.storage import faults
from adapterkit.storage.adapter_format import check_tensors
from adapterkit.storage.atomic import json_safe, write_json
from adapterkit.storage.checkpoints import save_checkpoint, set_rng_state
from adapterkit.strategy import trainable_named_parameters
from adapterkit.train.config import DEFINITIONS, TrainConfig
from adapterkit.train.measure import (
    MemoryMeter,
    parameter_counts,
    release_freed_memory,
    rss_anon_bytes,
    rss_file_bytes,
)
from adapterkit.train.stops import StopSignals, is_out_of_memory, out_of_memory_advice, trim_log

_logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


# ---- helpers the loop uses -----------------------------------------------------------------------


def check_adapter_matches_trainable(
    model: nn.Module, adapter_tensors: Callable[[nn.Module], dict[str, Tensor]]
) -> None:
    """Raise unless the adapter's tensors are exactly the trainable parameters.

    Compared by storage and shape, so a tied weight counts once and a copy does not pass for the
    parameter. A mismatch means the strategy would save weights that did not train, or train
    weights that are never saved: both lose work silently, so it is an error before step 1.
    """
    trainable = {(p.data_ptr(), tuple(p.shape)): n for n, p in trainable_named_parameters(model)}
    saved: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in adapter_tensors(model).items():
        saved.setdefault((t.data_ptr(), tuple(t.shape)), name)
    not_saved = sorted(n for k, n in trainable.items() if k not in saved)
    not_trained = sorted(n for k, n in saved.items() if k not in trainable)
    if not_saved or not_trained:
        lines = [
            "the strategy's adapter tensors are not exactly the trainable parameters "
            "(a bug in the strategy):"
        ]
        if not_saved:
            lines.append(f"  trainable but not saved: {', '.join(not_saved[:10])}")
        if not_trained:
            lines.append(f"  saved but not trained: {', '.join(not_trained[:10])}")
        raise PluginError("\n".join(lines))


def accumulate_gradients(
    model: nn.Module,
    task: Any,
    batches: list[dict[str, Tensor]],
    backward: Callable[[Tensor], None] | None = None,
) -> tuple[float, int]:
    """Backward over one optimizer step's micro-batches; returns (mean loss per target, targets).

    Each summed micro-batch loss is divided by the target count of the whole window, not of its
    own micro-batch, so the gradient is the mean over every target of the step: batch size 4 with
    no accumulation and batch size 1 accumulated 4 times give the same gradient.
    """
    total = max(1, sum(task.targets(b) for b in batches))
    step_loss = 0.0
    for b in batches:
        loss = task.loss(model, b) / total
        if backward is None:
            loss.backward()
        else:
            backward(loss)
        step_loss += float(loss.detach())
    return step_loss, total


def _accelerator(precision: str) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    mixed = "bf16" if precision == "bf16" else "no"
    try:
        return Accelerator(mixed_precision=mixed, cpu=not cuda)
    except ValueError:
        # accelerate keeps one process-wide state; a second fit() in the same process with another
        # precision (tests, notebooks) needs it cleared. Single process, so nothing else shares it.
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed, cpu=not cuda)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    import torch

    # Exactly the trainable parameters; no weight decay on vectors (biases, norm scales), as usual.
    named = list(trainable_named_parameters(model))
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _scheduler(optimizer: Any, cfg: TrainConfig, total_steps: int) -> Any:
    """Linear warmup from 0, then linear decay to 0, half a cosine to 0, or constant.

    The same curves as transformers' schedulers, on torch's LambdaLR: importing those would pull
    in peft and bitsandbytes (seconds) for strategies that use neither.
    """
    import torch

    warmup = cfg.warmup
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / decay)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed(value: int) -> None:
    """Seed python, numpy and torch (every device)."""
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device


def _windows(
    n: int, cfg: TrainConfig, epoch: int = 0, next_batch: int = 0
) -> Iterator[tuple[int, int, list[list[int]]]]:
    """Forever: (epoch, index of the first batch, the window's batches as example indices).

    Each epoch is a fresh shuffle seeded by seed + epoch, so the order is reproducible from the
    data position alone: a resume starts at (`epoch`, `next_batch`). A window (one optimizer step)
    never spans two epochs.
    """
    import torch

    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        order = order.tolist()
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for start in range(next_batch, len(batches), cfg.grad_accum):
            yield epoch, start, batches[start : start + cfg.grad_accum]
        epoch, next_batch = epoch + 1, 0


# ---- the loop ------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    task: Any,
    task_options: Any,
    train_examples: list[dict],
    eval_examples: list[dict] | None,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    tokenizer: Any,
    adapter_tensors: Callable[[nn.Module], dict[str, Tensor]],
    save_adapter: Callable[[nn.Module, Path], int],
    progress: bool = True,
    resume: dict[str, Any] | None = None,
    load_adapter: Callable[[nn.Module, dict[str, Tensor]], None] | None = None,
    run_state: dict[str, Any] | None = None,
    resume_hint: str = "run the same command again with --resume",
) -> dict[str, Any]:
    """Train `model`'s trainable parameters on `train_examples`; returns (and writes) the metrics.

    `resume`: a checkpoint from `checkpoints.load_checkpoint`, continued from; its tensors go into
    the model through `load_adapter` (the strategy's loader). `run_state` is stored in every
    checkpoint's trainer_state.json (the caller keeps the resolved recipe there, to compare on
    resume). `resume_hint` ends the message of an interrupted run.
    """
    import torch
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train_examples:
        raise DataError("no training examples left after encoding; check the data and max_length")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed(cfg.seed)

    accelerator = _accelerator(cfg.precision)
    if cfg.release_memory and accelerator.device.type == "cpu" and not release_freed_memory():
        _logger.warning("train.release_memory: this C library has no mallopt (not glibc); ignored")
    if not any(True for _ in trainable_named_parameters(model)):
        raise TrainingError("the model has no trainable parameters; the strategy froze everything")
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing (transformers' default), so frozen embeddings need no trick;
        # peft wrappers forward the call to the underlying transformers model.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is None:  # transformers < 5 names it gradient_checkpointing_enable
            enable = model.gradient_checkpointing_enable
        try:
            enable()
        except ValueError as exc:  # "X does not support activation checkpointing"
            raise TrainingError(f"{exc}; set train.gradient_checkpointing=false") from exc

    # Optimizer over exactly the trainable parameters; schedule length in optimizer steps.
    optimizer = _optimizer(model, cfg)
    n_batches = math.ceil(len(train_examples) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = _scheduler(optimizer, cfg, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device
    bare = accelerator.unwrap_model(model)

    # Checked after `prepare`, which may move parameters: the same storages must train and be saved.
    check_adapter_matches_trainable(bare, adapter_tensors)

    def to_device(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(device) for k, v in batch.items()}

    eval_bs = cfg.eval_batch_size or cfg.batch_size
    eval_batches = [
        task.collate(eval_examples[i : i + eval_bs], tokenizer, task_options)
        for i in range(0, len(eval_examples or []), eval_bs)
    ]

    log_path = out_dir / "log.jsonl"
    if resume is None:
        log_path.write_text("")
    else:
        trim_log(log_path, int(resume["state"]["step"]))

    def log(record: dict[str, Any]) -> None:
        # Opened per line so that the file is complete whenever training stops, even by a crash.
        with log_path.open("a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    best_dir = out_dir / "best"
    best_value: float | None = None
    best_eval: dict[str, Any] | None = None
    best_step: int | None = None
    last_eval: dict[str, Any] | None = None
    last_eval_step = -1
    bad_evals = 0

    def run_eval(step: int) -> bool:
        """Evaluate, keep the best adapter; True when patience has run out."""
        nonlocal best_value, best_eval, best_step, last_eval, last_eval_step, bad_evals
        model.eval()
        with torch.no_grad():
            metrics = task.evaluate(model, [to_device(b) for b in eval_batches], task_options)
        model.train()
        last_eval, last_eval_step = metrics, step
        log({"step": step, "eval": metrics, "elapsed": time.perf_counter() - started})
        value = float(metrics[task.selection_metric])
        better = best_value is None or (
            value > best_value if task.higher_is_better else value < best_value
        )
        if math.isfinite(value) and better:
            best_value, best_eval, best_step, bad_evals = value, metrics, step, 0
            best_dir.mkdir(exist_ok=True)
            save_adapter(bare, best_dir)
        else:
            bad_evals += 1
        return cfg.patience is not None and bad_evals >= cfg.patience

    # The "before" figure: the model as the strategy prepared it (LoRA starts as the identity).
    # Log-only: it is not a candidate for best/, which holds trained adapters.
    initial_eval: dict[str, Any] | None = None
    if eval_batches and cfg.eval_at_start and resume is None:
        model.eval()
        with torch.no_grad():
            initial_eval = task.evaluate(model, [to_device(b) for b in eval_batches], task_options)
        log({"step": 0, "eval": initial_eval, "elapsed": time.perf_counter() - started})

    # Memory: what loading cost is the high-water mark so far; reset it so the training peak is
    # the training steps' own (on CPU via /proc/self/clear_refs, on CUDA the allocator's stats).
    meter = MemoryMeter(device)
    load_peak = meter.reset()

    was_training = model.training
    model.train()
    losses: list[float] = []
    step = 0
    epoch = position = 0
    tokens_total = 0
    train_time = 0.0
    stopped_early = False
    if resume is not None:
        st = resume["state"]
        step, epoch, position = int(st["step"]), int(st["epoch"]), int(st["next_batch"])
        best_value, best_step, bad_evals = st["best_value"], st["best_step"], st["bad_evals"]
        best_eval, initial_eval = st.get("best_eval"), st.get("initial_eval")
        last_eval, last_eval_step = st.get("last_eval"), int(st.get("last_eval_step", -1))
        losses = [float(x) for x in st.get("recent_losses", [])]
        tokens_total, train_time = int(st.get("tokens", 0)), float(st.get("train_time_s", 0.0))
        expected = adapter_tensors(bare)
        check_tensors(resume["tensors"], expected, str(resume.get("path", "checkpoint")))
        if load_adapter is None:
            raise TypeError("fit(resume=...) needs load_adapter to put the weights back")
        load_adapter(bare, resume["tensors"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])  # last, so nothing above draws from the restored streams
    windows = _windows(len(train_examples), cfg, epoch, position)

    def checkpoint() -> Path:
        state = {
            "step": step,
            "epoch": epoch,
            "next_batch": position,
            "seed": cfg.seed,
            "best_value": best_value,
            "best_step": best_step,
            "best_eval": best_eval,
            "bad_evals": bad_evals,
            "initial_eval": initial_eval,
            "last_eval": last_eval,
            "last_eval_step": last_eval_step,
            "recent_losses": losses[-10:],
            "tokens": tokens_total,
            "train_time_s": train_time,
            "config": asdict(cfg),
            **(run_state or {}),
        }
        return save_checkpoint(
            out_dir / "checkpoints",
            step,
            adapter_tensors(bare),
            optimizer,
            scheduler,
            state,
            cfg.keep_checkpoints,
        )

    def last_good() -> str:
        from adapterkit.storage.checkpoints import latest

        found = latest(out_dir / "checkpoints")
        return f"the last good checkpoint, {found}, is kept" if found else "no checkpoint was saved"

    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step")
    stop = StopSignals()
    try:
        stop.__enter__()
        while step < total_steps:
            epoch, first, window = next(windows)
            t0 = time.perf_counter()
            try:
                batches = [
                    to_device(
                        task.collate([train_examples[j] for j in idx], tokenizer, task_options)
                    )
                    for idx in window
                ]
                step_loss, _ = accumulate_gradients(model, task, batches, accelerator.backward)
                if not math.isfinite(step_loss):
                    raise TrainingError(
                        f"diverged: the loss became {step_loss} at step {step + 1}; the step was "
                        f"not applied and {last_good()}. Lower train.lr, keep "
                        "train.max_grad_norm set, or use train.precision=fp32"
                    )
                params = [p for p in model.parameters() if p.grad is not None]
                if cfg.max_grad_norm is not None:
                    grad_norm = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
                else:  # no clipping, but the norm is still worth logging
                    grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
                if not math.isfinite(grad_norm):
                    raise TrainingError(
                        f"diverged: the gradient norm became {grad_norm} at step {step + 1}; the "
                        f"step was not applied and {last_good()}. Lower train.lr or use "
                        "train.precision=fp32"
                    )
                lr = float(scheduler.get_last_lr()[0])
                optimizer.step()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                optimizer.zero_grad(set_to_none=True)
                raise OutOfMemoryError(
                    f"out of memory at step {step + 1} on {device} ({str(exc).splitlines()[0]}); "
                    f"the step was not applied and {last_good()}. Try one of these overrides "
                    f"(`adapterkit plan` estimates what fits):\n{out_of_memory_advice(cfg)}"
                ) from exc
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            dt = time.perf_counter() - t0
            step += 1
            # Data position after this step: the epoch and the batch that comes next in it.
            position = first + len(window)
            if position >= n_batches:
                epoch, position = epoch + 1, 0
            train_time += dt
            tokens_total += tokens
            losses.append(step_loss)
            if step % cfg.log_every == 0 or step == total_steps:
                postfix = {
                    "loss": f"{step_loss:.4f}",
                    "lr": f"{lr:.2e}",
                    "tok_s": f"{tokens / dt:.0f}",
                }
                bar.set_postfix(postfix, refresh=False)  # shown by the update below
                log(
                    {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "loss": step_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": tokens,
                        "tokens_per_s": tokens / dt,
                        "elapsed": time.perf_counter() - started,
                    }
                )
            bar.update(1)
            faults.pause_after_step(step, lambda: stop.received is not None)
            if eval_batches and cfg.eval_every and step % cfg.eval_every == 0 and run_eval(step):
                stopped_early = True
                break
            saved = None
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                saved = checkpoint()
            if stop.received is not None:
                saved = saved or checkpoint()
                name = signal.Signals(stop.received).name
                raise TrainingInterrupted(
                    f"stopped by {name} after step {step} of {total_steps}; checkpoint written to "
                    f"{saved}. To continue: {resume_hint}",
                    stop.received,
                    str(saved),
                )
    finally:
        stop.__exit__()
        bar.close()
    peak = meter.peak()
    anon, file_rss = rss_anon_bytes(), rss_file_bytes()

    if eval_batches and last_eval_step != step:
        run_eval(step)
    model.train(was_training)

    adapter_bytes = save_adapter(bare, out_dir)
    tail = losses[-10:]
    metrics: dict[str, Any] = {
        "train_loss": sum(tail) / len(tail),
        "initial_eval": initial_eval,
        "final_eval": last_eval,
        "best_eval": best_eval,
        "best_step": best_step,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "stopped_early": stopped_early,
        "tokens": tokens_total,
        "tokens_per_s": tokens_total / train_time if train_time > 0 else 0.0,
        "train_time_s": train_time,
        "peak_memory_bytes": peak.bytes,
        "peak_memory_kind": peak.kind,
        "peak_memory_reset": peak.reset_done,
        "cuda_peak_reserved_bytes": peak.reserved_bytes,
        "load_peak_memory_bytes": load_peak.bytes,
        "rss_anon_bytes": anon,
        "rss_file_bytes": file_rss,
        **parameter_counts(bare),
        "adapter_bytes": adapter_bytes,
        "precision": "bf16" if accelerator.mixed_precision == "bf16" else "fp32",
        "device": str(device),
        "final_dir": ".",
        "best_dir": "best" if best_eval is not None else None,
        "wall_time_s": 0.0,
    }
    metrics["wall_time_s"] = time.perf_counter() - started
    metrics["definitions"] = DEFINITIONS
    write_json(out_dir / "metrics.json", metrics)
    # Leave the model as it came: without accelerate's autocast wrapper around forward.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    return metrics
