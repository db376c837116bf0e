"""Batches for the built-in tasks: right padding, the device move, and the inference loops.

Padding is always on the right and always marked by `attention_mask` (and IGNORE labels), never by
the pad token's id. Torch is imported inside the functions, so importing this module stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    Batch = dict[str, torch.Tensor]

T = TypeVar("T")


def pad(rows: Sequence[Sequence[int]], fill: int, width: int | None = None) -> torch.Tensor:
    """A [len(rows), width] long tensor: each row on the left, `fill` after it.

    `width` defaults to the longest row.
    """
    import torch

    if width is None:
        width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), int(fill), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def pad_batch(
    examples: Sequence[Mapping[str, Any]], tokenizer: Any, fields: Mapping[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """`input_ids` right-padded with the pad token (0 if the tokenizer has none), `attention_mask`
    (1 on real tokens), and each of `fields` right-padded with its fill value to the same width."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = pad([e["input_ids"] for e in examples], pad_id)
    width = ids.shape[1]
    lengths = torch.tensor([len(e["input_ids"]) for e in examples], dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    batch = {"input_ids": ids, "attention_mask": mask}
    for key, fill in (fields or {}).items():
        batch[key] = pad([e[key] for e in examples], fill, width)
    return batch


def column(examples: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor:
    """One long per example: `[e[key] for e in examples]` as a tensor."""
    import torch

    return torch.tensor([e[key] for e in examples], dtype=torch.long)


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


def map_batches(model: nn.Module, batches: Iterable[Batch], fn: Callable[[Batch], T]) -> list[T]:
    """`fn(batch)` for each batch, moved to the model's device, under `inference(model)`.

    The evaluation loop of every task: `fn` computes what one batch adds (a summed loss, its
    targets, predictions), and the task totals the list. Summing the list in order adds the same
    floats in the same order as a running total would.
    """
    with inference(model) as device:
        return [fn(to_device(batch, device)) for batch in batches]


def per_example(
    model: nn.Module,
    examples: list[T],
    collate: Callable[[list[T]], Batch],
    fn: Callable[[Batch], list[Any]],
    batch_size: int,
) -> list[Any]:
    """The prediction loop: `examples` collated `batch_size` at a time, `fn` on each batch (on the
    model's device, under `inference`) returning one item per example; all items, in order."""
    size = max(1, batch_size)
    batches = (collate(examples[i : i + size]) for i in range(0, len(examples), size))
    return [item for items in map_batches(model, batches, fn) for item in items]
