"""The memory plan (adapterkit.plan) against real tiny models: every component, exactly."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from plan_cases import KINDS, STRATEGIES, model_parts
from plan_cases import config as _config
from plan_cases import loss as _loss
from plan_cases import planned as _plan
from plan_cases import real as _real
from plan_cases import saved_activation_bytes as _saved_activation_bytes
from plan_cases import task_name as _task

from adapterkit import testing
from adapterkit.planning.activations import block_transient
from adapterkit.planning.arch import arch_from_config
from adapterkit.planning.memory import CPU_RUNTIME_BYTES, plan
from adapterkit.plugins import load_registry
from adapterkit.strategy import count_parameters, trainable_named_parameters


@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_the_real_models_bytes(kind: str) -> None:
    model = _real(kind)
    seen = {id(p): p for p in model.parameters()}  # tied weights once
    expected = sum(p.numel() * p.element_size() for p in seen.values())
    p = _plan(kind, "full")
    assert p.components["weights"] == expected
    assert p.total_params == sum(p.numel() for p in seen.values())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("strategy", "options"), STRATEGIES)
def test_trainable_parameters_match_the_strategy_on_a_real_model(
    kind: str, strategy: str, options: dict
) -> None:
    trainable, _ = count_parameters(_real(kind, strategy, options))
    p = _plan(kind, strategy, options)
    assert p.trainable_params == trainable
    assert p.components["gradients"] == trainable * 4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("strategy", "options"), [("full", {}), ("lora", {})])
def test_gradients_and_adamw_state_match_a_real_step(
    kind: str, strategy: str, options: dict
) -> None:
    from adapterkit.training.config import TrainConfig
    from adapterkit.training.optim import make_optimizer as _optimizer

    model = _real(kind, strategy, options)
    optimizer = _optimizer(model, TrainConfig())
    _loss(kind, model, 2, 8, pad=False).backward()
    grads = sum(
        p.grad.numel() * p.grad.element_size() for _, p in trainable_named_parameters(model)
    )
    optimizer.step()
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    p = _plan(kind, strategy, options)
    assert p.components["gradients"] == grads
    assert p.components["optimizer"] == state


def _activation_cases() -> list[tuple]:
    """(precision, kind, strategy, options, b, length, batch): float32 over every strategy, bf16
    over those that differ in what autocast keeps; packed rows on the causal LM."""
    out = []
    every = [*STRATEGIES, ("lora", {"dropout": 0.0}), ("last_n", {"n": 2})]
    half = [
        ("full", {}),
        ("head", {}),
        ("last_n", {"n": 1}),
        ("lora", {}),
        ("lora", {"dropout": 0.0}),
    ]
    for precision, strategies in (("fp32", every), ("bf16", half)):
        for kind in KINDS:
            for s, o in strategies:
                out += [
                    (precision, kind, s, o, 1, 12, "one row"),
                    (precision, kind, s, o, 3, 10, "padded"),
                ]
    for precision in ("fp32", "bf16"):
        for s, o in [("full", {}), ("lora", {}), ("lora", {"dropout": 0.0})]:
            out.append((precision, "llama", s, o, 3, 10, "packed"))
    return out


@pytest.mark.parametrize(("precision", "kind", "strategy", "options", "b", "length", "batch"),
                         _activation_cases())  # fmt: skip
def test_activations_equal_the_tensors_autograd_saves(
    kind: str, strategy: str, options: dict, b: int, length: int, batch: str, precision: str
) -> None:
    # bf16 as the trainer runs it: the base stored in bf16, float32 trained weights, autocast.
    # A padded batch is what the causal LM task gives with packing off; packed: the rows as one
    # sequence with restarting positions, attention within each row (the task's default).
    packed = batch == "packed"
    model = _real(kind, strategy, options, precision, packed=packed)
    loss = _loss(kind, model, b, length, batch == "padded", precision=precision, packed=packed)
    measured = _saved_activation_bytes(loss, model)
    planned = _plan(kind, strategy, options, b, length, packing=batch != "padded",
                    precision=precision)  # fmt: skip
    assert planned.components["activations"] == measured


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("strategy", "options"), STRATEGIES)
@pytest.mark.parametrize(("b", "length", "pad"), [(1, 12, False), (3, 10, True), (2, 12, False)])
def test_cuda_activations_equal_the_tensors_autograd_saves(
    kind: str, strategy: str, options: dict, b: int, length: int, pad: bool
) -> None:
    # float32 on CUDA takes other attention kernels than on CPU (estimate_activations says which).
    # One row: exact. Several rows: the plan cannot know whether the batch is padded, which picks
    # the kernel, and takes the larger of the two, so it may only be above.
    model = _real(kind, strategy, options).to("cuda")
    measured = _saved_activation_bytes(_loss(kind, model, b, length, pad, "cuda"), model)
    planned = _plan(kind, strategy, options, b, length, device="cuda").components["activations"]
    if b == 1:
        assert planned == measured
    else:
        assert measured <= planned <= 1.15 * measured


@pytest.mark.parametrize(("strategy", "options"), [("head", {}), ("lora", {}), ("full", {})])
def test_token_classification_activations_equal_the_saved_tensors(
    strategy: str, options: dict
) -> None:
    model = _real("bert-tokens", strategy, options)
    measured = _saved_activation_bytes(_loss("bert-tokens", model, 3, 10, True), model)
    p = _plan("bert-tokens", strategy, options, 3, 10)
    assert p.components["activations"] == measured
    assert p.trainable_params == count_parameters(model)[0]


def test_nf4_weights_equal_bitsandbytes_storage(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from adapterkit.strategy import ModelParts, is_4bit

    testing.save_tiny_llama_dir(tmp_path / "m")
    qlora = load_registry().strategy("qlora")
    opts = qlora.Options()
    parts = ModelParts(head=("lm_head",), new_head=False)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", dtype=torch.float32, **qlora.load_kwargs(opts, parts)
    )
    model = qlora.apply(model, opts, parts)
    storages: dict[int, int] = {}
    quantized = 0
    for p in {id(p): p for p in model.parameters()}.values():
        storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        if is_4bit(p):
            quantized += 1
            state = p.quant_state
            extra = [state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
            for t in extra:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    assert quantized == 2 * 7  # every linear of both blocks; the (tied) head is not quantized
    p = _plan("llama", "qlora")
    assert p.components["weights"] == sum(storages.values())
    assert p.trainable_params == count_parameters(model)[0]
    assert set(p.components["weights_detail"]) == {
        "nf4 packed",
        "quant absmax/double-quant",
        "kept fp32 (head, norms, embeddings, biases, adapters)",
    }


def test_logits_and_loss_are_the_chunked_losss_buffers() -> None:
    # The causal LM computes its head and loss on target rows only, a chunk at a time: one float32
    # [chunk, V] buffer (the softmax is taken in place) and its [chunk, H] slice of the gradient,
    # the targets' hidden states and their gradient, the int64 targets and a chunk's row indices
    # (measured against the profiled peak in tests/unit/tasks/test_causal_lm_fast_path.py).
    config = testing.tiny_llama_config()
    b, length, vocab, hidden = 4, 16, config.vocab_size, config.hidden_size
    n = b * (length - 1)  # one chunk holds every target row
    p = _plan("llama", "lora", b=b, length=length)
    assert p.components["logits_and_loss"] == 4 * (n * vocab + n * hidden + 2 * n * hidden) + 16 * n
    big = plan("smollm2-135m", "causal_lm", ["lora"], None, 4, 512, "cpu")[0]
    copy = 4 * 512 * 49152 * 4  # one full float32 logits tensor, which is never built
    assert big.components["logits_and_loss"] < copy / 2


def test_total_is_the_larger_of_the_two_peaks_plus_what_stays() -> None:
    c = _plan("llama", "full", b=2, length=8).components
    fixed = c["runtime_overhead"] + c["weights"] + c["optimizer"]
    forward = max(c["activations"] + c["logits_and_loss"], c["inside_blocks"])
    update = c["gradients"] + c["optimizer_step_scratch"]
    assert c["checkpoint_mapped"] == 0  # only a quantized load keeps its checkpoint mapped
    assert c["total"] == fixed + max(forward, update)
    assert c["activations_checkpointed"] < c["activations"]
    assert c["total_checkpointed"] <= c["total"]


def test_runtime_overhead_is_the_cpu_process_or_the_cublas_workspaces() -> None:
    assert _plan("bert", "lora", device="cpu").components["runtime_overhead"] == CPU_RUNTIME_BYTES
    cuda = _plan("bert", "lora", device="cuda").components["runtime_overhead"]
    assert cuda == 2 * 32 * 2**20  # one cuBLAS workspace for forward's thread, one for backward's


@pytest.mark.parametrize("kind", KINDS)
def test_qlora_on_cpu_counts_the_mapped_checkpoint_of_what_it_quantized(kind: str) -> None:
    from adapterkit.planning.weights import quantized_linears

    model = _real(kind)
    parts = model_parts(model, _task(kind))
    names = quantized_linears(model, parts.head)
    source = sum(p.numel() * 4 for n, p in model.named_parameters() if n in names)
    assert source > 0
    assert _plan(kind, "qlora").components["checkpoint_mapped"] == source
    assert _plan(kind, "qlora", device="cuda").components["checkpoint_mapped"] == 0
    assert _plan(kind, "lora").components["checkpoint_mapped"] == 0


@pytest.mark.parametrize(("kind", "b", "length"), [("llama", 2, 12), ("bert", 3, 16)])
def test_block_transient_formula(kind: str, b: int, length: int) -> None:
    a = arch_from_config(_config(kind))
    t, sq = b * length, b * a.heads * length**2 * 4
    if kind == "bert":
        mlp = 4 * t * (2 * a.hidden + 2 * a.intermediate)
        assert block_transient(a, b, length, "cpu") == max(mlp, 4 * t * 4 * a.hidden + 4 * sq)
        assert block_transient(a, b, length, "cuda") == max(mlp, 4 * t * 4 * a.hidden)
    else:
        mlp = 4 * t * (2 * a.hidden + 3 * a.intermediate)
        attn = 4 * t * (a.hidden + 3 * a.heads * a.head_dim)
        assert block_transient(a, b, length, "cpu") == max(mlp, attn)
        assert block_transient(a, b, length, "cuda") == max(mlp, attn + 2 * sq)


def _live_peak_during_forward(model: Any, kind: str, b: int, length: int) -> int:
    """Peak bytes of the tensor storages created during one training forward + loss (so not the
    parameters, which exist before), from the profiler's memory timeline."""
    if kind != "llama":
        peak, _ = testing.profiled_tensor_peak(lambda: _loss(kind, model, b, length, pad=False))
        return peak
    # The causal LM's own loss (the chunked head on its targets), on an unpadded batch.
    task = load_registry().task("causal_lm")
    ids = torch.randint(5, 100, (b, length), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    peak, _ = testing.profiled_tensor_peak(lambda: task.loss(model, batch))
    return peak


@pytest.mark.parametrize("kind", KINDS)
def test_a_frozen_models_forward_stays_within_the_planned_transient(kind: str) -> None:
    # `head` freezes every block (Llama untied, else the tied embedding trains through them all):
    # nothing in them is saved, so the forward's peak is one block's working set. The plan must
    # not be below what is live, nor wildly above it.
    import transformers

    from adapterkit.plugins import load_registry

    config = testing.tiny_llama_config(tied=False) if kind == "llama" else _config(kind)
    torch.manual_seed(0)
    cls = (
        transformers.LlamaForCausalLM
        if kind == "llama"
        else transformers.BertForSequenceClassification
    )
    model = cls(config)
    head = load_registry().strategy("head")
    model = head.apply(model, head.Options(), model_parts(model, _task(kind))).train()
    b, length = 4, 32
    t_opts = (
        type(load_registry().task("causal_lm")).Options(packing=False) if kind == "llama" else None
    )
    (p,) = plan(config, _task(kind), ["head"], None, b, length, "cpu", task_options=t_opts)
    assert p.components["inside_blocks"] > p.components["activations"]  # a frozen block decides
    c = p.components
    planned = max(c["activations"] + c["logits_and_loss"], c["inside_blocks"])
    live = _live_peak_during_forward(model, kind, b, length)
    # Small fixed tensors (the attention mask, the rotary tables) are not planned: 18,688 of the
    # tiny Llama's 166,144 live bytes (11%), a share that shrinks with the model.
    assert 0.85 * live <= planned <= 1.5 * live


def test_max_batch_size_is_consistent_with_fits() -> None:
    p = _plan("llama", "lora", b=1, length=64)
    base = p.total
    for budget in (base - 1, base, base + 10**5, base + 10**6, base + 10**7):
        best = p.max_batch_size(budget)
        if best == 0:
            assert not p.fits(budget)
            continue
        again = plan(_config("llama"), "causal_lm", ["lora"], None, best, 64, "cpu")[0]
        over = plan(_config("llama"), "causal_lm", ["lora"], None, best + 1, 64, "cpu")[0]
        assert again.fits(budget) and not over.fits(budget)
    sizes = [p.max_batch_size(base + k * 10**6) for k in range(6)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_plans_an_8b_config_from_a_bare_config_json_quickly(tmp_path: Path) -> None:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan(_config("llama"), "causal_lm", ["lora"], None, 1, 8, "cuda")  # imports out of the timing
    start = time.perf_counter()
    (p,) = plan(tmp_path / "config.json", "causal_lm", ["lora"], None, 1, 2048, "cuda")
    assert time.perf_counter() - start < 5.0  # meta tensors, no weights: about 1 s
    assert sorted(x.name for x in tmp_path.iterdir()) == ["config.json"]  # nothing else to read
    assert 8.0e9 < p.total_params < 8.1e9
    # r=8 on every linear: r x (in + out) each; q, o: 4096->4096; k, v: 4096->1024; and the
    # MLP's gate, up (4096->14336) and down (14336->4096)
    assert p.trainable_params == 32 * 8 * (8192 + 5120 + 5120 + 8192 + 3 * 18432)
    # LoRA activations grow with the batch and dwarf the adapter's own state at this length
    assert p.components["activations"] > 10 * p.components["optimizer"]
