"""Building a task's transformers model: on the meta device for planning, or from its weights.

Each built-in task is one `AutoModelFor<kind>` class of transformers (`CausalLM`,
`SequenceClassification`, `TokenClassification`). The meta build is what the planner measures and
what the head is found on, so both see the very model class training loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterkit.errors import ModelError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    from adapterkit.storage.sources import ModelSource


def auto_class(kind: str) -> Any:
    """`transformers.AutoModelFor<kind>`."""
    import transformers

    return getattr(transformers, f"AutoModelFor{kind}")


def config_of(source: ModelSource) -> PretrainedConfig:
    """The model's config from its directory (no weights); an unreadable one is a ModelError."""
    from adapterkit.storage import sources

    return sources.load_config(source)


def meta_model(kind: str, config: PretrainedConfig, num_labels: int | None = None) -> nn.Module:
    """`AutoModelFor<kind>` from a deep copy of `config` on the meta device, in float32.

    No weights are read and no memory is taken. `num_labels`, when given, sizes a new head. A model
    type with no such class in transformers is a ModelError.
    """
    import copy

    import torch

    cfg = copy.deepcopy(config)
    if num_labels is not None:
        cfg.num_labels = num_labels
    try:
        with torch.device("meta"):
            return auto_class(kind).from_config(cfg, dtype=torch.float32)
    except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
        where = f"{config.name_or_path}: " if getattr(config, "name_or_path", "") else ""
        raise ModelError(
            f"{where}a {config.model_type} model has no {kind} variant in transformers"
        ) from exc


def tokenizer_with_pad(source: ModelSource) -> Any:
    """The model's tokenizer; one with no pad token pads with its end (or unknown) token.

    Decoder models (Llama, GPT-2) often have no pad token. Padding is marked by the attention mask,
    so which token fills it does not matter, only that there is one.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_pretrained(
    kind: str, source: ModelSource, what: str, load_kwargs: dict[str, Any], **model_kwargs: Any
) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer): `AutoModelFor<kind>.from_pretrained`, float32 unless `load_kwargs` set
    a dtype, and `tokenizer_with_pad`. Unreadable files are a ModelError naming the directory and
    `what` was being loaded ("a causal LM")."""
    import torch

    kwargs = {"dtype": torch.float32, **load_kwargs, **model_kwargs}
    try:
        tokenizer = tokenizer_with_pad(source)
        model = auto_class(kind).from_pretrained(source.path, **kwargs)
    except OSError as exc:
        raise ModelError(f"{source.path}: cannot load {what} from it ({exc})") from exc
    return model, tokenizer
