"""HF Trainer + peft LoRA, tuned as a user who read the performance docs would tune it.

    PYTHONPATH=benchmarks .venv/bin/python -m peers.hf_tuned --spec SPEC.json

bf16 where the CPU has it (the base loaded in bfloat16, autocast; LoRA weights and AdamW state in
fp32, peft's default), gradient checkpointing (non-reentrant), `optim="adamw_torch_fused"`, LoRA
dropout 0, and no padding, one of two ways (the spec's peer name says which):

* `hf_tuned`: transformers' padding-free collator (`DataCollatorWithFlattening`): a step's 8 rows
  become one row with restarting position ids and no attention mask, from which transformers
  builds a block-diagonal causal mask (SDPA). The same 8 examples a step as every other peer. The
  model must run with `use_cache=False`: with a cache, transformers skips the packed-sequence
  detection and the rows silently attend across their boundaries.
* `hf_grouped`: `train_sampling_strategy="group_by_length"` (the former `group_by_length=True`),
  padded batches. It changes which examples each step sees, so its first-step loss and token
  counts cannot match the others: the report marks it invalid by the protocol's rule and shows it
  for reference.
"""

from __future__ import annotations

import sys
from typing import Any

from peers import common
from peers.spec import Spec


def _model(spec: Spec) -> Any:
    import torch
    from peft import get_peft_model

    model = common.load_model(spec, torch.bfloat16 if spec.bf16 else torch.float32)
    model.config.use_cache = False  # required for padding-free: see the module docstring
    torch.manual_seed(spec.seed)  # the LoRA A init
    return get_peft_model(model, common.lora_config(spec))


def _data(spec: Spec, grouped: bool) -> tuple[list[dict], Any]:
    """The examples and the collator: padded for group_by_length, else flattened."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithFlattening

    train = common.read_jsonl(spec.train_data)
    if grouped:
        tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        return train, DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    flat = [{k: e[k] for k in ("input_ids", "labels")} for e in train]
    return flat, DataCollatorWithFlattening()


def main(argv: list[str] | None = None) -> dict:
    common.offline()
    spec = Spec.from_argv(argv)
    common.set_threads(spec.threads)
    from transformers import Trainer, TrainingArguments

    grouped = spec.peer == "hf_grouped"
    train, collator = _data(spec, grouped)
    fields = common.trainer_arguments(
        spec,
        train_sampling_strategy="group_by_length" if grouped else "sequential",
        bf16=spec.bf16,
        activation_checkpointing=True,  # non-reentrant, transformers 5's default
        optim="adamw_torch_fused",
        remove_unused_columns=False,
    )
    meter = common.StepMeter()
    trainer = common.counting_trainer(Trainer, meter)(
        model=_model(spec),
        args=TrainingArguments(**fields),
        train_dataset=train,
        data_collator=collator,
        callbacks=[common.meter_callback(meter)],
    )
    batching = "group_by_length, padded" if grouped else "padding-free (flattened)"
    settings = {"batching": batching, **common.tuned_settings(spec)}
    return common.run_and_report(
        spec, trainer, meter, spec.bf16, precision=common.precision(spec), settings=settings
    )


if __name__ == "__main__":
    main(sys.argv[1:])
