"""Per-family activation rules, one module per family.

Each says what each op of a block keeps for backward, what sits below and above the blocks, and a
block's unsaved working set; `activations.py` adds them up the same way for every family."""
