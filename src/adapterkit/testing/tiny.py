"""Tiny random models and tiny tokenizers, built from configs in milliseconds (nothing downloaded).

Llama (causal LM, ChatML template like SmolLM2) and BERT (uncased WordPiece, [PAD] = 0), each with
a random model of 2 blocks and hidden size 32, and as a local HF directory `from_pretrained` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# SmolLM2's chat template (ChatML), so tiny models render prompts the way the embedded default does.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an is are was be to of and in on for with it this that you i he she we they what how "
    "why who when where write give list name tell explain describe make find answer question "
    "yes no good bad one two three four five six seven eight nine ten hello world cat dog sun "
    "moon red blue green big small fast slow happy sad day night water fire tree book"
).split()


def tiny_tokenizer() -> Any:
    """A word-level fast tokenizer (~100 tokens) with ChatML specials; pad = end-of-turn like SmolLM2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate([*specials, "\n", "system", "user", "assistant"])}
    for w in [*_WORDS, ".", ",", "?", "!", ":"]:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_llama_config(tied: bool = True, vocab_size: int = 128, layers: int = 2) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def tiny_bert_config(vocab_size: int = 128, layers: int = 2) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
    )


def tiny_llama(tied: bool = True, seed: int = 0, layers: int = 2) -> Any:
    """A random LlamaForCausalLM with 2 blocks, hidden size 32."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tied=tied, layers=layers)).eval()


def save_tiny_llama_dir(path: Path, tied: bool = True, seed: int = 0) -> Path:
    """Write a tiny Llama plus the tiny tokenizer as a local HF directory (safetensors)."""
    model = tiny_llama(tied=tied, seed=seed)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return Path(path)


# Specials first, so [PAD] is id 0 as in BERT (and tiny_bert_config's pad_token_id).
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BERT_PUNCTUATION = (".", ",", "?", "!", ":", ";", "'", '"', "-", "(", ")")
_BERT_SUFFIXES = ("##s", "##ed", "##ing", "##ly")


def tiny_bert_vocab() -> list[str]:
    """The tiny BERT tokenizer's vocabulary (< 128 entries, [PAD] = 0), lowercase words."""
    vocab = [*_BERT_SPECIALS]
    for tok in [*_WORDS, *_BERT_PUNCTUATION, *_BERT_SUFFIXES]:
        if tok not in vocab:
            vocab.append(tok)
    return vocab


def tiny_bert_tokenizer() -> Any:
    """An uncased WordPiece fast tokenizer like BERT's: `[CLS] a [SEP] b [SEP]`, token type ids.

    Unknown words become `[UNK]` (WordPiece splits off the `##s`/`##ed`/`##ing`/`##ly` suffixes
    of known words). Its vocabulary fits `tiny_bert_config()` (vocab_size 128).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(tiny_bert_vocab())}
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix="##")
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def tiny_bert(seed: int = 0, layers: int = 2) -> Any:
    """A random BertModel (the bare encoder, as a pretrained checkpoint ships), hidden size 32."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(tiny_bert_config(layers=layers)).eval()


def save_tiny_bert_dir(path: Path, seed: int = 0) -> Path:
    """Write a tiny BERT encoder plus `tiny_bert_tokenizer()` as a local HF directory (safetensors).

    Load it with any `AutoModelFor...` class; the task head is then freshly initialised.
    """
    tiny_bert(seed=seed).save_pretrained(path)
    tiny_bert_tokenizer().save_pretrained(path)
    return Path(path)


# ---- a tiny T5 (encoder-decoder) ------------------------------------------------------------------

# A few German words, so a tiny English-to-German mapping can be learnt word for word.
_T5_GERMAN = (
    "der die das ein eine ist sind und katze hund sonne mond rot blau grün groß klein glücklich "
    "traurig eins zwei drei vier fünf"
).split()
T5_SENTINELS = tuple(f"<extra_id_{i}>" for i in range(10))
"""The tiny T5 tokenizer's sentinel tokens (span corruption), special like T5's own."""


def tiny_t5_tokenizer() -> Any:
    """A word-level fast tokenizer with T5's conventions: <pad> = 0, </s> = 1 ended to every text,
    <unk> = 2, sentinel tokens <extra_id_0..9> last; English and a few German words (< 128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "</s>", "<unk>"])}
    for w in [*_WORDS, ".", ",", "?", "!", ":", *_T5_GERMAN, *T5_SENTINELS]:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=list(T5_SENTINELS),
    )


def tiny_t5_config(vocab_size: int = 128, layers: int = 2, gated: bool = False) -> Any:
    """T5 with hidden size 32, 4 heads of 8, `layers` encoder and decoder blocks (ReLU MLP as
    T5 v1.0, or gated-GELU as T5 v1.1 and mT5)."""
    from transformers import T5Config

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu" if gated else "relu",
        pad_token_id=0,
        eos_token_id=1,
    )
    config.decoder_start_token_id = 0  # T5 starts the decoder with its pad token
    return config


def tiny_t5(tied: bool = True, seed: int = 0, layers: int = 2) -> Any:
    """A random T5ForConditionalGeneration. `tied=False`: T5 v1.1's layout, an LM head of its own
    (config `tie_word_embeddings: false`, gated-GELU MLP), as a v1.1 checkpoint stores it."""
    import torch
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(tiny_t5_config(layers=layers, gated=not tied))
    if not tied:
        head = model.lm_head
        head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
        model.config.tie_word_embeddings = False
    return model.eval()


def save_tiny_t5_dir(path: Path, tied: bool = True, seed: int = 0) -> Path:
    """Write a tiny T5 plus `tiny_t5_tokenizer()` as a local HF directory (safetensors)."""
    tiny_t5(tied=tied, seed=seed).save_pretrained(path)
    tiny_t5_tokenizer().save_pretrained(path)
    return Path(path)
