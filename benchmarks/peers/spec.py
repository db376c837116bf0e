"""What the parent (vs_peers.py) tells a peer child: one JSON file, read with `Spec.load`.

Kept free of torch and transformers so the parent can write it without importing either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Spec:
    """One child run: which peer, which strategy, the shared data files and the recipe's numbers."""

    peer: str
    strategy: str  # lora, full or qlora
    model_path: str  # a local HF directory (adapterkit's embedded SmolLM2); nothing is downloaded
    train_data: str  # pre-tokenised JSONL, in step order: step k is lines (k-1)*batch .. k*batch-1
    eval_data: str  # pre-tokenised JSONL, the fixed eval slice
    out: str  # the child's folder: metrics.json lands here
    max_steps: int
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 5
    schedule: str = "cosine"
    seed: int = 0
    threads: int | None = None
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    bf16: bool = False  # the tuned peers: bf16 autocast on a bf16 base where the CPU has bf16
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Spec:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> Spec:
        """`--spec FILE`, the way every peer child is started."""
        parser = argparse.ArgumentParser()
        parser.add_argument("--spec", type=Path, required=True)
        return cls.load(parser.parse_args(argv).spec)
