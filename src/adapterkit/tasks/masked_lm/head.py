"""The MLM head: which modules it is, whether the checkpoint has it, and its logits where masked.

A BERT-family masked LM is an encoder plus a head: a transform (dense, activation, LayerNorm) and
a decoder to the vocabulary whose weight is tied to the input embeddings, with an output bias
(BERT: `cls.predictions.transform`, `cls.predictions.decoder`, `cls.predictions.bias`). The head
the strategies see (`ModelParts.head`) is the head's modules *without a tied decoder*: `head` and
a new head's `modules_to_save` (LoRA, QLoRA) then train the transform, and the tied decoder stays
as the model has it (it is the input embedding matrix, which `full` trains). An untied decoder is a
head module like the others. Sentence-embedding checkpoints (the embedded all-MiniLM-L6-v2) are a
bare encoder: their MLM head is absent and newly initialised (`new_head`), so it always trains.

The logits are computed at the masked positions only: a forward hook on the encoder hands the head
just the hidden states of those positions, as one [1, N, hidden] sequence, so no [batch, length,
vocab] tensor exists. Torch is imported lazily.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from adapterkit.errors import ModelError
from adapterkit.strategy import ModelParts
from adapterkit.tasks._loss import IGNORE

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

    from adapterkit.storage.sources import ModelSource


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _tied(model: PreTrainedModel, decoder: nn.Module | None) -> bool:
    emb = model.get_input_embeddings()
    weight = getattr(decoder, "weight", None)
    return weight is not None and weight is getattr(emb, "weight", None)


def decoder_name(model: nn.Module) -> str | None:
    """The dotted name of the output embeddings (the decoder) of a masked LM, if it has one."""
    out = cast("PreTrainedModel", model).get_output_embeddings()
    return next((name for name, m in model.named_modules() if m is out and name), None)


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """The MLM head's modules on a built (meta or real) masked LM, a tied decoder left out.

    Every top-level child besides the encoder is the head; a module holding the tied decoder is
    replaced by its children, recursively, down to modules that do not hold it.
    """
    base = cast("PreTrainedModel", model)
    encoder = getattr(base, str(getattr(base, "base_model_prefix", "")), None)
    out = base.get_output_embeddings()
    tied = out if _tied(base, out) else None

    def parts(prefix: str, module: nn.Module) -> list[str]:
        if module is tied or not _has_parameters(module):
            return []
        if tied is None or not any(m is tied for m in module.modules()):
            return [prefix]
        return [n for name, c in module.named_children() for n in parts(f"{prefix}.{name}", c)]

    found = [
        n
        for name, child in model.named_children()
        if child is not encoder
        for n in parts(name, child)
    ]
    if not found:
        raise ModelError(f"found no MLM head modules in {type(model).__name__}")
    return tuple(found)


def _checkpoint_keys(path: Path) -> set[str] | None:
    """Tensor names in the safetensors files of a model directory (headers only); None if none."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), "pt") as f:
            keys.update(f.keys())
    return keys


def parts_of(model: nn.Module, source: ModelSource) -> ModelParts:
    """The head modules, new unless the checkpoint holds weights for each of them (read from the
    safetensors headers; a directory without weights, a bare config, counts as new)."""
    head = head_modules(model)
    keys = _checkpoint_keys(source.path)
    present = keys is not None and all(any(k.startswith(h + ".") for k in keys) for h in head)
    return ModelParts(head=head, new_head=not present)


def keep_decoder_unquantized(load_kwargs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`load_kwargs` with the decoder added to a 4-bit quantization's skipped modules.

    transformers skips the output embeddings by itself only when no skip list is given; QLoRA
    gives one (the head), and a tied decoder turned into a 4-bit layer would break the tie.
    """
    config = load_kwargs.get("quantization_config")
    skip = getattr(config, "llm_int8_skip_modules", None)
    name = decoder_name(model)
    if config is None or skip is None or name is None or name in skip:
        return load_kwargs
    config = copy.copy(config)
    config.llm_int8_skip_modules = [*skip, name]
    return {**load_kwargs, "quantization_config": config}


def _encoder(model: nn.Module) -> nn.Module | None:
    """The encoder of a (peft-wrapped or not) masked LM: its `base_model_prefix` child."""
    wrapper: Any = model
    base: Any = wrapper.get_base_model() if hasattr(wrapper, "get_base_model") else wrapper
    encoder = getattr(base, str(getattr(base, "base_model_prefix", "")), None)
    return encoder if encoder is not None and encoder is not base else None


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def masked_logits(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits [N, vocab], labels [N]) at the N positions whose label is not IGNORE.

    The head runs on those positions only; a model whose encoder is not found takes the full
    logits, and the same positions are picked from them.
    """
    labels = batch["labels"]
    encoder = _encoder(model)
    if encoder is None:
        logits = model(**_model_inputs(batch)).logits
        keep = labels.to(logits.device) != IGNORE
        return logits[keep].float(), labels.to(logits.device)[keep]

    def gather(module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0]
        rows = hidden[(labels != IGNORE).to(hidden.device)][None]
        if isinstance(output, tuple):
            return (rows, *output[1:])
        output.last_hidden_state = rows
        return output

    handle = encoder.register_forward_hook(gather)
    try:
        logits = model(**_model_inputs(batch)).logits
    finally:
        handle.remove()
    targets = labels.to(logits.device)
    return logits[0].float(), targets[targets != IGNORE]


@contextmanager
def quiet_missing_head_notice() -> Iterator[None]:
    """Drop transformers' "This checkpoint seem corrupted" warning for the block: a bare encoder
    checkpoint has no MLM head, so its output bias is absent and tied to nothing in the file. The
    tie is made all the same; `MaskedLM.load_model` says what happened instead."""
    logger = logging.getLogger("transformers.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return "seem corrupted" not in str(record.msg)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
