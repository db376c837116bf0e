"""The peers benchmarks/vs_peers.py runs adapterkit against, one child process each.

spec.py      what the parent tells a child (a JSON file), no heavy imports
common.py    what every HF-Trainer-based child shares: examples, step timing, memory, eval loss
hf_tuned.py  HF Trainer tuned (bf16, gradient checkpointing, fused AdamW, padding-free or grouped)
trl_sft.py   TRL SFTTrainer with its fastest CPU settings
calibrate.py the matmul peaks and the fp32 reference first-step loss
prepare.py   (parent) the shared tokens, the step schedule, the FLOP count
runner.py    (parent) running one child and reading back what it measured
report.py    (parent) medians, validity, ratios, results.json and results.md
The tutorial script is benchmarks/trainer_peft_baseline.py (it uses common.py too).
"""
