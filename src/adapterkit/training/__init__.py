"""The one shared trainer. It trains whatever parameters a strategy left trainable, through the
Task protocol; it never names a strategy or a task.

    trainer.py   Trainer (setup phases, run()) and fit(), which builds one and runs it
    inputs.py    TrainData, AdapterBinding, Resume: what the loop is given
    state.py     LoopState: the resumable counters (trainer_state.json)
    selection.py BestAdapter: best/ and patience
    step.py      one optimizer step's gradients and norm
    optim.py     optimizer, schedule, run length, data order, seeding, accelerator
    metrics.py   RunLog (log.jsonl) and RunMetrics (metrics.json, with its definitions)
    stops.py     signals, non-finite figures, out of memory
    measure.py   memory peaks and parameter counts
    config.py    TrainConfig: the recipe's `train` section
"""
