"""Per-family activation rules: what each op of a block keeps for backward, what sits below and
above the blocks, and a block's unsaved working set. One module per family; `activations.py`
adds them up the same way for every family."""
