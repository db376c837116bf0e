"""The HF `Trainer` + peft script a user writes for MiniLM SST-2 LoRA, tuned as issue 12 says.

    PYTHONPATH=benchmarks .venv/bin/python -m peers.enc_hf --spec SPEC.json

`AutoModelForSequenceClassification` on the local MiniLM directory (`transformers.set_seed` just
before loading, so the new head starts as adapterkit's does), peft LoRA with the recipe's r, alpha
and dropout on the linear layers adapterkit's `lora` resolves to (`query`, `key`, `value`,
`dense`; not the pooler's), the new head (`classifier`) and the pooler trained whole through
`modules_to_save`, as adapterkit trains them. `TrainingArguments`: the recipe's lr, linear
schedule, warmup, batch size, seed, grad clipping, no weight decay; length-grouped batches
(`train_sampling_strategy="group_by_length"`, transformers 5's spelling of `group_by_length=True`),
`bf16=True` (autocast) where the CPU has AVX-512 BF16 or AMX, `optim="adamw_torch_fused"`,
`DataCollatorWithPadding` (padding to the longest row of the batch). Two variants (the spec's
`bf16_base`): the base loaded in float32 (the plain script) or in bfloat16 with the trainable
weights in float32 (as adapterkit's `precision: auto` stores its frozen base).

The examples arrive pre-tokenised by adapterkit's task (peers/enc_prepare.py), each with its
index: a thin wrapper around the collator records which examples each batch held, and
`training_step` records the tokens it was actually fed, so the parent can check that the epoch
trained every example once, with adapterkit's token ids. Measured the way peers/common.py measures
(tokens, step time, training-step peak RSS); eval: loss and accuracy on the fixed eval slice
before and after training, batches of `eval_batch_size` in file order, in the training precision.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers import common

if TYPE_CHECKING:
    import torch
    from torch import nn

LORA_TARGETS = ["query", "key", "value", "dense"]
WHOLE = ["classifier", "pooler"]  # the new head and BERT's pooler train in full
NOT_ADAPTED = ["pooler.dense"]  # trained whole, so not LoRA-wrapped as well


@dataclass
class EncSpec:
    """One peer run, as the parent (vs_peers_encoder.py) writes it: no torch needed to build it."""

    peer: str
    model_path: str
    train_data: str  # pre-tokenised JSONL: input_ids, token_type_ids, labels, index
    eval_data: str
    out: str
    max_steps: int
    batch_size: int
    eval_batch_size: int
    lr: float
    warmup: int
    schedule: str
    seed: int
    num_labels: int
    r: int
    alpha: float
    dropout: float
    max_grad_norm: float | None
    weight_decay: float
    bf16: bool  # bf16=True in TrainingArguments (autocast)
    bf16_base: bool = False  # the base loaded in bfloat16, trainable weights upcast to float32
    threads: int | None = None
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EncSpec:
        return cls(**json.loads(Path(path).read_text()))


def build_model(spec: EncSpec, bf16_base: bool | None = None) -> nn.Module:
    """The script's model: seeded load, peft LoRA, fp32 trainable weights over a bf16 base."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, set_seed

    half = spec.bf16_base if bf16_base is None else bf16_base
    set_seed(spec.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        spec.model_path,
        num_labels=spec.num_labels,
        dtype=torch.bfloat16 if half else torch.float32,
    )
    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec.r,
        lora_alpha=alpha,  # pyright: ignore[reportArgumentType]  (peft accepts a float too)
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        exclude_modules=list(NOT_ADAPTED),
        modules_to_save=list(WHOLE),
    )
    model = get_peft_model(model, config)
    for param in model.parameters():  # peft upcasts LoRA; the whole-trained copies too
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


class Meter(common.StepMeter):
    """StepMeter for classification: a labelled row is a target; padded size and token checksum."""

    def batch(self, inputs: dict[str, torch.Tensor], loss: float) -> None:
        mask = inputs["attention_mask"]
        self.pending["tokens"] += int(mask.sum())
        self.pending["targets"] += int((inputs["labels"] != common.IGNORE).sum())
        self.pending["loss"] += loss
        self.pending["padded"] = self.pending.get("padded", 0) + int(mask.numel())
        checksum = int((inputs["input_ids"] * mask).sum())
        self.pending["checksum"] = self.pending.get("checksum", 0) + checksum


def recording_collator(tokenizer: Any, seen: list[list[int]]) -> Any:
    """DataCollatorWithPadding, with each batch's example indices appended to `seen`."""
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer)

    def collate(features: list[dict[str, Any]]) -> Any:
        seen.append([int(f["index"]) for f in features])
        return pad([{k: v for k, v in f.items() if k != "index"} for f in features])

    return collate


def evaluate(model: nn.Module, examples: list[dict], spec: EncSpec, tokenizer: Any) -> dict:
    """Mean loss per row and accuracy over `examples`, in file order, in the training precision."""
    import torch
    import torch.nn.functional as F

    collate = recording_collator(tokenizer, [])
    was_training = model.training
    model.eval()
    loss, right = 0.0, 0
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if spec.bf16 else nullcontext()
    with torch.no_grad(), ctx:
        for i in range(0, len(examples), spec.eval_batch_size):
            batch = collate(examples[i : i + spec.eval_batch_size])
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            right += int((logits.argmax(-1) == labels).sum())
    model.train(was_training)
    n = len(examples)
    return {"eval_loss": loss / n, "accuracy": right / n, "eval_rows": n}


def training_arguments(spec: EncSpec) -> Any:
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping: dict[str, Any] = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in names
        else {"group_by_length": True}  # transformers 4
    )
    return TrainingArguments(
        output_dir=str(Path(spec.out) / "hf"),
        per_device_train_batch_size=spec.batch_size,
        max_steps=spec.max_steps,
        learning_rate=spec.lr,
        lr_scheduler_type=spec.schedule,
        warmup_steps=spec.warmup,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm if spec.max_grad_norm is not None else 0.0,
        seed=spec.seed,
        bf16=spec.bf16,
        optim="adamw_torch_fused",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,  # the index column reaches the recording collator
        **grouping,
    )


def main(argv: list[str] | None = None) -> dict:
    common.offline()
    spec = EncSpec.load(_spec_path(argv))
    common.set_threads(spec.threads)
    import torch
    from transformers import AutoTokenizer, Trainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    train, evals = common.read_jsonl(spec.train_data), common.read_jsonl(spec.eval_data)
    model = build_model(spec)
    initial = evaluate(model, evals, spec, tokenizer)
    meter, seen = Meter(), []
    trainer = common.counting_trainer(Trainer, meter)(
        model=model,
        args=training_arguments(spec),
        train_dataset=train,
        data_collator=recording_collator(tokenizer, seen),
        processing_class=tokenizer,
        callbacks=[common.meter_callback(meter)],
    )
    trainer.train()
    if len(meter.steps) != spec.max_steps:
        raise SystemExit(f"{spec.peer}: {len(meter.steps)} steps ran, {spec.max_steps} asked for")
    final = evaluate(model, evals, spec, tokenizer)
    metrics = {
        "peer": spec.peer,
        "steps": meter.steps,
        "step_examples": seen[: spec.max_steps],
        "peak_memory_bytes": meter.train_peak,
        "peak_memory_reset": meter.reset_done,
        "load_peak_memory_bytes": meter.load_peak,
        "trainable_params": common.trainable_params(model),
        "threads": torch.get_num_threads(),
        "precision": "bf16" if spec.bf16 else "fp32",
        "initial_eval": initial,
        "final_eval": final,
        "settings": _settings(spec),
    }
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    (Path(spec.out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("steps", "step_examples")}))
    return metrics


def _settings(spec: EncSpec) -> dict[str, Any]:
    return {
        "batching": "group_by_length, padded to the longest row (DataCollatorWithPadding)",
        "base_dtype": "bfloat16" if spec.bf16_base else "float32",
        "autocast": "bf16" if spec.bf16 else None,
        "optim": "adamw_torch_fused",
        "lora": {"r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout,
                 "target_modules": spec.target_modules, "modules_to_save": WHOLE},
        "gradient_checkpointing": False,
    }  # fmt: skip


def _spec_path(argv: list[str] | None) -> Path:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", type=Path, required=True)
    return parser.parse_args(argv).spec


if __name__ == "__main__":
    main(sys.argv[1:])
