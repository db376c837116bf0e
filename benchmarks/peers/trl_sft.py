"""TRL's SFTTrainer with its fastest settings that run on this CPU (TRL 1.16).

    PYTHONPATH=benchmarks .venv/bin/python -m peers.trl_sft --spec SPEC.json

* `padding_free=True` (no packing): a step's rows are flattened into one row with restarting
  position ids, so the step trains the same 8 examples as every other peer, without padding.
  TRL documents padding-free for FlashAttention; with SDPA, transformers infers the row
  boundaries from the position ids (TRL's model call passes `use_cache=False`, which that needs).
  `packing=True` with the `bfd` strategy would also be padding-free, but it regroups the
  examples into max_length blocks (about 37 examples a step here), so no first-step loss could be
  compared: not used.
* `max_length=None` (TRL refuses padding-free without packing otherwise) and
  `skip_prepare_dataset`: the examples arrive tokenised and truncated, labels -100 outside the
  response; TRL neither re-templates nor re-truncates them.
* The loss: TRL 1.16's default `loss_type="nll"` already is its chunked loss (`chunked_nll` is
  a deprecated alias): a fused LM head (`add_fused_lm_head`) that never materialises the full
  logits. On CPU it scores every position in [4096 x 32768] tiles (only Triton devices skip the
  ignored ones). Liger (`use_liger_kernel`) needs Triton, so it cannot run here.
* bf16 where the CPU has it (the base in bfloat16, autocast; LoRA in fp32), gradient checkpointing
  (TRL's default), `adamw_torch_fused`, LoRA dropout 0.
"""

from __future__ import annotations

import sys

from peers import common
from peers.spec import Spec


def main(argv: list[str] | None = None) -> dict:
    common.offline()
    spec = Spec.from_argv(argv)
    common.set_threads(spec.threads)
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    model = common.load_model(spec, torch.bfloat16 if spec.bf16 else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    rows = common.read_jsonl(spec.train_data)
    train = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    fields = common.trainer_arguments(
        spec,
        bf16=spec.bf16,
        activation_checkpointing=True,  # non-reentrant, transformers 5's default
        optim="adamw_torch_fused",
        padding_free=True,
        packing=False,
        max_length=None,
        shuffle_dataset=False,
        loss_type="nll",
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    meter = common.StepMeter()
    trainer = common.counting_trainer(SFTTrainer, meter)(
        model=model,
        args=SFTConfig(**fields),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=common.lora_config(spec),  # TRL wraps the model after seeding with args.seed
        callbacks=[common.meter_callback(meter)],
    )
    settings = {
        "batching": "padding_free=True (flattened, no packing)",
        "loss": "loss_type=nll (fused chunked LM head)",
        **common.tuned_settings(spec),
    }
    return common.run_and_report(
        spec, trainer, meter, spec.bf16, precision=common.precision(spec), settings=settings
    )


if __name__ == "__main__":
    main(sys.argv[1:])
