"""The memory plan under bf16 (the base stored in bf16, float32 trained weights, autocast) against
real tiny models set up as the trainer sets them up, and how a recipe's precision is resolved.

The activations are compared exactly in test_memory.py (parametrized by precision); here: the
weights, gradients and AdamW state, QLoRA, the frozen-forward transient, the loss's dtypes and
the recipe/CLI side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from plan_cases import (
    KINDS,
    STRATEGIES,
    model_parts,
    param_bytes,
    planned,
    real,
    saved_activation_bytes,
    task_name,
)
from plan_cases import loss as model_loss

from adapterkit import testing
from adapterkit.planning.memory import Precision, from_recipe, plan
from adapterkit.plugins import load_registry
from adapterkit.strategy import count_parameters, trainable_named_parameters


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("strategy", "options"), STRATEGIES[:4])
def test_bf16_weights_are_the_trained_models_bytes(kind: str, strategy: str, options: dict) -> None:
    model = real(kind, strategy, options, "bf16")
    p = planned(kind, strategy, options, precision="bf16")
    assert p.precision == "bf16"
    assert p.components["weights"] == param_bytes(model)
    assert p.trainable_params == count_parameters(model)[0]
    # frozen parameters at 2 bytes, the trained ones (and so their gradients) at 4
    trained = [q for _, q in trainable_named_parameters(model)]
    assert {q.dtype for q in trained} == {torch.float32}
    assert p.components["gradients"] == 4 * sum(q.numel() for q in trained)
    frozen = p.total_params > p.trainable_params
    fp32 = planned(kind, strategy, options).components["weights"]
    assert p.components["weights"] < fp32 if frozen else p.components["weights"] == fp32


@pytest.mark.parametrize(("kind", "strategy"), [("bert", "full")])
def test_bf16_gradients_and_adamw_state_match_a_real_step(kind: str, strategy: str) -> None:
    from adapterkit.training.config import TrainConfig
    from adapterkit.training.optim import make_optimizer

    model = real(kind, strategy, {}, "bf16")
    optimizer = make_optimizer(model, TrainConfig())
    model_loss(kind, model, 2, 8, pad=False, precision="bf16").backward()
    params = [q for _, q in trainable_named_parameters(model)]
    grads = sum(q.grad.numel() * q.grad.element_size() for q in params if q.grad is not None)
    optimizer.step()
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    p = planned(kind, strategy, {}, precision="bf16")
    assert p.components["gradients"] == grads
    assert p.components["optimizer"] == state
    assert p.components["optimizer_step_scratch"] == 0  # fused AdamW updates in place


@pytest.mark.parametrize(("strategy", "options"), [("lora", {}), ("full", {})])
def test_bf16_token_classification_activations_equal_the_saved_tensors(
    strategy: str, options: dict
) -> None:
    model = real("bert-tokens", strategy, options, "bf16")
    loss = model_loss("bert-tokens", model, 3, 10, True, precision="bf16")
    p = planned("bert-tokens", strategy, options, 3, 10, precision="bf16")
    assert p.components["activations"] == saved_activation_bytes(loss, model)


@pytest.mark.parametrize("options", [{"dropout": 0.0}])
def test_bf16_qlora_weights_and_activations_equal_bitsandbytes(
    tmp_path: Path, options: dict
) -> None:
    # QLoRA's base is NF4 with everything else cast to float32 by peft's
    # prepare_model_for_kbit_training: a float32 residual stream, and 4-bit linears that
    # compute in bf16 and hand back their input's dtype.
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from adapterkit.strategy import ModelParts
    from adapterkit.training.precision import upcast_trainable

    testing.save_tiny_llama_dir(tmp_path / "m")
    qlora = load_registry().strategy("qlora")
    opts = qlora.Options(**options)
    parts = ModelParts(head=("lm_head",), new_head=False)
    kwargs = qlora.load_kwargs(opts, parts)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16, **kwargs)
    model = qlora.apply(model, opts, parts)
    upcast_trainable(model)
    model.train()
    measured = saved_activation_bytes(
        model_loss("llama", model, 3, 10, True, precision="bf16"), model
    )
    p = planned("llama", "qlora", options, 3, 10, packing=False, precision="bf16")
    assert p.components["activations"] == measured
    assert p.trainable_params == count_parameters(model)[0]
    assert "kept fp32 (head, norms, embeddings, biases, adapters)" in p.components["weights_detail"]


def _live_peak(model: Any, kind: str, b: int, length: int) -> int:
    """Peak bytes of the storages created during one bf16 training forward + loss."""
    task = load_registry().task("causal_lm")
    ids = torch.randint(5, 100, (b, length), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def run() -> object:
        if kind != "llama":
            return model_loss(kind, model, b, length, pad=False, precision="bf16")
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the causal LM's own (chunked) loss
            return task.loss(model, batch)

    return testing.profiled_tensor_peak(run)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_frozen_bf16_forward_stays_within_the_planned_transient(kind: str) -> None:
    # As test_memory's float32 test: `head` on an untied Llama freezes every block, so the
    # forward's peak is one block's working set, here in bf16.
    import transformers

    from adapterkit.training.precision import upcast_trainable

    config = (
        testing.tiny_llama_config(tied=False) if kind == "llama" else testing.tiny_bert_config()
    )
    torch.manual_seed(0)
    cls = (
        transformers.LlamaForCausalLM
        if kind == "llama"
        else transformers.BertForSequenceClassification
    )
    model = cls._from_config(config, dtype=torch.bfloat16)
    head = load_registry().strategy("head")
    model = head.apply(model, head.Options(), model_parts(model, task_name(kind))).train()
    upcast_trainable(model)
    b, length = 4, 32
    task = load_registry().task(task_name(kind))
    t_opts = type(task).Options(packing=False) if kind == "llama" else None
    (p,) = plan(config, task_name(kind), ["head"], None, b, length, "cpu", task_options=t_opts,
                precision="bf16")  # fmt: skip
    c = p.components
    assert c["inside_blocks"] > c["activations"]  # a frozen block decides
    peak = max(c["activations"] + c["logits_and_loss"], c["inside_blocks"])
    live = _live_peak(model, kind, b, length)
    assert 0.9 * live <= peak <= 1.5 * live, (peak, live)


def _recording_task(seen: list[dict[str, int]]) -> Any:
    """The causal LM task with a `logits_bytes` that takes the loss's dtypes and records them."""
    base: Any = type(load_registry().task("causal_lm"))

    class Recording(base):
        def logits_bytes(self, batch, length, config, options, hidden_bytes=4, head_bytes=4):
            seen.append({"hidden_bytes": hidden_bytes, "head_bytes": head_bytes})
            return super().logits_bytes(batch, length, config, options)

    return Recording()


@pytest.mark.parametrize(
    ("strategy", "precision", "expected"),
    [("lora", "bf16", (2, 2)), ("full", "bf16", (4, 4)), ("lora", "fp32", (4, 4))],
)
def test_a_task_loss_is_told_the_hidden_state_and_head_dtypes(
    strategy: str, precision: str, expected: tuple[int, int]
) -> None:
    # lora: frozen bf16 final norm and (tied) head; full: float32 master weights throughout
    seen: list[dict[str, int]] = []
    config = testing.tiny_llama_config()
    plan(config, _recording_task(seen), [strategy], None, 2, 8, "cpu", precision=precision)
    assert seen[-1] == dict(zip(("hidden_bytes", "head_bytes"), expected, strict=True))


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    testing.save_tiny_llama_dir(tmp_path / "m")
    (tmp_path / "d.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name: {tmp_path / 'm'}{extra}}}\n"
        "task: {name: causal_lm, options: {max_length: 64}}\n"
        "data: {train: d.jsonl}\nstrategy: {name: lora}\ntrain: {batch_size: 4}\n"
    )
    return recipe


@pytest.mark.parametrize("pinned", ["fp32", "bf16"])
def test_from_recipe_resolves_precision_as_the_trainer(
    tmp_path: Path, pinned: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapterkit.recipe import resolve
    from adapterkit.training import resolve as train_resolve
    from adapterkit.training.precision import AUTO_ENV

    monkeypatch.setenv(AUTO_ENV, pinned)  # what `precision: auto` means on this machine
    recipe = resolve(_recipe(tmp_path))
    cfg, model = train_resolve.settings(recipe)
    (p,) = from_recipe(recipe, None, "cpu")
    assert p.precision == cfg.precision == pinned
    same = plan(tmp_path / "m", "causal_lm", ["lora"], None, 4, 64, "cpu",
                task_options=recipe.task.options,
                precision=Precision(cfg.precision, model.dtype))[0]  # fmt: skip
    assert p.components == same.components


def test_an_explicit_base_dtype_is_planned_under_bf16(tmp_path: Path) -> None:
    from adapterkit.recipe import resolve

    recipe = resolve(_recipe(tmp_path, ", dtype: float32"), ["train.precision=bf16"])
    (kept,) = from_recipe(recipe, None, "cpu")
    (auto,) = from_recipe(resolve(_recipe(tmp_path), ["train.precision=bf16"]), None, "cpu")
    assert kept.precision == auto.precision == "bf16"
    assert set(kept.components["weights_detail"]) == {"fp32"}
    assert set(auto.components["weights_detail"]) == {"bf16", "fp32"}
    assert kept.components["weights"] > auto.components["weights"]


def test_plan_command_takes_the_precision(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from adapterkit.cli import cli

    recipe = _recipe(tmp_path)
    out = {}
    for precision in ("fp32", "bf16"):
        args = ["plan", str(recipe), "--device", "cpu", "--precision", precision, "--json"]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        (out[precision],) = json.loads(res.output)
        assert out[precision]["precision"] == precision
    assert out["bf16"]["components"]["weights"] < out["fp32"]["components"]["weights"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("strategy", "options"), STRATEGIES)
@pytest.mark.parametrize(("b", "length", "pad"), [(1, 12, False), (3, 10, True)])
def test_cuda_bf16_activations_equal_the_tensors_autograd_saves(
    kind: str, strategy: str, options: dict, b: int, length: int, pad: bool
) -> None:
    # Written from PyTorch's flash and memory-efficient kernels, never run on a GPU here: one row
    # exact; several rows (padded or not, which picks the kernel) within the larger of the two.
    model = real(kind, strategy, options, "bf16").to("cuda")
    loss = model_loss(kind, model, b, length, pad, "cuda", precision="bf16")
    measured = saved_activation_bytes(loss, model)
    p = planned(kind, strategy, options, b, length, "cuda", packing=not pad, precision="bf16")
    if b == 1:
        assert p.components["activations"] == measured
    else:
        assert measured <= p.components["activations"] <= 1.15 * measured
