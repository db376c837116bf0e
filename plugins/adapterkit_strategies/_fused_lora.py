"""One fused forward and backward for each of peft's LoRA linear layers on a plain `nn.Linear`.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate autograd ops. Under
bf16 autocast with float32 LoRA matrices that costs, per adapted layer and step: a float32 copy of
the input (peft casts it to lora_A's dtype) and a bf16 copy of it again (autocast, kept for
backward), a multiply and an add over the output, and in backward the matching casts and a sum of
the two input gradients. Measured on SmolLM2-135M LoRA (2 CPU threads, bf16): about a quarter of
the step's time went to those copies, multiplies and adds.

`LoraLinear` does the same arithmetic in one autograd Function, in the compute dtype:

    xa = x A^T                 (tokens x r)
    y  = x W^T + b + s xa B^T  (one addmm into the base output)

and in backward, with g = dL/dy and ga = s g B (tokens x r, computed once):

    dx = g W + ga A,   dA = ga^T x,   dB = s g^T xa   (dA and dB returned in float32)

It keeps `x` itself (one storage for every layer that reads it: q, k and v share it), `xa`, and
compute-dtype copies of A and B (r x features: small). Results equal peft's within rounding (tested
to 1e-5 in float32); the adapter's parameters, names and saved files are peft's, unchanged.

The fused path runs only in training (the module in train mode, gradients on) and only where it
computes what peft would: one active adapter, plain LoRA (no DoRA or other variant), no dropout,
not merged, adapters enabled, a plain `nn.Linear` base, no extra forward arguments. Anything else
calls peft's own forward, so evaluation and inference are peft's bit for bit (a model loaded with
plain `peft` gives the same logits as adapterkit's).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

ADAPTER = "default"


def install(model: nn.Module) -> int:
    """Give every eligible peft LoRA `Linear` in `model` the fused forward; how many got it."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear
    from torch import nn

    count = 0
    for module in model.modules():
        if isinstance(module, PeftLoraLinear) and type(module.base_layer) is nn.Linear:
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def _eligible(layer: Any, kwargs: dict[str, Any]) -> bool:
    import torch
    from torch import nn

    if not (layer.training and torch.is_grad_enabled()):
        return False
    if kwargs or layer.disable_adapters or layer.merged:
        return False
    if list(layer.active_adapters) != [ADAPTER] or ADAPTER not in layer.lora_A:
        return False
    if ADAPTER in getattr(layer, "lora_variant", {}):  # DoRA and other variants
        return False
    dropout = layer.lora_dropout[ADAPTER]
    return isinstance(dropout, nn.Identity) or dropout.p == 0


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The layer's forward: fused where eligible, else peft's."""
    import torch

    if args or not _eligible(self, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    base = self.base_layer
    with torch.autocast(device, enabled=False):
        return LoraLinearFunction.apply(
            x.to(dtype),
            base.weight,
            base.bias,
            self.lora_A[ADAPTER].weight,
            self.lora_B[ADAPTER].weight,
            float(self.scaling[ADAPTER]),
        )


def _function() -> type:
    import torch

    class LoraLinear(torch.autograd.Function):
        """y = x W^T + b + s (x A^T) B^T in x's dtype; see the module docstring."""

        @staticmethod
        def forward(  # pyright: ignore[reportIncompatibleMethodOverride]
            ctx: Any,
            x: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor | None,
            lora_a: torch.Tensor,
            lora_b: torch.Tensor,
            scaling: float,
        ) -> torch.Tensor:
            dtype = x.dtype
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            flat = x.reshape(-1, x.shape[-1])
            xa = flat @ a.t()
            y = flat @ w.t() if bias is None else torch.addmm(bias.to(dtype), flat, w.t())
            y.addmm_(xa, b.t(), alpha=scaling)
            ctx.save_for_backward(x, w, a, b, xa)
            ctx.scaling = scaling
            ctx.dtypes = (weight.dtype, lora_a.dtype, lora_b.dtype)
            ctx.has_bias = bias is not None
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # pyright: ignore[reportIncompatibleMethodOverride]
            x, w, a, b, xa = ctx.saved_tensors
            s: float = ctx.scaling
            w_dtype, a_dtype, b_dtype = ctx.dtypes
            need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
            g = grad.reshape(-1, grad.shape[-1]).to(x.dtype)
            flat = x.reshape(-1, x.shape[-1])
            ga = g @ (b * s)
            dx = dw = dbias = da = db = None
            if need_x:
                dx = (g @ w).addmm_(ga, a).view_as(x)
            if need_w:
                dw = (g.t() @ flat).to(w_dtype)
            if need_bias and ctx.has_bias:
                dbias = g.sum(0).to(w_dtype)
            if need_a:
                da = (ga.t() @ flat).to(a_dtype)
            if need_b:
                db = (g.t() @ xa).mul_(s).to(b_dtype)
            return dx, dw, dbias, da, db, None

    return LoraLinear


class _Lazy:
    """The Function class, built on first use so that importing this module imports no torch."""

    _cls: type | None = None

    def apply(self, *args: Any) -> torch.Tensor:
        if _Lazy._cls is None:
            _Lazy._cls = _function()
        return _Lazy._cls.apply(*args)  # pyright: ignore[reportAttributeAccessIssue]


LoraLinearFunction = _Lazy()
