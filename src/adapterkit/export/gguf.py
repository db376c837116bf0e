"""Writing a Llama-family causal LM (a merged adapter) as one GGUF file that llama.cpp and Ollama run.

The layout follows llama.cpp's own converter (convert_hf_to_gguf.py, class LlamaModel): architecture
`llama`, the hyperparameters under its key names, tensor names through gguf's `TensorNameMap`, the
Q/K rows permuted the way llama.cpp's rotary embedding expects them, no `output.weight` when the
embeddings are tied, 1-D tensors and norms kept in float32, the GPT-2 style BPE vocabulary with its
merges, special token ids, add-BOS/EOS flags and chat template (gguf's `SpecialVocab`). Writing goes
through the `gguf` package's `GGUFWriter`; nothing here is a hand-rolled file format.

`write_gguf` writes exactly the path it is given; `export/gguf_check.py` reads the file back with an
independent reader, and the export command writes under a temporary name and renames (see
`tmp_sibling`). gguf, numpy and torch are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterkit.errors import GGUFError

TYPES = ("f16", "bf16", "q8_0")
"""The tensor types `--type` offers: llama.cpp's converter's f16/bf16/q8_0 output types."""

ARCHITECTURE = "LlamaForCausalLM"

# The HF tokenizer's pre-tokenizer (tokenizer.json, as JSON) -> llama.cpp's `tokenizer.ggml.pre` name
# that splits text the same way (src/llama-vocab.cpp). Anything else is refused, not guessed.
_GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


@dataclass
class Written:
    """What `write_gguf` put into the file."""

    path: Path
    type: str
    pre_tokenizer: str
    tensor_types: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> ggml type
    fallbacks: list[str] = field(default_factory=list)  # q8_0 asked, f16 written (row size)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in self.tensor_types.values():
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))


def check_exportable(config: Any, what: str = "the model") -> None:
    """Raise GGUFError unless `config` is a Llama-family causal LM this writer renders faithfully."""
    archs = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    if model_type != "llama" or (archs and archs != [ARCHITECTURE]):
        kind = f"{model_type} ({', '.join(archs) or 'no architectures'})"
        raise GGUFError(
            f"{what} is a {kind} model; GGUF export supports Llama-family causal language models "
            f"only ({ARCHITECTURE}, such as the embedded smollm2-135m fine-tuned for generation). "
            "Use `adapterkit merge` for a Hugging Face model directory instead."
        )
    unsupported = {
        "attention_bias": bool(getattr(config, "attention_bias", False)),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        f"hidden_act={getattr(config, 'hidden_act', None)}": getattr(config, "hidden_act", None)
        != "silu",
        f"rope_type={_rope(config)[1]}": _rope(config)[1] != "default",
    }
    bad = [name for name, hit in unsupported.items() if hit]
    if bad:
        raise GGUFError(
            f"{what}: {', '.join(bad)} is not exported to GGUF by adapterkit (only the plain "
            "Llama layout: no biases, SiLU, default rotary embedding)"
        )


def check_model(model: Any, what: str = "the model") -> None:
    """`check_exportable` for a model object: its class too must be the causal LM (a Llama with a
    classification head has a Llama config but nothing llama.cpp can run)."""
    kind = type(model).__name__
    if kind != ARCHITECTURE:
        raise GGUFError(
            f"{what} is a {kind} model; GGUF export supports Llama-family causal language models "
            f"only ({ARCHITECTURE}). Use `adapterkit merge` for a Hugging Face model directory."
        )
    check_exportable(model.config, what)


def check_out_path(out: Path, *companions: Path) -> None:
    """Raise GGUFError unless `out` (and each companion file) can be created: not there yet, not a
    directory, inside an existing directory."""
    for path in (out, *companions):
        if path.is_dir():
            raise GGUFError(f"{path}: is a directory; --out names the .gguf file to write")
        if path.exists():
            raise GGUFError(f"{path}: already exists; remove it or choose another --out")
    if not out.parent.is_dir():
        what = "is not a directory" if out.parent.exists() else "does not exist"
        raise GGUFError(f"{out.parent}: {what}; create it first (--out {out})")


def tmp_sibling(path: Path) -> Path:
    """A hidden temporary name beside `path`, on the same file system, for write-then-rename."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def write_gguf(
    model: Any, tokenizer: Any, path: Path, type: str = "f16", name: str | None = None
) -> Written:
    """Write `model` (a LlamaForCausalLM) and its tokenizer as GGUF at `path`; return what was
    written. Raises GGUFError for a model or tokenizer llama.cpp would not read as the same."""
    import gguf

    if type not in TYPES:
        raise GGUFError(f"--type {type}: not one of {', '.join(TYPES)}")
    check_model(model)
    config = model.config
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    written = Written(path=Path(path), type=type, pre_tokenizer="")
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or "adapterkit export")
        _add_hparams(writer, config, type)
        written.pre_tokenizer = _add_vocab(writer, tokenizer, config)
        for gguf_name, array in _tensors(model):
            _add_tensor(writer, written, gguf_name, array)
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return written


# ---- hyperparameters --------------------------------------------------------------------------


def _rope(config: Any) -> tuple[float, str]:
    """(rope theta, rope type) from a transformers 5 config (`rope_parameters`) or an older one."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    return float(theta), str(kind)


def head_dim(config: Any) -> int:
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def _add_hparams(writer: Any, config: Any, type: str) -> None:
    """The keys LlamaModel.set_gguf_parameters (and TextModel's) writes for a plain Llama."""
    import gguf

    heads = config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // heads:  # llama.cpp assumes n_embd / n_head else
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    file_types = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---- tensors ----------------------------------------------------------------------------------


def permute(weights: Any, n_head: int, n_head_kv: int | None) -> Any:
    """llama.cpp's LlamaModel.permute: HF's rotate-half Q/K rows to GGML's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for every weight, in the model's order, mapped and permuted
    as llama.cpp's converter does; the LM head is left out when it is tied to the embeddings."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFError(f"tensor {hf_name}: has no GGUF name in the llama layout")
        array = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = permute(array, heads, heads)
        elif hf_name.endswith("k_proj.weight"):
            array = permute(array, heads, kv_heads)
        yield gguf_name, array


def _add_tensor(writer: Any, written: Written, name: str, array: Any) -> None:
    """Quantize one tensor to its type (prepare_tensors' rules) and add it to the writer."""
    import gguf

    kinds = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }
    # Most of llama.cpp takes 1-D tensors and norms in float32 only.
    keep_f32 = array.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
    kind = gguf.GGMLQuantizationType.F32 if keep_f32 else kinds[written.type]
    try:
        data = gguf.quants.quantize(array, kind)
    except gguf.QuantError:  # rows that are not whole q8_0 blocks (32 values): f16, as llama.cpp
        kind = gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(array, kind)
        written.fallbacks.append(name)
    writer.add_tensor(name, data, raw_dtype=kind)
    written.tensor_types[name] = kind.name.lower()


# ---- tokenizer --------------------------------------------------------------------------------


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer, from its pre-tokenizer.

    GPT-2's split regex is "gpt-2"; digits split one by one before it (SmolLM's tokenizer.json) is
    "smollm"; Llama 3's split regex before a regex-less byte level is "llama-bpe". Anything else
    raises GGUFError: llama.cpp would split text differently, so the ids would differ.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") not in (None, {}):
        raise GGUFError(
            f"tokenizer: a {model.get('type')} model with normalizer {spec.get('normalizer')}; "
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3)"
        )
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    steps = [{k: v for k, v in s.items() if k != "trim_offsets"} for s in steps or []]
    if steps == [_GPT2_BYTE_LEVEL]:
        return "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    if steps == [digits, _GPT2_BYTE_LEVEL]:
        return "smollm"
    regex = (steps[0].get("pattern") or {}).get("Regex") if steps else None
    if len(steps) == 2 and regex == _LLAMA3_SPLIT and steps[1].get("use_regex") is False:
        return "llama-bpe"
    raise GGUFError(
        f"tokenizer: pre-tokenizer {json.dumps(pre)} matches none that llama.cpp names "
        "(gpt-2, smollm, llama-bpe); its token ids would differ, so nothing was written"
    )


def vocab_tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and their types in id order, padded to the model's vocabulary size, as llama.cpp's
    TextModel.get_vocab_base writes them (added tokens normalised; special ones CONTROL)."""
    import gguf

    reverse = {i: tok for tok, i in tokenizer.get_vocab().items()}
    if reverse and max(reverse) >= vocab_size:
        raise GGUFError(
            f"tokenizer: id {max(reverse)} does not fit the model's vocab_size {vocab_size}"
        )
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        kind = gguf.TokenType.NORMAL
        if token in added:
            if not decoder[i].normalized:  # llama.cpp takes added tokens pre-normalised
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            kind = gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED
        tokens.append(token)
        types.append(kind)
    return tokens, types


def adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding a text adds BOS / EOS, observed on the tokenizer itself."""
    ids = tokenizer("hello", add_special_tokens=True)["input_ids"]
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    starts = len(ids) > len(plain) and bos is not None and ids[0] == bos
    ends = len(ids) > len(plain) and eos is not None and ids[-1] == eos
    return starts, ends


def _add_vocab(writer: Any, tokenizer: Any, config: Any) -> str:
    """Tokenizer model, pre-tokenizer, tokens, types, then SpecialVocab (merges, special ids, add
    flags, chat template) read from the tokenizer and config saved to a scratch directory, as the
    converter reads a model directory. Returns the pre-tokenizer name."""
    import gguf

    pre = pre_tokenizer_name(tokenizer)
    tokens, types = vocab_tokens(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="adapterkit-gguf-vocab-") as scratch:
        tokenizer.save_pretrained(scratch)
        config.save_pretrained(scratch)
        special = gguf.SpecialVocab(scratch, load_merges=True, n_vocab=config.vocab_size)
    if not special.merges:
        raise GGUFError("tokenizer: no BPE merges found; llama.cpp cannot tokenize without them")
    bos, eos = adds_special(tokenizer)
    special.add_special_token = {"bos": bos, "eos": eos}  # what the tokenizer does, not a guess
    special.add_to_gguf(writer, quiet=True)
    return pre
