"""The encoder-decoder model (`AutoModelForSeq2SeqLM`: T5, mT5, BART, Marian) and its LM head.

Tied or untied head. transformers 5 builds every T5 and mT5 with the LM head tied to the shared
embedding (the config forces `tie_word_embeddings` on), and unties it while loading only when the
checkpoint stores a different `lm_head.weight`, as T5 v1.1, Flan-T5 and mT5 checkpoints do. A
model built from the config alone (the planner's, on the meta device) would then have one tensor
fewer than the loaded one; `meta_model` unties the head the same way, reading only config.json
and the safetensors headers (tensor names, no weights). The head module is `lm_head` either way:
for a tied model it *is* the shared embedding, which `head` then trains (encoder and decoder
inputs with it), as for a causal LM with tied embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from adapterkit.errors import ModelError
from adapterkit.strategy import ModelParts
from adapterkit.tasks import _models

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    from adapterkit.storage.sources import ModelSource

KIND = "Seq2SeqLM"


def _declares_untied(directory: Path) -> bool:
    """Whether config.json says `tie_word_embeddings: false` (the config object may not)."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return raw.get("tie_word_embeddings", True) is False


def _stored_tensor_names(directory: Path) -> set[str]:
    """Tensor names in the directory's safetensors files, read from their headers only."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            names.update(f.keys())
    return names


def head_is_untied(directory: Path | None, head_key: str = "lm_head.weight") -> bool:
    """Whether loading this checkpoint gives an LM head of its own: config.json declares the
    embeddings untied and the checkpoint stores the head's weight."""
    if directory is None or not directory.is_dir() or not _declares_untied(directory):
        return False
    return head_key in _stored_tensor_names(directory)


def _untie_head(model: PreTrainedModel) -> None:
    """Give the (meta) model's output embeddings a weight of their own, as loading would."""
    import torch
    from torch import nn

    head = model.get_output_embeddings()
    shared = cast("torch.Tensor", model.get_input_embeddings().weight)
    if head is None or getattr(head, "weight", None) is not shared:
        return
    head.weight = nn.Parameter(torch.empty_like(shared), requires_grad=True)


def meta_model(config: PretrainedConfig, directory: Path | None = None) -> nn.Module:
    """`AutoModelForSeq2SeqLM` on the meta device, in float32, its head as loading leaves it.

    `directory` (default: the directory the config was read from) tells a checkpoint with an
    untied head from a tied one.
    """
    model = cast("PreTrainedModel", _models.meta_model(KIND, config))
    where = directory
    if where is None and getattr(config, "name_or_path", ""):
        where = Path(str(config.name_or_path))
    if head_is_untied(where):
        _untie_head(model)
    return model


def parts_of(model: nn.Module) -> ModelParts:
    """The LM head's module name on a built model (`lm_head` for T5 and BART)."""
    head = cast("PreTrainedModel", model).get_output_embeddings()
    for name, module in model.named_modules():
        if module is head and name:
            return ModelParts(head=(name,), new_head=False)
    raise ModelError(f"{type(model).__name__} has no output embeddings to call its LM head")


def model_parts(source: ModelSource) -> ModelParts:
    """The LM head, found on the model built from the source's config on the meta device."""
    return parts_of(meta_model(_models.config_of(source), source.path))


def load(source: ModelSource, load_kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from the directory; a model that is not encoder-decoder is refused."""
    config = _models.config_of(source)
    if not getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{source.name}: a {config.model_type} model is not an encoder-decoder; the seq2seq "
            "task needs one (T5, mT5, BART, Marian); use causal_lm for a decoder-only model"
        )
    model, tokenizer = _models.load_pretrained(KIND, source, "a seq2seq model", load_kwargs)
    return model, tokenizer


def decoder_start(model: nn.Module) -> tuple[int, int]:
    """(decoder_start_token_id, pad_token_id) of a built model: its config's, else its generation
    config's; a T5 config that names no start token starts with the pad token, as T5 does."""
    config = getattr(model, "config", None)
    generation = getattr(model, "generation_config", None)
    pad = getattr(config, "pad_token_id", None)
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(generation, "decoder_start_token_id", None)
    if start is None:
        start = pad
    if start is None or pad is None:
        raise ModelError(
            f"{type(model).__name__}: its config has no decoder_start_token_id or pad_token_id; "
            "the decoder cannot be fed"
        )
    return int(start), int(pad)
