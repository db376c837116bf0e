"""What the activation rules read off a (meta) model after the strategy was applied: which
parameters train and their dtypes, and the step's `Numerics` for a run's precision.

The meta model is given the dtypes training gives the real one (`as_trained`): the frozen base
in the base dtype, the trained parameters as float32 master weights under bf16/fp16
(`train.precision.upcast_trainable`, the trainer's own function).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from adapterkit.planning.activations import FAMILIES
from adapterkit.planning.arch import FP32, HALF, Block, Device, Linear, Numerics, Trainable
from adapterkit.planning.weights import base_model

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn


@dataclasses.dataclass(frozen=True)
class Precision:
    """The arithmetic a run trains in (fp32, bf16 or fp16: `train.precision` resolved) and the
    dtype its base is stored in (None: the precision's compute dtype, as `model.dtype: auto`)."""

    precision: str = "fp32"
    base_dtype: str | None = None

    @property
    def base(self) -> str:
        from adapterkit.build import base_dtype

        return self.base_dtype or base_dtype("auto", self.precision)

    @property
    def half(self) -> bool:
        return self.precision in ("bf16", "fp16")


def as_trained(model: nn.Module, precision: Precision, quantized: bool) -> None:
    """Give a meta model the dtypes a run gives the real one: the base loads in `precision.base`
    (a 4-bit base keeps the rest in float32: peft's `prepare_model_for_kbit_training` casts it),
    and under bf16/fp16 the trained parameters are upcast to float32, as the trainer does."""
    import torch

    from adapterkit.training.precision import upcast_trainable

    if not quantized and precision.base != "float32":
        model.to(getattr(torch, precision.base))
    if precision.half:
        upcast_trainable(model)


def numerics(precision: Precision, device: Device, segments: int = 1) -> Numerics:
    """The step's Numerics: autocast to 2 bytes with float32 trained weights under bf16/fp16;
    without autocast, every matmul in the base's dtype (trained weights too)."""
    if precision.half:
        return Numerics(device, HALF, True, FP32, segments=segments)
    base = FP32 if precision.base == "float32" else HALF
    return Numerics(device, base, False, base, segments=segments)


def _itemsize(params: Iterable[object], default: int = FP32) -> int:
    for p in params:
        return int(getattr(p, "itemsize", default))
    return default


def _linear_state(module: nn.Module, quantized: bool) -> Linear:
    """How one linear layer trains. Besides its own weight and a LoRA branch, any other trainable
    parameter inside the wrapper (IA3's scaling vectors, a third party's) is counted as a trained
    weight: its gradient needs the layer's input (or output) kept, which is what that costs."""
    base = getattr(module, "base_layer", module)
    trains = bool(getattr(base, "weight", None) is not None and base.weight.requires_grad)
    trains = trains or any(
        p.requires_grad
        for n, p in module.named_parameters()
        if "lora_" not in n and not n.endswith("bias")  # a bias gradient needs no input
    )
    weight: Any = getattr(base, "weight", None)
    out = int(getattr(base, "out_features", 0) or (weight.shape[0] if weight is not None else 0))
    lora_a = getattr(module, "lora_A", None)
    if lora_a is not None and "default" in lora_a:  # a peft LoraLayer, read by duck typing
        ranks: dict[str, int] = getattr(module, "r")  # noqa: B009 (torch types it Tensor | Module)
        drop = getattr(module, "lora_dropout")["default"]  # noqa: B009
        r, p = int(ranks["default"]), float(getattr(drop, "p", 0.0))
        return Linear(trains, r, p, quantized, out)
    return Linear(trains, quantized=quantized, d_out=out)


def _block(blk: nn.Module, family: str, prefix: str, quantized: set[str]) -> Block:
    linears: dict[str, Linear] = {}
    for local, mod in blk.named_modules():
        role = FAMILIES[family].role(local)
        if role is not None and hasattr(getattr(mod, "base_layer", mod), "weight"):
            name = f"{prefix}.{local}".replace(".base_layer", "") + ".weight"
            linears[role] = _linear_state(mod, name in quantized)
    norm_params = [
        p
        for m in blk.modules()
        if "norm" in type(m).__name__.lower()
        for p in m.parameters(recurse=False)
    ]
    trains = any(p.requires_grad for p in norm_params)
    return Block(linears=linears, norms_train=trains, norm_bytes=_itemsize(norm_params))


def _head(model: nn.Module, head: tuple[str, ...]) -> tuple[bool, int, int]:
    """(trains, bytes of its weight, output features) of the head, read from its trained copy
    where peft keeps one (`modules_to_save`) and from the task's head modules otherwise."""
    from torch import nn

    inner = base_model(model)
    own = [p for name in head for p in inner.get_submodule(name).parameters()]
    copy = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    trains = any(p.requires_grad for p in own) or bool(copy)
    weights = [p for p in (copy or own) if p.ndim == 2]
    last = [
        m
        for name in head
        if not name.endswith("pooler")  # the pooler (hidden x hidden) feeds the classifier
        for m in inner.get_submodule(name).modules()
    ]
    outs = [m.out_features for m in last if isinstance(m, nn.Linear)]
    return trains, _itemsize(weights), int(outs[-1]) if outs else 0


def trainable_layout(
    model: nn.Module, family: str, head: tuple[str, ...], quantized: Iterable[str] = ()
) -> Trainable:
    """Read the trainable set and its dtypes off a (meta) model after the strategy was applied;
    `quantized`: the names of the linear weights a 4-bit base quantizes."""
    from adapterkit.strategy import final_norm, find_blocks

    inner = base_model(model)
    blocks_name, blocks = find_blocks(inner)
    q = set(quantized)
    out = tuple(_block(blk, family, f"{blocks_name}.{i}", q) for i, blk in enumerate(blocks))
    emb = list(inner.get_input_embeddings().parameters())
    norm = final_norm(inner, blocks_name)
    norm_params = list(norm.parameters()) if norm is not None else []
    head_trains, head_bytes, head_out = _head(model, head)
    return Trainable(
        embeddings=any(p.requires_grad for p in emb),
        blocks=out,
        final_norm=any(p.requires_grad for p in norm_params),
        head=head_trains,
        pooled_head=any(name.endswith("pooler") for name in head),
        embedding_bytes=_itemsize(emb),
        final_norm_bytes=_itemsize(norm_params),
        head_bytes=head_bytes,
        head_out=head_out,
    )
