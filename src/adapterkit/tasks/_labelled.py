"""Helpers shared by the tasks that add a new, freshly initialised head (classification, tagging).

The head is found from the model class, not from a list of names: build the task model on the meta
device (no weights read, no memory), and take every top-level child that is not the base model,
plus the base model's pooler when the task model uses one (BERT's sequence classifier does, its
token classifier does not). That gives `classifier` for BERT, `score` for Llama, and so on, and it
is the same list QLoRA keeps out of quantization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterkit.errors import ModelError
from adapterkit.strategy import ModelParts

if TYPE_CHECKING:
    from torch import nn

    from adapterkit.storage.sources import ModelSource


def _auto_class(kind: str) -> Any:
    import transformers

    return getattr(transformers, f"AutoModelFor{kind}")


def head_parts(kind: str, source: ModelSource, num_labels: int) -> ModelParts:
    """The new head's module names for `AutoModelFor<kind>` on this model (meta device)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path, num_labels=max(1, num_labels))
    try:
        with torch.device("meta"):
            model = _auto_class(kind).from_config(config)
    except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
        raise ModelError(
            f"{source.name}: a {config.model_type} model has no {kind} variant in transformers"
        ) from exc
    base = getattr(model, model.base_model_prefix, None)
    head = [
        name
        for name, child in model.named_children()
        if child is not base and any(True for _ in child.parameters())
    ]
    pooler = getattr(base, "pooler", None)
    if pooler is not None and any(True for _ in pooler.parameters()):
        head.append(f"{model.base_model_prefix}.pooler")
    if not head:
        raise ModelError(f"{source.name}: found no head modules in {type(model).__name__}")
    return ModelParts(head=tuple(head), new_head=True)


def load_labelled_model(
    kind: str, source: ModelSource, labels: list[str], load_kwargs: dict[str, Any]
) -> tuple[nn.Module, Any]:
    """`AutoModelFor<kind>` with a head of len(labels) outputs and the label names in its config.

    Decoder models (Llama, GPT-2) often have no pad token; the end token is used for padding, and
    the config learns it so sequence classification can find each row's last real token.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = _auto_class(kind).from_pretrained(
        source.path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        **load_kwargs,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
