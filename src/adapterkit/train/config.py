"""The recipe's `train` section, and the definitions of the figures a run reports.

Kept apart from the loop (trainer.py) so that recipes validate without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field


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
        Literal["fp32", "bf16", "auto"],
        Field(description="bf16 autocast or fp32; auto: bf16 on a CUDA GPU that supports it."),
    ] = "fp32"
    gradient_checkpointing: Annotated[
        bool, Field(description="Recompute activations in backward: less memory, slower.")
    ] = False
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


DEFINITIONS = {
    "train_loss": "Mean training loss per target token over the last 10 optimizer steps.",
    "initial_eval": "Eval metrics before the first step (the model as the strategy prepared it).",
    "final_eval": "Eval metrics of the final adapter (this directory).",
    "best_eval": "Eval metrics of the best adapter by the task's selection metric (best/).",
    "best_step": "Optimizer step at which the best adapter was saved.",
    "steps": "Optimizer steps taken.",
    "epochs": "Passes over the training data taken (steps / steps per epoch).",
    "tokens": "Non-padding tokens (attention mask) in all training batches.",
    "tokens_per_s": "Non-padding tokens trained per second of training steps (no loading, eval).",
    "train_time_s": "Seconds spent in training steps (batching, forward, backward, optimizer).",
    "wall_time_s": "Seconds from the start of fit() to metrics.json, evals and saving included.",
    "peak_memory_bytes": (
        "Peak memory during the training steps: the CUDA allocator's max allocated bytes on a GPU, "
        "the process's peak resident set (VmHWM, reset before the first step) on CPU."
    ),
    "peak_memory_kind": "What peak_memory_bytes measures: cuda_allocated or process_rss.",
    "peak_memory_reset": "False when the CPU high-water mark could not be reset (peak since start).",
    "cuda_peak_reserved_bytes": "Peak bytes reserved by the CUDA caching allocator (GPU only).",
    "load_peak_memory_bytes": "The same peak before training: loading, preparing, initial eval.",
    "rss_anon_bytes": "Resident anonymous memory (tensors, heap) right after the training steps.",
    "rss_file_bytes": "Resident file-backed memory (mapped weights, libraries) after training.",
    "trainable_params": "Parameters that train, each storage once.",
    "total_params": "All parameters, each storage once, 4-bit weights at their logical size.",
    "trainable_percent": "trainable_params as a percentage of total_params.",
    "adapter_bytes": "Bytes of the saved final adapter.",
    "precision": "Arithmetic the training ran in: fp32, or bf16 autocast (fp32 master weights).",
    "device": "The device the model trained on.",
    "stopped_early": "True when training stopped because eval did not improve for `patience` evals.",
}
