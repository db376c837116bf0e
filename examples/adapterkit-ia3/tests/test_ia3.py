"""The IA3 strategy, checked the way any plugin checks itself: with adapterkit.testing's kit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapterkit_ia3 import Ia3

from adapterkit.errors import RecipeError
from adapterkit.strategy import ModelParts
from adapterkit.testing import check_strategy, save_tiny_llama_dir, tiny_tokenizer
from adapterkit.testing.fixtures import TASK_CASES


def test_ia3_meets_the_strategy_contract_on_every_builtin_task() -> None:
    tasks = check_strategy(Ia3)
    assert tasks == list(TASK_CASES)  # every built-in task, each on its usual tiny model


def test_ia3_with_its_own_target_modules() -> None:
    options = {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "feedforward_modules": ["down_proj"],
    }
    assert check_strategy(Ia3, options, tasks=["causal_lm"]) == ["causal_lm"]


def test_an_architecture_without_defaults_asks_for_target_modules() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))  # peft knows no IA3 targets for it
    with pytest.raises(RecipeError, match="target_modules"):
        Ia3().apply(model, Ia3.Options(), ModelParts(head=(), new_head=False))


def test_the_adapter_directory_loads_with_plain_peft(tmp_path: Path) -> None:
    """adapter_model.safetensors in peft's key format plus extra_files' adapter_config.json."""
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_llama_dir(tmp_path / "base")
    strategy, options = Ia3(), Ia3.Options()
    model = strategy.apply(
        AutoModelForCausalLM.from_pretrained(base_dir), options, ModelParts(("lm_head",), False)
    )
    torch.manual_seed(0)
    with torch.no_grad():  # move every vector away from its initial ones, as training would
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    tensors = {
        k: v.detach().clone() for k, v in strategy.adapter_state_dict(model, options).items()
    }
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    for name, data in strategy.extra_files(model, options).items():
        (adapter / name).write_bytes(data)

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    ids = tiny_tokenizer()("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model.eval()(ids).logits)
