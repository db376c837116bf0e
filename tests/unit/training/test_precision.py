"""precision: auto per the hardware, the frozen base in the compute dtype, fp32 master weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterkit import api
from adapterkit.build import base_dtype
from adapterkit.errors import TrainingError
from adapterkit.recipe import resolve
from adapterkit.testing import save_tiny_llama_dir
from adapterkit.training import precision
from adapterkit.training.precision import (
    cpu_flags,
    cpu_has_bf16,
    resolve_precision,
    upcast_trainable,
)

SAPPHIRE = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"
ICELAKE = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"


@pytest.mark.parametrize(
    ("flags", "has"),
    [
        (SAPPHIRE, True),
        ("fpu avx512f avx512_bf16", True),  # Cooper Lake, Zen 4: AVX-512 BF16 without AMX
        ("fpu amx_tile amx_bf16", True),
        (ICELAKE, False),
        ("fpu avx512_bf16x amx_bf16_", False),  # whole flags only, not substrings
        ("", False),
    ],
)
def test_cpu_bf16_detection_reads_whole_flags(flags: str, has: bool) -> None:
    assert cpu_has_bf16(flags) is has


def test_cpu_flags_reads_the_first_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {ICELAKE}\n\nprocessor\t: 1\nflags\t: x\n")
    assert cpu_flags(info).split() == ICELAKE.split()
    assert cpu_flags(tmp_path / "missing") == ""


@pytest.mark.parametrize(("flags", "expected"), [(SAPPHIRE, "bf16"), (ICELAKE, "fp32")])
def test_auto_on_a_cpu_follows_its_flags(monkeypatch, flags: str, expected: str) -> None:
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert resolve_precision("auto") == expected
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_or_loss_scaled_fp16(monkeypatch, bf16: bool, expected: str) -> None:
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_precision("auto") == expected


def test_fp16_needs_a_gpu_and_the_environment_pins_auto(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: SAPPHIRE)
    monkeypatch.setenv(precision.AUTO_ENV, "fp32")
    assert resolve_precision("auto") == "fp32"
    assert resolve_precision("bf16") == "bf16"  # an explicit choice wins
    monkeypatch.setenv(precision.AUTO_ENV, "half")
    with pytest.raises(TrainingError, match="expected fp32, bf16 or fp16"):
        resolve_precision("auto")


def test_base_dtype_follows_precision_only_when_left_to_it() -> None:
    assert base_dtype("auto", "bf16") == "bfloat16"
    assert base_dtype("float32", "bf16") == "float32"  # asked for explicitly: kept
    assert base_dtype("auto", "fp16") == "float16"
    assert base_dtype("auto", "fp32") == "float32"
    assert base_dtype("bfloat16", "fp32") == "bfloat16"
    assert base_dtype("float16", "bf16") == "float16"


def test_upcast_touches_only_trainable_floating_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    before = model[1].weight.detach().clone()
    assert upcast_trainable(model) == 2
    assert {p.dtype for p in model[0].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model[1].parameters()} == {torch.float32}
    assert torch.equal(model[1].weight.detach(), before.float())  # exact: bf16 fits in fp32
    assert upcast_trainable(model) == 0


def test_a_module_mixing_frozen_and_trained_parameters_keeps_one_dtype() -> None:
    norm = torch.nn.LayerNorm(4).to(torch.bfloat16)
    norm.weight.requires_grad_(False)  # bias-only training (BitFit)
    assert upcast_trainable(norm) == 0
    assert norm.weight.dtype == norm.bias.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        norm(torch.randn(2, 4, dtype=torch.bfloat16)).sum().backward()


# ---- whole runs through the API -----------------------------------------------------------------

ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
    {"instruction": "what is the sun", "output": "the sun is big and fire ."},
    {"instruction": "tell a cat", "output": "the cat is happy ."},
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("precision")
    save_tiny_llama_dir(root / "model", tied=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    (root / "recipe.yaml").write_text(
        f"model: {{name: {root / 'model'}}}\n"
        "task: {name: causal_lm, options: {max_length: 64}}\n"
        "data: {train: train.jsonl, eval: train.jsonl}\n"
        "strategy: {name: lora, options: {r: 4, dropout: 0.0}}\n"
        "train: {max_steps: 16, batch_size: 4, lr: 0.03}\n"
    )
    return root


def test_bf16_builds_a_bf16_base_with_fp32_trainable_weights(workspace, monkeypatch) -> None:
    from adapterkit.training import trainer  # api.train calls trainer.fit through the module

    real, seen = trainer.fit, {}

    def spy(model, data, adapter, cfg, out_dir, **kw):
        seen["cfg"] = cfg
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in model.parameters()}
        return real(model, data, adapter, cfg, out_dir, **kw)

    monkeypatch.setattr(trainer, "fit", spy)
    out = workspace / "bf16-build"
    recipe = resolve(workspace / "recipe.yaml", ["train.precision=bf16", "train.max_steps=2"])
    metrics = api.train(recipe, out, progress=False)
    assert seen["cfg"].precision == "bf16" and metrics["precision"] == "bf16"
    assert seen["dtypes"] == {(True, torch.float32), (False, torch.bfloat16)}
    manifest = json.loads((out / "adapterkit.json").read_text())
    assert manifest["base_model"]["dtype"] == "bfloat16"  # reloads on the base it trained on
    loaded = api.load(out)
    assert loaded.compute_dtype == "bfloat16"
    for name, param in loaded.model.named_parameters():
        assert param.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name


def test_bf16_reaches_the_fp32_loss_within_two_percent(workspace) -> None:
    losses = {}
    for p in ("fp32", "bf16"):
        recipe = resolve(workspace / "recipe.yaml", [f"train.precision={p}"])
        metrics = api.train(recipe, workspace / f"run-{p}", progress=False)
        assert metrics["precision"] == p
        losses[p] = metrics["final_eval"]["eval_loss"]
        assert losses[p] < 0.98 * metrics["initial_eval"]["eval_loss"]  # it learned
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.02 * losses["fp32"], losses
