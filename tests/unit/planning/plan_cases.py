"""Real tiny models set up as training sets them up, their losses and their saved tensors, for the
memory plan's tests (test_memory.py: float32 and the shared cases; test_plan_precision.py: bf16)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from adapterkit import testing
from adapterkit.planning.arch import Device
from adapterkit.planning.memory import plan
from adapterkit.plugins import load_registry
from adapterkit.tasks._loss import summed_cross_entropy

STRATEGIES = [("full", {}), ("head", {}), ("last_n", {"n": 1}), ("lora", {}), ("lora", {"r": 4})]
KINDS = ["llama", "bert"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def model_parts(model: Any, task_name: str) -> Any:
    """The head as the registered task finds it (`Task.model_parts`), for `model`'s config."""
    from adapterkit.storage.sources import ModelSource

    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        task = load_registry().task(task_name)
        return task.model_parts(ModelSource("test", Path(tmp), None), type(task).Options())


def config(kind: str) -> Any:
    return testing.tiny_llama_config() if kind == "llama" else testing.tiny_bert_config()


def task_name(kind: str) -> str:
    return {"llama": "causal_lm", "bert": "sequence_classification"}.get(
        kind, "token_classification"
    )


def real(
    kind: str,
    strategy: str | None = None,
    options: dict | None = None,
    precision: str = "fp32",
    packed: bool = False,
) -> Any:
    """A real tiny model of the task's class, built as training builds it: the base in the
    precision's dtype, the strategy applied, then (bf16) the trained parameters upcast to float32
    master weights. `packed`: with the causal LM's packed attention."""
    import transformers

    from adapterkit.tasks.causal_lm import packing
    from adapterkit.training.precision import upcast_trainable

    torch.manual_seed(0)
    cls = getattr(
        transformers,
        {"llama": "LlamaForCausalLM", "bert": "BertForSequenceClassification"}.get(
            kind, "BertForTokenClassification"
        ),
    )
    extra = {"attn_implementation": packing.register()} if packed else {}
    model = cls._from_config(config(kind), dtype=DTYPES[precision], **extra)
    if strategy is not None:
        s = load_registry().strategy(strategy)
        model = s.apply(model, s.Options(**(options or {})), model_parts(model, task_name(kind)))
    if precision != "fp32":
        upcast_trainable(model)
    return model.train()


def loss(
    kind: str,
    model: Any,
    b: int,
    length: int,
    pad: bool,
    device: str = "cpu",
    precision: str = "fp32",
    packed: bool = False,
) -> torch.Tensor:
    """The task's training loss on a random batch (row 0 padded to half its length if `pad`),
    under the precision's autocast. `packed`: the b rows as one sequence with restarting position
    ids and no mask, as the causal LM packs them."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (b, length), generator=g).to(device)
    mask = torch.ones_like(ids)
    if pad:
        mask[0, length // 2 :] = 0
    on = precision != "fp32"
    with torch.autocast(device, dtype=torch.bfloat16, enabled=on):
        if kind == "llama" and packed:
            pos = torch.arange(length, device=device).repeat(b)[None]
            out = model(input_ids=ids.reshape(1, -1), position_ids=pos, use_cache=False)
            return summed_cross_entropy(out.logits[:, :-1, :].float(), ids.reshape(1, -1)[:, 1:])
        if kind == "llama":
            out = model(input_ids=ids, attention_mask=mask, use_cache=False)
            return summed_cross_entropy(out.logits[:, :-1, :].float(), ids[:, 1:])
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    labels = ids[:, 0] % 2 if kind == "bert" else ids % 2
    return summed_cross_entropy(out.logits.float(), labels)


def saved_activation_bytes(loss: torch.Tensor, model: Any) -> int:
    """Bytes of every tensor autograd saved for backward, each storage once, parameters excluded;
    the loss's own (log-softmax output, targets) are left out: they belong to logits_and_loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        stack += [f for f, _ in node.next_functions]
        if node.name() in ("NllLossBackward0", "LogSoftmaxBackward0"):
            continue
        # Built-in ops expose their saved tensors as `_saved_*`; a custom autograd Function (the
        # fused LoRA linear) as `saved_tensors`.
        names = [a for a in dir(node) if a.startswith("_saved_")]
        if node.name().endswith("Backward") and hasattr(node, "saved_tensors"):
            names.append("saved_tensors")
        for attr in names:
            value = getattr(node, attr)
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor):
                    key = t.untyped_storage().data_ptr()
                    if key not in params:
                        storages[key] = t.untyped_storage().nbytes()
    return sum(storages.values())


def planned(
    kind: str,
    strategy: str,
    options: dict | None = None,
    b: int = 2,
    length: int = 8,
    device: Device = "cpu",
    packing: bool = True,
    precision: str = "fp32",
) -> Any:
    """The plan of one strategy for the tiny model of `kind` (`packing`: the causal LM's)."""
    task = load_registry().task(task_name(kind))
    t_opts = type(task).Options(packing=packing) if kind == "llama" else None
    return plan(
        config(kind), task_name(kind), [strategy], {strategy: options or {}}, b, length, device,
        task_options=t_opts, precision=precision,
    )[0]  # fmt: skip


def param_bytes(model: Any) -> int:
    """Bytes of the model's parameters, tied ones once."""
    seen = {id(p): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())
