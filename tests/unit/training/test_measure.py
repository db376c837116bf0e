"""measure.release_freed_memory: freed tensors go back to the system (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import sys, torch
from adapterkit.training import measure
if sys.argv[1] == "release":
    assert measure.release_freed_memory()
x = torch.ones(4 * 2**20); del x  # a 16 MiB block freed: glibc raises its threshold to it
base = measure.rss_anon_bytes()
kept = [torch.ones(2**20 + i) for i in range(64)][1::2]  # 64 tensors of ~4 MiB, every other freed
print((measure.rss_anon_bytes() - base) / 2**20)
"""

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)"
)


def _growth_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_tensors_are_given_back_only_when_asked() -> None:
    live = 32 * 4  # MiB still referenced at the end
    released = _growth_mib("release")
    default = _growth_mib("default")
    assert live - 1 <= released <= live + 4  # what is alive, nothing more
    assert default >= live + 64  # glibc's default keeps the freed holes resident


def test_release_memory_is_off_by_default_and_checked_in_recipes() -> None:
    from adapterkit.errors import RecipeError
    from adapterkit.recipe import resolve
    from adapterkit.training.config import TrainConfig

    assert TrainConfig().release_memory is False
    recipe = Path(__file__).resolve().parents[3] / "recipes/minilm/sst2-lora.yaml"
    assert resolve(recipe, ["train.release_memory=true"]).train.release_memory is True
    with pytest.raises(RecipeError, match=r"train\.release_memory"):
        resolve(recipe, ["train.release_memory=sometimes"])
