"""The usual hand-written script: transformers.Trainer + peft LoRA, as most tutorials write it.

    .venv/bin/python benchmarks/trainer_peft_baseline.py --out DIR --max-steps 20 [--batch-size 8]
        [--max-length 256] [--rows 160] [--lr 1e-3] [--r 8]

Instruction tuning of the embedded SmolLM2-135M on the shipped Alpaca subset: chat template,
loss on the response only, LoRA r=8 on every linear layer, AdamW, cosine schedule, fp32 on CPU.
It measures what adapterkit's trainer measures, the same way (non-padding tokens per second of
training steps; the process's peak resident memory during training, the high-water mark reset after
loading), and writes DIR/metrics.json. benchmarks/vs_trainer.py runs it next to `adapterkit train`
on the same settings and reports the ratios. The model path comes from adapterkit's embedded cache
(the same weights), and the data rendering is written out here, not borrowed from adapterkit.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from adapterkit import models  # only to find the cached weights and read /proc
    from adapterkit.train import measure

    if args.threads:
        torch.set_num_threads(args.threads)
    path = models.resolve("smollm2-135m").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=args.r, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear")
    )

    rows = [json.loads(x) for x in (ROOT / "data/instructions/train.jsonl").open()][: args.rows]

    def tokenize(row: dict) -> dict:
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        prompt = [{"role": "user", "content": user}]
        full = [*prompt, {"role": "assistant", "content": row["output"]}]
        p_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        f_text = tokenizer.apply_chat_template(full, tokenize=False)
        p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(f_text, add_special_tokens=False)["input_ids"]
        end = f_ids.index(tokenizer.eos_token_id, len(p_ids)) + 1  # response + <|im_end|>
        ids = f_ids[:end][: args.max_length]
        labels = [-100] * len(p_ids) + ids[len(p_ids) :]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]}

    # A plain list works as a Trainer dataset (no `datasets` package needed).
    data = [x for x in map(tokenize, rows) if any(v != -100 for v in x["labels"])]

    class Meter(TrainerCallback):
        """Times the training steps and resets the memory high-water mark before the first."""

        def __init__(self) -> None:
            self.train_time = 0.0
            self.load_peak = 0
            self.t0 = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.load_peak = measure.peak_rss_bytes() or 0
            measure.reset_peak_rss()

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.train_time += time.perf_counter() - self.t0

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    tokens = 0

    class CountingTrainer(Trainer):
        """Counts the non-padding tokens of the batches actually trained on (the dataloader
        prefetches, so counting in the collator would include batches never used)."""

        def training_step(self, model, inputs, *rest, **kw):
            nonlocal tokens
            tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *rest, **kw)

    meter = Meter()
    trainer = CountingTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(args.out / "hf"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.max_steps,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=5,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=0,
        ),
        train_dataset=data,
        data_collator=collator,
        callbacks=[meter],
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "tokens": tokens,
        "tokens_per_s": tokens / meter.train_time,
        "train_time_s": meter.train_time,
        "peak_memory_bytes": measure.peak_rss_bytes(),
        "load_peak_memory_bytes": meter.load_peak,
        "wall_time_s": wall,
        "steps": trainer.state.global_step,
        "train_loss": trainer.state.log_history[-1].get("train_loss"),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
