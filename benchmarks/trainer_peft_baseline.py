"""The usual hand-written script: transformers.Trainer + peft LoRA, as most tutorials write it.

    .venv/bin/python benchmarks/trainer_peft_baseline.py --out DIR [--max-steps 20] [--batch-size 8]
        [--max-length 256] [--rows 160] [--lr 1e-3] [--r 8] [--strategy lora|full|qlora]
    .venv/bin/python benchmarks/trainer_peft_baseline.py --spec SPEC.json   (how vs_peers.py runs it)

Instruction tuning of the embedded SmolLM2-135M on the shipped Alpaca subset: chat template, loss on
the response only, LoRA r=8 (dropout 0.05) on every linear layer, the Trainer's defaults (fp32 on
CPU, its default AdamW, no gradient checkpointing, batches padded to their longest row). `full`
trains the whole model; `qlora` puts the same LoRA on a bitsandbytes NF4 base set up as
adapterkit's qlora strategy does (float32 compute, the head not quantized). Standalone, it renders
the data itself and shuffles like any tutorial; with --spec it reads vs_peers.py's pre-tokenised
examples in their step order (the Trainer's sequential sampler), so every peer trains on the same
tokens. It measures what adapterkit's trainer measures, the same way (peers/common.py), and writes
DIR/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers import common
from peers.spec import Spec

if TYPE_CHECKING:
    from torch import nn

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL_DROPOUT = 0.05


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--spec", type=Path, help="vs_peers.py's run description (pre-tokenised)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--strategy", choices=("lora", "full", "qlora"), default="lora")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.spec is None and args.out is None:
        parser.error("give --out (standalone) or --spec (from vs_peers.py)")
    return args


def _standalone(args: argparse.Namespace) -> tuple[Spec, list[dict], list[dict]]:
    """The tutorial on its own: the chat template applied here, the first --rows rows."""
    from transformers import AutoTokenizer

    from adapterkit.storage import sources  # only to find the embedded weights

    path = str(sources.resolve("smollm2-135m").path)
    spec = Spec(
        peer="tutorial", strategy=args.strategy, model_path=path, train_data="", eval_data="",
        out=str(args.out), max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        threads=args.threads, r=args.r, dropout=TUTORIAL_DROPOUT,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(path)

    def rows(name: str, limit: int) -> list[dict]:
        lines = (ROOT / "data/instructions" / name).read_text().splitlines()[:limit]
        return [_tokenize(json.loads(x), tokenizer, args.max_length) for x in lines]

    train = [x for x in rows("train.jsonl", args.rows) if any(v != -100 for v in x["labels"])]
    return spec, train, rows("eval.jsonl", 40)


def _tokenize(row: dict, tokenizer: Any, max_length: int) -> dict:
    """ChatML with the template's default system prompt; labels only on the response + <|im_end|>."""
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    prompt = [{"role": "user", "content": user}]
    full = [*prompt, {"role": "assistant", "content": row["output"]}]
    p_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    f_text = tokenizer.apply_chat_template(full, tokenize=False)
    p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(f_text, add_special_tokens=False)["input_ids"]
    end = f_ids.index(tokenizer.eos_token_id, len(p_ids)) + 1  # response + <|im_end|>
    ids = f_ids[:end][:max_length]
    labels = ([-100] * len(p_ids) + ids[len(p_ids) :])[: len(ids)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def build_model(spec: Spec) -> nn.Module:
    """fp32 base; LoRA or QLoRA as a tutorial writes them, or the whole model for `full`."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    if spec.strategy == "full":
        return common.load_model(spec, torch.float32)
    if spec.strategy == "qlora":
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=["lm_head"],
        )
        model = common.load_model(spec, torch.float32, quantization_config=quant)
        # gradient checkpointing off, as the Trainer's default (and adapterkit's qlora) has it
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = common.load_model(spec, torch.float32)
    torch.manual_seed(spec.seed)  # the LoRA A init
    return get_peft_model(model, common.lora_config(spec))


def main(argv: list[str] | None = None) -> dict:
    common.offline()
    args = _parse(argv)
    if args.spec is not None:
        spec = Spec.load(args.spec)
        train, evaluation = common.read_jsonl(spec.train_data), common.read_jsonl(spec.eval_data)
        order = "sequential"  # the file is in the shared step order
    else:
        spec, train, evaluation = _standalone(args)
        order = "random"  # what a tutorial does
    common.set_threads(spec.threads)
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    meter = common.StepMeter()
    fields = common.trainer_arguments(spec, train_sampling_strategy=order)
    trainer = common.counting_trainer(Trainer, meter)(
        model=build_model(spec),
        args=TrainingArguments(**fields, remove_unused_columns=False),
        train_dataset=train,  # a plain list works as a Trainer dataset
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[common.meter_callback(meter)],
    )
    settings = {
        "order": order,
        "base": "NF4 4-bit, fp32 compute" if spec.strategy == "qlora" else "float32",
        "gradient_checkpointing": False,
        "optim": getattr(trainer.args.optim, "value", str(trainer.args.optim)),
        **({"dropout": spec.dropout} if spec.strategy != "full" else {}),
    }
    return common.run_and_report(
        spec, trainer, meter, False, eval_examples=evaluation, precision="fp32", settings=settings
    )


if __name__ == "__main__":
    main(sys.argv[1:])
