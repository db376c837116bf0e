"""Padding-free batches: a step's rows packed into one sequence, attention kept inside each row.

`pack` concatenates the rows into [1, T] with `position_ids` restarting at 0 for each row and the
first label of every row set to IGNORE (so no row is predicted from the previous row's last token:
exactly the targets of the padded batch); `attention_mask` is all ones over the T real tokens.

`ATTENTION` is a transformers attention implementation (registered lazily by `register`) that runs
causal SDPA per row, with no mask: the segments come from the position ids (a new row wherever the
position does not follow the previous one, as transformers' `find_packed_sequence_indices` reads
them), and its mask function builds no mask where there is no padding mask. Everything else
(padded batches, generation with a cache) goes to transformers' own SDPA unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from adapterkit.tasks._loss import IGNORE

if TYPE_CHECKING:
    import torch
    from torch import nn

ATTENTION = "adapterkit_packed_sdpa"
_registered = False


def pack(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """One [1, T] row: input_ids, attention_mask (ones), labels (IGNORE at each row's first
    token), position_ids (0.. for each row)."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in examples:
        n = len(e["input_ids"])
        ids.extend(e["input_ids"])
        labels.extend([IGNORE, *e["labels"][1:n]] if n else [])
        positions.extend(range(n))
    as_row = lambda xs: torch.tensor([xs], dtype=torch.long)  # noqa: E731
    return {
        "input_ids": as_row(ids),
        "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
        "labels": as_row(labels),
        "position_ids": as_row(positions),
    }


def _segments(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the rows of a [1, T] position_ids tensor, with T appended."""
    import torch

    pos = position_ids[0]
    cuts = torch.nonzero(pos[1:] - pos[:-1] != 1).flatten() + 1
    return [0, *cuts.tolist(), int(pos.shape[0])]


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed row where there is no mask; transformers' SDPA otherwise."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    pos = kwargs.get("position_ids")
    length = query.shape[2]
    plain = attention_mask is not None or pos is None or query.shape[0] != 1
    if plain or pos is None or length <= 1 or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = _segments(pos)
    if len(bounds) == 2:  # one row: transformers' causal SDPA (is_causal, native GQA)
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    groups = int(getattr(module, "num_key_value_groups", 1))
    dropout = float(kwargs.get("dropout", 0.0))
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            dropout_p=dropout,
            scale=kwargs.get("scaling"),
            is_causal=True,
            enable_gqa=groups > 1,
        )
        for s, e in itertools.pairwise(bounds)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def packed_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask where the model got no padding mask and there is no cache offset (the packed or
    single-row case `packed_attention` handles); transformers' SDPA mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    no_offset = not kwargs.get("q_offset") and not kwargs.get("kv_offset")
    same = kwargs.get("q_length") == kwargs.get("kv_length")
    if kwargs.get("attention_mask") is None and no_offset and same:
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register `ATTENTION` with transformers (once); returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTENTION, packed_attention)
        AttentionMaskInterface.register(ATTENTION, packed_mask)
        _registered = True
    return ATTENTION
