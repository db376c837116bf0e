"""The Strategy protocol, and small helpers strategies share.

A strategy is any class with these members; no base class is required. Strategies are stateless:
every method receives the parsed `options` (an instance of the class's `Options` dataclass).

The data flow a strategy takes part in (see api.py):

    kwargs = strategy.load_kwargs(options, parts)      # e.g. QLoRA's 4-bit quantization config
    model  = task.load_model(source, task_options, kwargs)
    model  = strategy.apply(model, options, parts)     # freeze / inject adapters; may wrap the model
    ... trainer.fit(model, ...) ...
    tensors = strategy.adapter_state_dict(model, options)
    # and to reload: strategy.load_adapter_state_dict(strategy.apply(base, ...), tensors, options)

Torch is imported lazily so that listing strategies stays instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What a strategy needs to know about the model a task builds, known before loading weights.

    head:     dotted names of the modules that form the task's output head (a causal LM's
              `lm_head`; a classifier such as `classifier` or `score`, plus a pooler if any).
    new_head: True when the task adds the head freshly initialised (classification, tagging): it must
              then always train and be saved, and never be quantized. False for a pretrained LM head.
    """

    head: tuple[str, ...]
    new_head: bool


@runtime_checkable
class Strategy(Protocol):
    """A fine-tuning strategy. Register the class with the `register_strategies` hook."""

    name: ClassVar[str]
    Options: ClassVar[type]

    def load_kwargs(self, options: Any, parts: ModelParts) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` (e.g. a quantization config); often {}."""
        ...

    def apply(self, model: nn.Module, options: Any, parts: ModelParts) -> nn.Module:
        """Prepare `model` for training and return the module to train (may be a wrapper).

        Afterwards exactly the parameters that should train have `requires_grad=True`.
        """
        ...

    def adapter_state_dict(self, model: nn.Module, options: Any) -> dict[str, torch.Tensor]:
        """The tensors that make up the adapter, keyed by the name they are saved under.

        They must be exactly the trainable parameters (the trainer checks storage and shape);
        a tensor shared by two names (tied embeddings) appears once.
        """
        ...

    def load_adapter_state_dict(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], options: Any
    ) -> None:
        """Put saved `tensors` into `model` (as returned by `apply`); raise on a missing or stray key."""
        ...


# ---- optional members, with their defaults ------------------------------------------------------
# A strategy may also define:
#   description: ClassVar[str]         (default: the class docstring)  shown by `adapterkit strategies`
#   quantized_base: ClassVar[bool]      (default False)
#       True when `load_kwargs` loads the base with its linear weights in 4-bit NF4 (bitsandbytes);
#       the planner then counts those weights as NF4, and the OOM advice offers the strategy.
#   plan_apply(model, options, parts) -> nn.Module      (default: `apply`)
#       Apply the strategy to a model built on the meta device from its config: no weights, never
#       quantized. It must leave the same parameters trainable as `apply` leaves on a real model
#       (QLoRA: the LoRA wrapping, since its `apply` wants a 4-bit model).
#   extra_files(model, options) -> dict[str, bytes]     (default: none)
#       Files written next to the adapter (LoRA writes peft's `adapter_config.json`).
#   merge(model, options) -> nn.Module                 (default: see `merged_model`)
#       The adapted model (as `apply` and `load_adapter_state_dict` left it) as the task's plain
#       transformers model with the adapter's update merged into its weights: no wrapper, no
#       adapter layers, no 4-bit layers (`adapterkit merge`). It may change `model` in place. The
#       default suits a strategy that trains the model's own parameters (they already hold the
#       trained values) and one whose wrapper merges itself (peft's `merge_and_unload`); a strategy
#       over a 4-bit base defines it to merge into the dequantized weights. For `--base original`
#       the core builds the full-precision base with `plan_apply` (never quantized) instead of
#       `load_kwargs` + `apply`, loads the adapter, and calls this the same way. The core then
#       checks the result's tensors against the task's plain model, name by name.
# The core reaches them only through the functions below, never by a strategy's name.


def quantized_base(strategy: Strategy | type[Strategy]) -> bool:
    """Whether the strategy (an instance or its class) loads its base in 4 bits (`quantized_base`,
    default False)."""
    return bool(getattr(strategy, "quantized_base", False))


def plan_apply(strategy: Strategy, model: nn.Module, options: Any, parts: ModelParts) -> nn.Module:
    """`strategy.plan_apply` on a meta-device model, or `apply` when it has none."""
    apply = getattr(strategy, "plan_apply", None) or strategy.apply
    return apply(model, options, parts)


def extra_files(strategy: Strategy, model: nn.Module, options: Any) -> dict[str, bytes]:
    """The strategy's `extra_files(model, options)`, or none."""
    own = getattr(strategy, "extra_files", None)
    return dict(own(model, options)) if own is not None else {}


def merged_model(strategy: Strategy, model: nn.Module, options: Any) -> nn.Module:
    """`strategy.merge(model, options)`; by default a model that merges itself (has peft's
    `merge_and_unload`) is merged, refusing an update that is not finite, and any other is
    returned as it is: the trained tensors are the model's own parameters."""
    own = getattr(strategy, "merge", None)
    if own is not None:
        return own(model, options)
    merge_self = getattr(model, "merge_and_unload", None)
    if callable(merge_self):
        return cast("nn.Module", merge_self(safe_merge=True))
    return model


# ---- helpers -------------------------------------------------------------------------------------


def freeze(model: nn.Module) -> None:
    """Turn off gradients for every parameter of `model`."""
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """Turn on gradients for every parameter of `module`."""
    for p in module.parameters():
        p.requires_grad_(True)


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Trainable parameters, each storage once (tied weights keep their first name)."""
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            yield name, p


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters as a state dict (names as in `model.named_parameters()`)."""
    return {name: p for name, p in trainable_named_parameters(model)}


def load_named_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into the parameters of the same names; every name must exist, with its shape."""
    import torch

    from adapterkit.errors import AdapterError

    params = dict(model.named_parameters(remove_duplicate=False))
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise AdapterError(f"adapter tensors match no parameter of the model: {missing[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            target = params[name]
            if tuple(target.shape) != tuple(value.shape):
                raise AdapterError(
                    f"adapter tensor {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(value.to(target.dtype))


def submodule(model: nn.Module, dotted: str) -> nn.Module:
    """`model.get_submodule`, kept here so strategies need not import torch helpers."""
    return model.get_submodule(dotted)


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The transformer blocks: the longest `nn.ModuleList` whose items all share one class.

    Works for Llama (`model.layers`), BERT (`encoder.layer`), GPT-2 (`h`) and the like without
    naming any of them. Returns the list's dotted name and its items.
    """
    from torch import nn

    best: tuple[str, list[nn.Module]] = ("", [])
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best[1]):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = (name, list(module))
    if not best[1]:
        raise ValueError(f"{type(model).__name__} has no list of transformer blocks")
    return best


def final_norm(model: nn.Module, blocks_name: str) -> nn.Module | None:
    """The norm applied after the last block, if the model has one.

    It is the last normalisation module (by registration order) that sits outside the blocks and
    outside the embeddings; e.g. Llama's `model.norm`, GPT-2's `ln_f`. BERT has none (post-norm).
    """
    found = None
    for name, module in model.named_modules():
        if name.startswith(blocks_name + ".") or "embed" in name:
            continue
        kind = type(module).__name__.lower()
        if "norm" in kind and list(module.parameters(recurse=False)):
            found = module
    return found


def is_4bit(p: torch.Tensor) -> bool:
    return type(p).__name__ == "Params4bit"


def logical_numel(p: torch.Tensor) -> int:
    """Number of weights a parameter stands for: a 4-bit packed tensor counts at its logical size."""
    state = getattr(p, "quant_state", None)
    if is_4bit(p) and state is not None:
        n = 1
        for d in state.shape:
            n *= int(d)
        return n
    return p.numel()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each storage once, 4-bit weights at logical size."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def load_trainable_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy an adapter saved from `trainable_state_dict` back into `model`, checking it fits exactly.

    The adapter must name every trainable parameter once (tied ones under their first name) and
    nothing else: a stray name means another strategy or options made it, a missing one would leave
    part of the trained model at its base weights without anyone noticing.
    """
    from adapterkit.errors import AdapterError

    expected = set(trainable_state_dict(model))
    missing, stray = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or stray:
        raise AdapterError(
            "adapter tensors do not match the trainable parameters of the model "
            f"(missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"unexpected: {stray[:5]}{' ...' if len(stray) > 5 else ''}); "
            "was it trained with other strategy options or another model?"
        )
    load_named_tensors(model, tensors)
