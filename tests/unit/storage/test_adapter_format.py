"""Adapter directories: safetensors + manifest, atomic replacement, and what loading refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapterkit.errors import AdapterError
from adapterkit.storage import adapter_format as adapter_io
from adapterkit.storage.adapter_format import (
    MANIFEST,
    WEIGHTS,
    check_base,
    read_adapter,
    save_adapter,
)

MANIFEST_DATA = {"strategy": {"name": "lora", "options": {"r": 8}}, "base_model": {"name": "b"}}


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 6, generator=g),
        "b.weight": torch.randn(6, 4, generator=g).t(),  # not contiguous
        "c.half": torch.randn(3, generator=g).to(torch.bfloat16),
        "d.ids": torch.arange(5),
    }


def test_round_trip(tmp_path: Path) -> None:
    tensors = sample()
    out = tmp_path / "run" / "adapter"
    size = save_adapter(out, tensors, MANIFEST_DATA, {"adapter_config.json": b'{"r": 8}'})
    assert size == (out / WEIGHTS).stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, WEIGHTS, "adapter_config.json"]
    )
    manifest, loaded = read_adapter(out)
    assert manifest == MANIFEST_DATA
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)
    # The manifest is stable JSON (sorted keys) so adapters diff cleanly.
    text = (out / MANIFEST).read_text()
    assert text == json.dumps(MANIFEST_DATA, indent=2, sort_keys=True) + "\n"


def test_saved_tensors_are_clones(tmp_path: Path) -> None:
    t = torch.zeros(3)
    save_adapter(tmp_path / "a", {"t": t}, {})
    t += 1  # training goes on after a checkpoint: the file must keep the old values
    assert torch.equal(read_adapter(tmp_path / "a")[1]["t"], torch.zeros(3))


def test_tied_tensor_written_once(tmp_path: Path) -> None:
    shared = torch.randn(64, 32)
    out = tmp_path / "a"
    save_adapter(out, {"embed.weight": shared, "lm_head.weight": shared}, {})
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        assert list(f.keys()) == ["embed.weight"]
    assert (out / WEIGHTS).stat().st_size < 64 * 32 * 4 * 1.5
    _, loaded = read_adapter(out)
    assert torch.equal(loaded["lm_head.weight"], shared)
    assert torch.equal(loaded["embed.weight"], shared)


def test_overwrite_is_atomic_and_leaves_one_directory(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    save_adapter(out, {"t": torch.zeros(2)}, {"n": 1})
    save_adapter(out, {"t": torch.ones(2)}, {"n": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    manifest, loaded = read_adapter(out)
    assert manifest == {"n": 2} and torch.equal(loaded["t"], torch.ones(2))


def test_failed_write_keeps_the_old_adapter(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "adapter"
    save_adapter(out, {"t": torch.zeros(2)}, {"n": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(out, {"t": torch.ones(2)}, {"n": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert read_adapter(out)[0] == {"n": 1}


def test_failed_swap_puts_the_old_adapter_back(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "adapter"
    save_adapter(out, {"t": torch.zeros(2)}, {"n": 1})
    real_rename = adapter_io.os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError("crash during swap")
        real_rename(src, dst)

    monkeypatch.setattr(adapter_io.os, "rename", rename)
    with pytest.raises(OSError, match="crash during swap"):
        save_adapter(out, {"t": torch.ones(2)}, {"n": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert read_adapter(out)[0] == {"n": 1}


def test_refuses_to_replace_a_directory_that_is_not_an_adapter(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(AdapterError, match="not empty"):
        save_adapter(tmp_path, {"t": torch.zeros(1)}, {})
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_pickle_only_directory_is_refused(tmp_path: Path) -> None:
    torch.save({"t": torch.zeros(1)}, tmp_path / "adapter_model.bin")
    (tmp_path / MANIFEST).write_text("{}")
    with pytest.raises(AdapterError, match=r"pickle.*run arbitrary code"):
        read_adapter(tmp_path)


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    out = tmp_path / "a"
    save_adapter(out, {"t": torch.zeros(1)}, {})
    (out / MANIFEST).unlink()
    with pytest.raises(AdapterError, match=MANIFEST):
        read_adapter(out)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    out = tmp_path / "a"
    save_adapter(out, {"t": torch.zeros(1)}, {})
    (out / WEIGHTS).unlink()
    with pytest.raises(AdapterError, match=WEIGHTS):
        read_adapter(out)


@pytest.mark.parametrize("text", ["[1, 2]", "not json"])
def test_manifest_must_be_a_json_object(tmp_path: Path, text: str) -> None:
    out = tmp_path / "a"
    save_adapter(out, {"t": torch.zeros(1)}, {})
    (out / MANIFEST).write_text(text)
    with pytest.raises(AdapterError, match=MANIFEST):
        read_adapter(out)


def test_corrupt_weights_are_an_adapter_error(tmp_path: Path) -> None:
    out = tmp_path / "a"
    save_adapter(out, {"t": torch.zeros(1)}, {})
    (out / WEIGHTS).write_bytes(b"\x00" * 7)
    with pytest.raises(AdapterError, match="safetensors"):
        read_adapter(out)


def test_check_base() -> None:
    manifest = {"base_model": {"name": "SmolLM2-135M", "fingerprint": "a" * 64}}
    check_base(manifest, "a" * 64, "anything")  # same fingerprint: accepted
    with pytest.raises(AdapterError) as info:
        check_base(manifest, "b" * 64, "tiny-llama")
    assert "SmolLM2-135M" in str(info.value) and "tiny-llama" in str(info.value)
    with pytest.raises(AdapterError, match="fingerprint"):
        check_base({}, "a" * 64, "tiny-llama")
