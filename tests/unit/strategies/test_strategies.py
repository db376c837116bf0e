"""The built-in strategies on tiny random models: what trains, what is saved, and exact reloads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from adapterkit_strategies import Full, Head, LastN, Lora, Qlora
from adapterkit_strategies.qlora import disable_cpu_4bit_packing
from safetensors import safe_open

from adapterkit.errors import RecipeError
from adapterkit.storage.adapter_format import WEIGHTS, read_adapter, save_adapter
from adapterkit.strategy import ModelParts, final_norm, find_blocks
from adapterkit.testing import save_tiny_llama_dir, tiny_bert_config, tiny_llama_config

LM = ModelParts(head=("lm_head",), new_head=False)
STRATEGIES = {"full": Full, "head": Head, "last_n": LastN, "lora": Lora, "qlora": Qlora}


def _block(i: int) -> list[str]:
    p = f"model.layers.{i}."
    return [
        p + "self_attn.q_proj.weight",
        p + "self_attn.k_proj.weight",
        p + "self_attn.v_proj.weight",
        p + "self_attn.o_proj.weight",
        p + "mlp.gate_proj.weight",
        p + "mlp.up_proj.weight",
        p + "mlp.down_proj.weight",
        p + "input_layernorm.weight",
        p + "post_attention_layernorm.weight",
    ]


_LORA = [
    f"base_model.model.model.layers.{i}.{mod}.lora_{ab}.weight"
    for i in (0, 1)
    for mod in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    for ab in ("A", "B")
]

# Expected adapter tensors (names as saved in adapter_model.safetensors), per strategy and tying.
# With tied embeddings the LM head *is* model.embed_tokens.weight: stored once, under that name.
EXPECTED: dict[tuple[str, bool], list[str]] = {
    ("full", True): ["model.embed_tokens.weight", *_block(0), *_block(1), "model.norm.weight"],
    ("full", False): [
        "model.embed_tokens.weight",
        *_block(0),
        *_block(1),
        "model.norm.weight",
        "lm_head.weight",
    ],
    ("head", True): ["model.embed_tokens.weight"],
    ("head", False): ["lm_head.weight"],
    ("last_n", True): [*_block(1), "model.norm.weight"],
    ("last_n", False): [*_block(1), "model.norm.weight"],
    ("lora", True): _LORA,
    ("lora", False): _LORA,
    ("qlora", True): _LORA,
    ("qlora", False): _LORA,
}
OPTIONS = {"last_n": {"n": 1}}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        tied: save_tiny_llama_dir(root / f"tied-{tied}", tied=tied, seed=0)
        for tied in (True, False)
    }


def make_options(name: str, **values):
    return STRATEGIES[name].Options(**{**OPTIONS.get(name, {}), **values})


def build(name: str, base_dir: Path, seed: int, parts: ModelParts = LM, cls=None, **opts):
    """from_pretrained(base_dir) with the strategy's load_kwargs, then apply; seed set first so a
    reload proves nothing depends on the process RNG."""
    from transformers import AutoModelForCausalLM

    strategy = STRATEGIES[name]()
    options = make_options(name, **opts)
    torch.manual_seed(seed)
    base = (cls or AutoModelForCausalLM).from_pretrained(
        base_dir, **strategy.load_kwargs(options, parts)
    )
    return strategy, options, strategy.apply(base, options, parts)


def file_name(param_name: str) -> str:
    """A peft parameter name as peft saves it (without the adapter name)."""
    return param_name.replace(".default.", ".")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {file_name(n) for n, p in model.named_parameters() if p.requires_grad}


def assert_adapter_is_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The trainer's contract: adapter tensors are exactly the trainable parameters (storage)."""
    params = {(p.data_ptr(), tuple(p.shape)) for p in model.parameters() if p.requires_grad}
    saved = {(t.data_ptr(), tuple(t.shape)) for t in tensors.values()}
    assert len(saved) == len(tensors)
    assert saved == params


def lm_batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


def train(model: torch.nn.Module, steps: int = 2, loss_fn=None) -> list[float]:
    """A plain AdamW loop (lr 1e-2) on one fixed batch; returns the losses."""
    ids = lm_batch()
    loss_fn = loss_fn or (lambda m: m(input_ids=ids, labels=ids).loss)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    return model(input_ids=lm_batch(1)).logits


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_trains_saves_and_reloads_exactly(name: str, tied: bool, tiny_dirs, tmp_path) -> None:
    expected = sorted(EXPECTED[(name, tied)])
    strategy, options, model = build(name, tiny_dirs[tied], seed=0)
    assert sorted(trainable_names(model)) == expected

    before = snapshot(model)
    train(model)
    after = snapshot(model)
    changed = sorted(file_name(n) for n in before if not torch.equal(before[n], after[n]))
    assert changed == expected  # everything else is bit-identical, 4-bit weights included

    tensors = strategy.adapter_state_dict(model, options)
    assert_adapter_is_trainable(model, tensors)
    extra = strategy.extra_files(model, options) if hasattr(strategy, "extra_files") else None
    out = tmp_path / "adapter"
    size = save_adapter(out, tensors, {"strategy": name}, extra)
    assert size == (out / WEIGHTS).stat().st_size
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        assert sorted(f.keys()) == expected
    trained = logits(model)

    strategy2, options2, fresh = build(name, tiny_dirs[tied], seed=1234)
    assert not torch.equal(logits(fresh), trained)
    _, loaded = read_adapter(out)
    strategy2.load_adapter_state_dict(fresh, loaded, options2)
    assert torch.equal(logits(fresh), trained)


@pytest.mark.parametrize("name", ["full", "last_n", "lora"])
def test_reload_refuses_adapter_of_other_shape(name: str, tiny_dirs) -> None:
    from adapterkit.errors import AdapterError

    strategy, options, model = build(name, tiny_dirs[True], seed=0)
    tensors = dict(strategy.adapter_state_dict(model, options))
    tensors.pop(sorted(tensors)[0])
    with pytest.raises(AdapterError, match="missing"):
        strategy.load_adapter_state_dict(model, tensors, options)


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_dora_and_rslora_adapters_reload_exactly(name: str, tiny_dirs, tmp_path) -> None:
    opts = {"use_dora": True, "use_rslora": True, "r": 4, "target_modules": ["q_proj", "v_proj"]}
    strategy, options, model = build(name, tiny_dirs[True], seed=0, **opts)
    train(model)
    tensors = strategy.adapter_state_dict(model, options)
    assert_adapter_is_trainable(model, tensors)
    assert len(tensors) == 2 * 2 * 3  # layers x (q, v) x (lora_A, lora_B, magnitude)
    assert sum("lora_magnitude_vector" in k for k in tensors) == 4
    save_adapter(tmp_path / "a", tensors, {}, strategy.extra_files(model, options))
    strategy2, options2, fresh = build(name, tiny_dirs[True], seed=5, **opts)
    strategy2.load_adapter_state_dict(fresh, read_adapter(tmp_path / "a")[1], options2)
    assert torch.equal(logits(fresh), logits(model))


def test_last_n_more_blocks_than_the_model_has(tiny_dirs) -> None:
    with pytest.raises(RecipeError) as info:
        build("last_n", tiny_dirs[True], seed=0, n=3)
    assert info.value.source == "strategy.options.n"
    assert "2 blocks" in str(info.value)


def test_find_blocks_on_bert_and_last_n_with_new_head() -> None:
    from transformers import BertForSequenceClassification, BertModel

    config = tiny_bert_config()
    name, blocks = find_blocks(BertModel(config))
    assert name == "encoder.layer" and len(blocks) == 2

    config.num_labels = 3
    model = BertForSequenceClassification(config)
    name, blocks = find_blocks(model)
    assert name == "bert.encoder.layer" and len(blocks) == 2
    assert final_norm(model, name) is None  # post-norm: the norms live inside the blocks
    parts = ModelParts(head=("classifier",), new_head=True)
    model = LastN().apply(model, LastN.Options(n=1), parts)
    trainable = trainable_names(model)
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(n.startswith(("bert.encoder.layer.1.", "classifier.")) for n in trainable)


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_peft_loads_the_directory(name: str, tiny_dirs, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    strategy, options, model = build(name, tiny_dirs[True], seed=0)
    train(model)
    out = tmp_path / "adapter"
    tensors = strategy.adapter_state_dict(model, options)
    save_adapter(out, tensors, {"strategy": name}, strategy.extra_files(model, options))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_dirs[True])
    assert config["r"] == 8 and config["peft_type"] == "LORA"

    strategy2, options2, ours = build(name, tiny_dirs[True], seed=7)
    strategy2.load_adapter_state_dict(ours, read_adapter(out)[1], options2)
    torch.manual_seed(9)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_dirs[True], **strategy.load_kwargs(options, LM)
    )
    # bitsandbytes' CPU inference repacking crashes on 32-wide layers (see qlora.py).
    disable_cpu_4bit_packing(base)
    plain = PeftModel.from_pretrained(base, out)
    reference = logits(model) if name == "lora" else logits(ours)
    assert torch.equal(logits(plain), reference)
    assert torch.equal(logits(ours), reference)


def test_qlora_quantizes_the_body_not_the_head_and_learns(tiny_dirs) -> None:
    import bitsandbytes as bnb

    _, _, model = build("qlora", tiny_dirs[False], seed=0, dropout=0.0)
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 14
    assert all(m.weight.quant_type == "nf4" for m in linear4)
    head = model.get_base_model().lm_head
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
    logits(model)  # an evaluation pass first: training must still work after one (qlora.py)
    losses = train(model, steps=10)
    assert max(losses[-3:]) < min(losses[:3]), losses
    assert losses[-1] < 0.93 * losses[0], losses


@pytest.mark.parametrize("name", ["lora", "qlora"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_new_classifier_head_trains_unquantized_and_is_saved(name: str, arch: str, tmp_path):
    from transformers import BertForSequenceClassification, LlamaForSequenceClassification

    cls, config, head = {
        "bert": (BertForSequenceClassification, tiny_bert_config(), "classifier"),
        "llama": (LlamaForSequenceClassification, tiny_llama_config(), "score"),
    }[arch]
    config.num_labels = 3
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path / "base")
    parts = ModelParts(head=(head,), new_head=True)
    strategy, options, model = build(name, tmp_path / "base", 0, parts=parts, cls=cls)

    trainable = trainable_names(model)
    head_names = {n for n in trainable if "lora_" not in n}
    prefix = f"base_model.model.{head}.modules_to_save."
    assert head_names == {prefix + "weight"} | ({prefix + "bias"} if arch == "bert" else set())
    assert not [n for n in trainable if n.startswith(f"base_model.model.{head}.") and "lora_" in n]
    original = model.get_base_model().get_submodule(head).original_module
    assert type(original) is torch.nn.Linear  # never quantized, never LoRA-adapted
    assert not any(p.requires_grad for p in original.parameters())

    ids, labels = lm_batch(), torch.tensor([0, 2])
    before = original.weight.detach().clone()
    trained_copy = model.get_base_model().get_submodule(head).modules_to_save["default"]
    start = trained_copy.weight.detach().clone()
    train(model, loss_fn=lambda m: m(input_ids=ids, labels=labels).loss)
    assert not torch.equal(trained_copy.weight, start)
    assert torch.equal(original.weight, before)

    tensors = strategy.adapter_state_dict(model, options)
    assert_adapter_is_trainable(model, tensors)
    assert f"base_model.model.{head}.weight" in tensors


def test_plugin_registers_all_five_without_importing_torch() -> None:
    code = (
        "import sys, adapterkit_strategies as s\n"
        "names = []\n"
        "s.register_strategies(register=lambda c: names.append(c.name))\n"
        "print(','.join(names), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["full,head,last_n,lora,qlora", "False"]
