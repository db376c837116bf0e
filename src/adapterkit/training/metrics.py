"""What a run reports: log.jsonl as it goes (RunLog) and metrics.json at the end (RunMetrics).

Every figure in metrics.json is a field of RunMetrics with its definition next to it; the file's
"definitions", and the figures `adapterkit compare` copies into its rows, are derived from those
fields, so a new figure is defined in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from adapterkit.storage.atomic import json_safe, write_json, write_text_atomic


def trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to `step`: a killed run may have logged steps after it."""
    kept = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except ValueError:
            break  # a line cut by the crash, and whatever follows it
    write_text_atomic(path, "".join(kept))


class RunLog:
    """log.jsonl: one JSON line per record (a logged step, an evaluation).

    A fresh run starts the file empty; a resumed one (`resume_step`) keeps the lines up to the
    checkpoint's step, so the log continues with nothing doubled.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is None:
            self.path.write_text("")
        else:
            trim_log(self.path, resume_step)

    def write(self, record: dict[str, Any]) -> None:
        # Opened per line so that the file is complete whenever training stops, even by a crash.
        with self.path.open("a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")


def _figure(doc: str, *, compared: bool = False) -> dict[str, Any]:
    """A RunMetrics field's metadata: `doc` defines it in metrics.json; `compared`: the figure is
    a column of compare's rows too."""
    return {"doc": doc, "compared": compared}


@dataclass
class RunMetrics:
    """The figures of one training run, in metrics.json's order."""

    train_loss: float = field(
        metadata=_figure(
            "Mean training loss per target token over the last 10 optimizer steps.", compared=True
        )
    )
    initial_eval: dict[str, Any] | None = field(
        metadata=_figure(
            "Eval metrics before the first step (the model as the strategy prepared it)."
        )
    )
    final_eval: dict[str, Any] | None = field(
        metadata=_figure("Eval metrics of the final adapter (this directory).")
    )
    best_eval: dict[str, Any] | None = field(
        metadata=_figure("Eval metrics of the best adapter by the task's selection metric (best/).")
    )
    best_step: int | None = field(
        metadata=_figure("Optimizer step at which the best adapter was saved.")
    )
    steps: int = field(metadata=_figure("Optimizer steps taken.", compared=True))
    epochs: float = field(
        metadata=_figure("Passes over the training data taken (steps / steps per epoch).")
    )
    stopped_early: bool = field(
        metadata=_figure(
            "True when training stopped because eval did not improve for `patience` evals."
        )
    )
    tokens: int = field(
        metadata=_figure("Non-padding tokens (attention mask) in all training batches.")
    )
    tokens_per_s: float = field(
        metadata=_figure(
            "Non-padding tokens trained per second of training steps (no loading, eval).",
            compared=True,
        )
    )
    train_time_s: float = field(
        metadata=_figure(
            "Seconds spent in training steps (batching, forward, backward, optimizer)."
        )
    )
    peak_memory_bytes: int | None = field(
        metadata=_figure(
            "Peak memory during the training steps: the CUDA allocator's max allocated bytes on a GPU, "
            "the process's peak resident set (VmHWM, reset before the first step) on CPU.",
            compared=True,
        )
    )
    peak_memory_kind: str = field(
        metadata=_figure(
            "What peak_memory_bytes measures: cuda_allocated or process_rss.", compared=True
        )
    )
    peak_memory_reset: bool = field(
        metadata=_figure(
            "False when the CPU high-water mark could not be reset (peak since start).",
            compared=True,
        )
    )
    cuda_peak_reserved_bytes: int | None = field(
        metadata=_figure(
            "Peak bytes reserved by the CUDA caching allocator (GPU only).", compared=True
        )
    )
    load_peak_memory_bytes: int | None = field(
        metadata=_figure(
            "The same peak before training: loading, preparing, initial eval.", compared=True
        )
    )
    rss_anon_bytes: int | None = field(
        metadata=_figure(
            "Resident anonymous memory (tensors, heap) right after the training steps.",
            compared=True,
        )
    )
    rss_file_bytes: int | None = field(
        metadata=_figure(
            "Resident file-backed memory (mapped weights, libraries) after training.", compared=True
        )
    )
    trainable_params: int = field(
        metadata=_figure("Parameters that train, each storage once.", compared=True)
    )
    total_params: int = field(
        metadata=_figure(
            "All parameters, each storage once, 4-bit weights at their logical size.", compared=True
        )
    )
    trainable_percent: float = field(
        metadata=_figure("trainable_params as a percentage of total_params.", compared=True)
    )
    adapter_bytes: int = field(metadata=_figure("Bytes of the saved final adapter.", compared=True))
    precision: str = field(
        metadata=_figure(
            "Arithmetic the training ran in: fp32, bf16 autocast, or fp16 autocast with loss "
            "scaling (trainable weights fp32 in both)."
        )
    )
    device: str = field(metadata=_figure("The device the model trained on."))
    final_dir: str = field(
        metadata=_figure("Where the final adapter is, relative to this directory ('.').")
    )
    best_dir: str | None = field(
        metadata=_figure(
            "Where the best adapter is, relative to this directory (best), or null without eval data."
        )
    )
    wall_time_s: float = field(
        metadata=_figure(
            "Seconds from the start of fit() to metrics.json, evals and saving included."
        )
    )

    @classmethod
    def definitions(cls) -> dict[str, str]:
        """Each figure's definition, by name: metrics.json's "definitions"."""
        return {f.name: f.metadata["doc"] for f in fields(cls)}

    @classmethod
    def compared_fields(cls) -> tuple[str, ...]:
        """The figures `adapterkit compare` copies from each run's metrics.json into its row."""
        return tuple(f.name for f in fields(cls) if f.metadata["compared"])

    def to_json(self) -> dict[str, Any]:
        """metrics.json's content: every figure, then "definitions"."""
        figures = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**figures, "definitions": self.definitions()}

    def write(self, out_dir: Path) -> dict[str, Any]:
        """Write `out_dir/metrics.json` (atomically); returns what was written."""
        data = self.to_json()
        write_json(Path(out_dir) / "metrics.json", data)
        return data
