"""The recipe's `train` section.

Kept apart from the loop (trainer.py) so that recipes validate without importing it. The figures
a run reports are defined next to their fields, in metrics.py (RunMetrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field


def _as_list(value: Any) -> Any:
    """`log_with: tensorboard` (or `train.log_with=tensorboard`) means a list of one."""
    return [value] if isinstance(value, str) else value


def _trackers(names: list[str]) -> list[str]:
    """Known, supported and installed trackers only (no torch import: checked by module)."""
    from adapterkit.training.tracking import check_trackers

    return check_trackers(names)


@dataclass
class TrainConfig:
    """The recipe's `train` section."""

    max_steps: Annotated[
        int | None,
        Field(ge=1, description="Optimizer steps to run; when set it replaces `epochs`."),
    ] = None
    epochs: Annotated[
        float, Field(gt=0, description="Passes over the training data (fractions allowed).")
    ] = 1.0
    batch_size: Annotated[int, Field(ge=1, description="Examples per forward pass.")] = 8
    grad_accum: Annotated[
        int, Field(ge=1, description="Forward passes accumulated into one optimizer step.")
    ] = 1
    lr: Annotated[float, Field(gt=0, description="Peak learning rate (AdamW).")] = 2e-4
    weight_decay: Annotated[
        float, Field(ge=0, description="AdamW weight decay (matrices only; not biases or norms).")
    ] = 0.0
    schedule: Annotated[
        Literal["linear", "cosine", "constant"],
        Field(description="Learning-rate decay after warmup."),
    ] = "linear"
    warmup: Annotated[int, Field(ge=0, description="Linear warmup steps from 0 to `lr`.")] = 0
    max_grad_norm: Annotated[
        float | None, Field(gt=0, description="Clip the gradient norm to this; None: no clipping.")
    ] = 1.0
    eval_every: Annotated[
        int | None, Field(ge=1, description="Evaluate every N steps; None: only at the end.")
    ] = None
    eval_at_start: Annotated[
        bool, Field(description="Evaluate once before the first step (the 'before' figure).")
    ] = True
    eval_batch_size: Annotated[
        int | None, Field(ge=1, description="Examples per eval batch; None: `batch_size`.")
    ] = None
    seed: Annotated[int, Field(description="Seed for initialisation, dropout and data order.")] = 0
    precision: Annotated[
        Literal["fp32", "bf16", "fp16", "auto"],
        Field(
            description="bf16 autocast, fp16 autocast with loss scaling (CUDA), or fp32; auto: "
            "bf16 on a GPU or CPU (AVX-512 BF16, AMX) that has it, fp16 on other CUDA GPUs."
        ),
    ] = "auto"
    gradient_checkpointing: Annotated[
        bool | Literal["auto"],
        Field(
            description="Recompute activations in backward: less memory, slower; auto: on when "
            "`plan` says the run would not fit in this machine's memory without it."
        ),
    ] = "auto"
    group_by_length: Annotated[
        bool,
        Field(
            description="Batches of similar lengths (seeded, resumable) for tasks that cannot "
            "pack rows: less padding, same examples per step for any batch_size x grad_accum."
        ),
    ] = True
    log_every: Annotated[int, Field(ge=1, description="Write a log line every N steps.")] = 1
    checkpoint_every: Annotated[
        int | None, Field(ge=1, description="Save a checkpoint every N steps; None: never.")
    ] = None
    keep_checkpoints: Annotated[
        int, Field(ge=1, description="How many of the newest checkpoints to keep.")
    ] = 2
    patience: Annotated[
        int | None,
        Field(ge=1, description="Stop after this many evaluations without improvement."),
    ] = None
    threads: Annotated[
        int | None, Field(ge=1, description="CPU threads for torch; None: torch's default.")
    ] = None
    release_memory: Annotated[
        bool,
        Field(
            description="CPU on glibc: give freed tensor memory back to the system at once "
            "(peak RSS as `plan` predicts it, about a third lower for LoRA; slower steps)."
        ),
    ] = False
    log_with: Annotated[
        list[str],
        BeforeValidator(_as_list),
        AfterValidator(_trackers),
        Field(
            description="Experiment trackers, through accelerate: tensorboard, mlflow, wandb "
            "(offline); logs under <out>/tracking/<tracker>/ (docs/tracking.md)."
        ),
    ] = field(default_factory=list)
