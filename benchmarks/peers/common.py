"""What every Trainer-based peer child shares, measured the way adapterkit's trainer measures.

* Tokens: the real (non-padding) tokens of each batch trained on, counted in `training_step`
  (the dataloader prefetches, so counting in the collator would count batches never used).
* Time: per optimizer step, from the Trainer's `on_step_begin` to `on_step_end` (forward, backward,
  clipping, optimizer; the batch is already collated then, a small advantage over adapterkit,
  whose step time includes collation).
* Memory: the peak resident set (VmHWM) of the training steps, the high-water mark reset through
  /proc/self/clear_refs when training begins, as adapterkit's MemoryMeter does on CPU.
* Eval: the mean loss per target token over the fixed eval slice, in file order, batches of 8.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from torch import nn
    from transformers import PreTrainedModel, TrainerCallback

    from peers.spec import Spec

IGNORE = -100
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Pre-tokenised examples ({"input_ids", "labels"}), with an all-ones attention mask added."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows]


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def peak_rss_bytes() -> int | None:
    """VmHWM: the process's peak resident set since start or the last reset."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def batch_tokens(inputs: dict[str, torch.Tensor]) -> int:
    """Real tokens: the attention mask's sum, or every position of a flattened (padding-free) row."""
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int(inputs["input_ids"].numel())


def batch_targets(inputs: dict[str, torch.Tensor]) -> int:
    """Positions with a next-token target (position t predicts label t+1)."""
    return int((inputs["labels"][:, 1:] != IGNORE).sum())


class StepMeter:
    """Per optimizer step: tokens, targets, loss (from training_step) and seconds (callbacks)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.pending: dict[str, float] = {"tokens": 0, "targets": 0, "loss": 0.0}
        self.t0 = 0.0
        self.load_peak: int | None = None
        self.train_peak: int | None = None
        self.reset_done = False

    def batch(self, inputs: dict[str, torch.Tensor], loss: float) -> None:
        self.pending["tokens"] += batch_tokens(inputs)
        self.pending["targets"] += batch_targets(inputs)
        self.pending["loss"] += loss

    def begin_training(self) -> None:
        self.load_peak = peak_rss_bytes()
        self.reset_done = reset_peak_rss()

    def begin_step(self) -> None:
        self.t0 = time.perf_counter()

    def end_step(self) -> None:
        seconds = time.perf_counter() - self.t0
        step = {"step": len(self.steps) + 1, **self.pending, "seconds": seconds}
        self.steps.append(step)
        self.pending = {"tokens": 0, "targets": 0, "loss": 0.0}

    def end_training(self) -> None:
        self.train_peak = peak_rss_bytes()


def meter_callback(meter: StepMeter) -> TrainerCallback:
    """A TrainerCallback driving `meter`."""
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.begin_training()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.begin_step()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.end_step()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.end_training()

    return Meter()


def counting_trainer(base: type, meter: StepMeter) -> type:
    """`base` (Trainer, SFTTrainer) with training_step reporting each batch to `meter`."""

    class Counting(base):  # type: ignore[misc, valid-type]
        def training_step(self, model: nn.Module, inputs: dict, *rest: Any, **kw: Any) -> Any:
            loss = super().training_step(model, inputs, *rest, **kw)
            meter.batch(inputs, float(loss))
            return loss

    return Counting


def trainer_arguments(spec: Spec, **extra: Any) -> dict[str, Any]:
    """TrainingArguments fields every peer shares: the recipe's numbers, file order, no saving."""
    args: dict[str, Any] = {
        "output_dir": str(Path(spec.out) / "hf"),
        "per_device_train_batch_size": spec.batch_size,
        "max_steps": spec.max_steps,
        "learning_rate": spec.lr,
        "lr_scheduler_type": spec.schedule,
        "warmup_steps": spec.warmup,
        "weight_decay": spec.weight_decay,
        "max_grad_norm": spec.max_grad_norm if spec.max_grad_norm is not None else 0.0,
        "seed": spec.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        # the file is already in adapterkit's step order: every peer sees the same 8 examples a step
        "train_sampling_strategy": "sequential",
    }
    args.update(extra)
    return args


def lora_config(spec: Spec) -> LoraConfig:
    """LoRA on every linear layer except the head (peft's "all-linear" leaves the output layer out)."""
    from peft import LoraConfig

    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    return LoraConfig(
        r=spec.r,
        lora_alpha=alpha,  # pyright: ignore[reportArgumentType]  (peft accepts a float too)
        lora_dropout=spec.dropout,
        target_modules="all-linear",
    )


def precision(spec: Spec) -> str:
    return "bf16" if spec.bf16 else "fp32"


def tuned_settings(spec: Spec) -> dict[str, Any]:
    """What the tuned peers (TRL, HF tuned) share, as the report lists it."""
    return {
        "base_dtype": "bfloat16" if spec.bf16 else "float32",
        "autocast": "bf16" if spec.bf16 else None,
        "gradient_checkpointing": True,
        "optim": "adamw_torch_fused",
        "dropout": spec.dropout,
    }


def load_model(spec: Spec, dtype: torch.dtype, **kwargs: Any) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=dtype, **kwargs)


def eval_loss(model: nn.Module, examples: list[dict], batch_size: int, bf16: bool) -> dict:
    """Mean loss per target token over `examples` (right-padded batches, file order)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    for module in model.modules():  # bitsandbytes' CPU eval-mode repacking: see qlora.py's note
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010
    total, count = 0.0, 0
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), ctx:
        for i in range(0, len(examples), batch_size):
            batch = pad(examples[i : i + batch_size])
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            ).logits
            labels = batch["labels"][:, 1:]
            flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            total += float(F.cross_entropy(flat, labels.reshape(-1), reduction="sum"))
            count += int((labels != IGNORE).sum())
    return {"eval_loss": total / count if count else float("nan"), "eval_tokens": count}


def pad(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: pad id 0 (masked), labels IGNORE."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE}
    return {
        k: torch.tensor([e[k] + [v] * (width - len(e[k])) for e in examples])
        for k, v in fill.items()
    }


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def write_metrics(spec: Spec, meter: StepMeter, evaluation: dict, **extra: Any) -> dict:
    """metrics.json in the child's folder: the steps, the memory peaks, the eval loss, `extra`."""
    tokens = sum(int(s["tokens"]) for s in meter.steps)
    seconds = sum(s["seconds"] for s in meter.steps)
    metrics = {
        "peer": spec.peer,
        "strategy": spec.strategy,
        "steps": meter.steps,
        "tokens": tokens,
        "train_time_s": seconds,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "peak_memory_bytes": meter.train_peak,
        "peak_memory_reset": meter.reset_done,
        "load_peak_memory_bytes": meter.load_peak,
        "threads": _threads(),
        **evaluation,
        **extra,
    }
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_and_report(spec: Spec, trainer: Any, meter: StepMeter, bf16: bool, **extra: Any) -> dict:
    """train(), then the eval loss and metrics.json; the last line printed is the metrics.

    `extra` lands in metrics.json; `eval_examples` (a list), when given, replaces the spec's file.
    """
    eval_examples = extra.pop("eval_examples", None) or read_jsonl(spec.eval_data)
    started = time.perf_counter()
    trainer.train()
    extra["train_wall_s"] = time.perf_counter() - started
    if len(meter.steps) != spec.max_steps:
        raise SystemExit(f"{spec.peer}: {len(meter.steps)} steps ran, {spec.max_steps} asked for")
    evaluation = eval_loss(trainer.model, eval_examples, spec.batch_size, bf16)
    extra.setdefault("trainable_params", trainable_params(trainer.model))
    metrics = write_metrics(spec, meter, evaluation, **extra)
    print(json.dumps({k: v for k, v in metrics.items() if k != "steps"}))
    return metrics


def offline() -> None:
    """Never reach the hub (every model here is local); no tokenizer fork warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
