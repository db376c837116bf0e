"""QLoRA's `compute_dtype: auto`: the 4-bit layers compute in the dtype the base loaded in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapterkit.build import build_model
from adapterkit.plugins import load_registry
from adapterkit.storage.sources import resolve as resolve_model


@pytest.mark.parametrize(
    ("dtype", "option", "expected"),
    [
        ("bfloat16", "auto", torch.bfloat16),
        ("float32", "auto", torch.float32),
        ("bfloat16", "float32", torch.float32),  # an explicit choice wins
    ],
)
def test_auto_compute_dtype_follows_the_base(
    llama_dir: Path, dtype: str, option: str, expected: torch.dtype
) -> None:
    import bitsandbytes as bnb

    from adapterkit.build import LoadSettings

    registry = load_registry()
    task, qlora = registry.task("causal_lm"), registry.strategy("qlora")
    t_opts = type(task).Options()
    s_opts = type(qlora).Options(compute_dtype=option)
    source = resolve_model(str(llama_dir))
    built = build_model(source, task, t_opts, qlora, s_opts, LoadSettings(dtype))
    layers = [m for m in built.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {expected}
    assert type(qlora).Options().compute_dtype == "auto"
