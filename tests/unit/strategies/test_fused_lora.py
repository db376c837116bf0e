"""The fused LoRA linear (adapterkit_strategies._fused_lora) against peft's own forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from adapterkit_strategies import _fused_lora

from adapterkit import testing


def _model(dropout: float = 0.0, use_dora: bool = False, bias: bool = False) -> Any:
    """A tiny peft LoRA Llama with non-zero B (so the update matters), in float32."""
    import peft
    import transformers

    torch.manual_seed(0)
    config = testing.tiny_llama_config()
    config.attention_bias = bias
    model = transformers.LlamaForCausalLM(config)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", use_dora=use_dora
    )
    model = peft.get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model


def _run(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits
    if logits.requires_grad:  # not with adapters disabled or merged: nothing trains then
        (logits.square().mean() + logits.mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


IDS = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("bias", [False, True])
def test_fused_equals_peft_in_float32(bias: bool) -> None:
    reference = _run(_model(bias=bias), IDS)
    model = _model(bias=bias)
    assert _fused_lora.install(model) == 7 * testing.tiny_llama_config().num_hidden_layers
    logits, grads = _run(model, IDS)
    torch.testing.assert_close(logits, reference[0], rtol=1e-5, atol=1e-5)
    assert grads.keys() == reference[1].keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_fused_under_bf16_autocast_is_as_close_to_float32_as_peft() -> None:
    """bf16 rounds in other places than peft's ops do; the gradient stays as close to fp32."""

    def grads(fused: bool, bf16: bool) -> dict[str, torch.Tensor]:
        model = _model()
        if bf16:  # the trainer's layout: frozen base in bf16, LoRA matrices float32
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        if fused:
            _fused_lora.install(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = _run(model, IDS)[1]
        assert all(g.dtype == torch.float32 for g in out.values())
        return out

    def error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
        num = sum(float((got[k] - ref[k]).norm() ** 2) for k in ref)
        return (num / sum(float(ref[k].norm() ** 2) for k in ref)) ** 0.5

    fp32 = grads(fused=False, bf16=False)
    peft_err, fused_err = error(grads(False, True), fp32), error(grads(True, True), fp32)
    assert fused_err < 0.02
    assert fused_err < 2 * peft_err


def test_evaluation_is_peft_bit_for_bit() -> None:
    """In eval mode, or without gradients, the layers run peft's own forward."""
    model, reference = _model(), _model()
    _fused_lora.install(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, reference(input_ids=IDS).logits)
    model.eval()
    reference.eval()
    assert torch.equal(model(input_ids=IDS).logits, reference(input_ids=IDS).logits)


@pytest.mark.parametrize(
    "case", ["dropout", "dora", "disabled", "merged", "other adapter", "frozen input"]
)
def test_falls_back_to_peft_or_stays_exact_where_it_must(case: str) -> None:
    """Dropout in training, DoRA, disabled or merged adapters use peft's forward (the same
    result as without the fused path); an input that needs no gradient gets none."""
    kwargs = {"dropout": {"dropout": 0.1}, "dora": {"use_dora": True}}.get(case, {})
    model, reference = _model(**kwargs), _model(**kwargs)
    _fused_lora.install(model)
    for m in (model, reference):
        if case == "disabled":
            m.disable_adapter_layers()
        if case == "merged":
            m.merge_adapter()
        if case == "other adapter":
            import peft

            m.add_adapter("second", peft.LoraConfig(r=2, target_modules="all-linear"))
            m.set_adapter("second")
    torch.manual_seed(3)
    got = _run(model, IDS)
    torch.manual_seed(3)
    want = _run(reference, IDS)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    if case == "frozen input":  # embeddings frozen: the first block's input has no gradient
        assert all("embed" not in name for name in got[1])
