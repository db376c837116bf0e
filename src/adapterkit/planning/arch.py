"""The sizes and the trainable set activation memory is computed from; element byte sizes.

The formulas are in activations.py and families/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FP32 = 4  # bytes of a float32 element: activations, gradients and AdamW moments are float32
HALF = 2  # bytes of a bfloat16 or float16 element
INT64 = 8  # bytes of an int64 element: token ids and targets
BOOL = 1  # bytes of a bool element: CUDA dropout masks and SDPA padding masks
SCALAR_F64 = 8  # a 0-dim float64 tensor autograd saves for a Python-float multiply (LoRA scaling)
CUDA_LSE_ALIGN = 32  # CUDA memory-efficient attention pads its saved log-sum-exp to 32 positions
CUDA_BIAS_ALIGN = 16  # ... and copies an attention mask with its last dimension padded to 16
PHILOX_STATE = 2 * INT64  # ... and keeps its RNG seed and offset (two 0-dim int64), dropout or not

Device = Literal["cpu", "cuda"]

LLAMA_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2", "granite"})
BERT_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert"})


@dataclass(frozen=True)
class Arch:
    """The sizes that decide activation memory, read from a transformers config."""

    family: Literal["llama", "bert", "t5"]
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    max_positions: int = 0


def arch_from_config(config: Any) -> Arch:
    """Read the sizes from a config; ValueError for a family whose blocks are not written out."""
    model_type = getattr(config, "model_type", "")
    from adapterkit.planning.families import t5  # encoder-decoder sizes have their own names

    if model_type in t5.T5_TYPES:
        return t5.arch(config)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"no activation model for the encoder-decoder model_type {model_type!r}")
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    common = {
        "hidden": hidden,
        "intermediate": int(config.intermediate_size),
        "heads": heads,
        "head_dim": head_dim,
        "vocab": int(config.vocab_size),
        "layers": int(config.num_hidden_layers),
        "max_positions": int(getattr(config, "max_position_embeddings", 0) or 0),
    }
    if model_type in LLAMA_TYPES:
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        drop = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        return Arch("llama", kv_heads=kv, attention_dropout=drop, **common)
    if model_type in BERT_TYPES:
        return Arch(
            "bert",
            kv_heads=heads,
            hidden_dropout=float(config.hidden_dropout_prob),
            attention_dropout=float(config.attention_probs_dropout_prob),
            **common,
        )
    raise ValueError(
        f"no activation model for model_type {model_type!r}; written out for "
        f"{', '.join(sorted(LLAMA_TYPES | BERT_TYPES))}"
    )


@dataclass(frozen=True)
class Linear:
    """One linear layer of a block as the strategy left it."""

    trains: bool = False  # its base weight trains
    lora_r: int = 0  # LoRA rank on it (0: not adapted)
    lora_dropout: float = 0.0
    quantized: bool = False  # a 4-bit base (bitsandbytes): its output has its input's dtype
    d_out: int = 0  # its output features


@dataclass(frozen=True)
class Block:
    """What trains in one block: its linears by role, and whether its norms' weights train."""

    linears: dict[str, Linear] = field(default_factory=dict)
    norms_train: bool = False
    norm_bytes: int = FP32  # bytes of an element of its norms' weights

    def get(self, role: str) -> Linear:
        return self.linears.get(role, Linear())

    def any_trains(self) -> bool:
        return self.norms_train or any(x.trains or x.lora_r for x in self.linears.values())


@dataclass(frozen=True)
class Trainable:
    """The strategy's trainable set, as activation memory sees it."""

    embeddings: bool  # the input embeddings train (full; `head` with tied embeddings)
    blocks: tuple[Block, ...]
    final_norm: bool  # Llama's norm after the last block trains
    head: bool  # the task head trains
    pooled_head: bool = True  # BERT: the head reads the pooled [CLS] row (else every token)
    embedding_bytes: int = FP32  # bytes of an element of the input embeddings (their output's)
    final_norm_bytes: int = FP32  # ... of the final norm's weight
    head_bytes: int = FP32  # ... of the head's weight (its trained copy, when it trains)
    head_out: int = 0  # the head's output features (vocabulary, labels)


@dataclass(frozen=True)
class Numerics:
    """How a step computes, beyond the shapes: its device, its precision and its packing.

    fp32 (the default): no autocast, every element 4 bytes. bf16/fp16: the forward runs under
    autocast, so matmul-like ops (linear, SDPA) cast their inputs to the 2-byte compute dtype, each
    cast a new tensor (kept when that op saves its input); trained weights are float32 master
    weights, so their casts too are new tensors, kept by every matmul whose input requires grad.
    Ops outside autocast's lists (norms, adds, activations) compute in their inputs' promoted
    dtype. A half-precision base without autocast (`model.dtype` bfloat16 under fp32) computes
    in 2 bytes throughout, trained weights included.
    """

    device: Device = "cpu"
    compute: int = FP32  # bytes of a matmul operand (autocast's dtype; else the base's)
    autocast: bool = False
    trained: int = FP32  # bytes of an element of a trained weight
    residual: int = FP32  # bytes of the hidden states between blocks (the embeddings' dtype)
    segments: int = 1  # rows packed into each sequence (1: not packed)


FP32_RUN = Numerics()


@dataclass(frozen=True)
class Input:
    """The tensor a group of linear layers reads (q/k/v read one, gate/up another)."""

    tokens: int
    width: int  # its features (the linears' input features)
    nbytes: int = FP32  # bytes of an element
    grad: bool = False  # it requires grad
    kept: bool = False  # another op already keeps its storage


@dataclass
class Saved:
    """Bytes autograd keeps, by named item (the reason is the name)."""

    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, nbytes: int) -> None:
        self.items[name] = self.items.get(name, 0) + int(nbytes)

    @property
    def total(self) -> int:
        return sum(self.items.values())
