"""Pieces the built-in tasks share: reading a data file, the summed loss, the inference mode.

Torch is imported inside the functions, so importing this module (and listing tasks) stays
instant.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from adapterkit.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

IGNORE = -100  # label value cross_entropy skips: a prompt token, a later sub-token, no label


def line_error(path: Path, lineno: int, msg: str) -> DataError:
    """A DataError that names the file and line: `path:lineno: msg`."""
    return DataError(f"{path}:{lineno}: {msg}")


def read_text(path: Path, kind: str, encoding: str = "utf-8") -> str:
    """The whole file as text; a missing or unreadable file is a DataError.

    `kind` completes "give the path of ..." (e.g. "a JSONL file"); `encoding` "utf-8-sig" drops a
    byte order mark.
    """
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; give the path of {kind}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from exc


def count_targets(labels: torch.Tensor) -> int:
    """How many labels are trained on (not IGNORE)."""
    return int((labels != IGNORE).sum())


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy summed over every label that is not IGNORE.

    `logits` is [..., classes] and `labels` the same leading shape [...]; both are flattened, and
    the labels are moved to the logits' device. Summed, not averaged, so the trainer can normalise
    by the number of targets across accumulated batches.
    """
    import torch.nn.functional as F

    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.to(logits.device).reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A copy of the batch with every tensor on `device`."""
    return {k: v.to(device) for k, v in batch.items()}


@contextmanager
def inference(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no gradients for the block; yields the device of the model's parameters.

    The model's previous train/eval mode is restored on leaving, also when the block raises.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield device
    finally:
        model.train(was_training)
