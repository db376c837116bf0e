"""GGUF export: tiny Llamas written with gguf's writer, read back by transformers' own GGUF loader
(an independent reader) and compared; the Modelfile; the errors.

The tiny Llamas are "sharpened" (Q/K and embeddings scaled up) so that attention and the output
distribution are far from uniform: with the usual 0.02 init a missing Q/K permutation changes the
logits by less than bf16 rounding and a test could not tell; here it is caught (see the mutation
test).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from gguf import GGUFReader

from adapterkit.cli import cli
from adapterkit.errors import GGUFError
from adapterkit.export import gguf as writer
from adapterkit.export.gguf_check import TOLERANCES, read_back
from adapterkit.export.ollama import OLLAMA_CHATML, modelfile
from adapterkit.export.to_gguf import Request, export_model_gguf, verify_path
from adapterkit.testing import CHATML_TEMPLATE, tiny_llama_config, tiny_tokenizer
from adapterkit.testing.tiny import _WORDS

VOCAB = 336  # the BPE tokenizer's 320 tokens, padded as checkpoints often are ([PAD320]...)
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bpe_tokenizer(template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer like SmolLM2's (GPT-2 split, ChatML specials at ids 0-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([" ".join(_WORDS) + " system user assistant 123 4567 ."] * 20, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = template
    return tok


def sharp_llama(tied: bool = True, hidden: int = 32, heads: int = 4, seed: int = 0):
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(tied=tied, vocab_size=VOCAB)
    config.hidden_size, config.num_attention_heads = hidden, heads
    config.num_key_value_heads, config.head_dim = 2, hidden // heads
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        layers: Any = model.model.layers
        for layer in layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
        model.model.embed_tokens.weight.mul_(5)
        if not tied:
            model.lm_head.weight.mul_(5)
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny forward passes are faster on one thread than fighting over two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def llama(request):
    return sharp_llama(tied=request.param)


@pytest.fixture(scope="module")
def tied():
    return sharp_llama(tied=True)


def _export(model, tok, out: Path, type: str = "f16", **kw) -> dict:
    return export_model_gguf(model, tok, Request(out, type, **kw))


def _fields(path: Path) -> dict:
    reader = GGUFReader(str(path))
    out = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    for key in ("pre", "model", "bos_token_id", "eos_token_id", "padding_token_id"):
        out[key] = reader.fields[f"tokenizer.ggml.{key}"].contents()
    out["add_bos"] = reader.fields["tokenizer.ggml.add_bos_token"].contents()
    out["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return out


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("type", ["f16", "bf16", "q8_0"])
def test_round_trip_within_tolerance_same_ids_and_template(llama, bpe, type, tmp_path) -> None:
    out = tmp_path / "m.gguf"
    report = _export(llama, bpe, out, type)
    assert report["passed"] and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.verify.json"]
    assert json.loads(verify_path(out).read_text())["passed"] is True
    logits, tol = report["logits"], TOLERANCES[type]
    assert 0 < logits["max_abs_logit_diff"] <= tol.max_abs and logits["mean_kl"] <= tol.mean_kl
    assert report["tokenizer"]["ids_equal"] and report["tokenizer"]["chat_template_kept"]
    assert report["content"]["max_abs_logit_diff"] < 1e-4  # exactly the rounded source
    # independently of the report: the reader's model and tokenizer
    back, back_tok = read_back(out)
    text = "<|im_start|>user\nthe cat is red 123<|im_end|>\n"
    assert back_tok(text)["input_ids"] == bpe(text)["input_ids"]
    assert back_tok.chat_template == CHATML_TEMPLATE
    assert back.config.tie_word_embeddings == llama.config.tie_word_embeddings
    ids = torch.tensor([bpe(text)["input_ids"]])
    with torch.no_grad():
        kl = (
            torch.nn.functional.kl_div(
                back(ids).logits.log_softmax(-1),
                llama(ids).logits.log_softmax(-1),
                log_target=True,
                reduction="batchmean",
            )
            / ids.shape[1]
        )
    assert kl <= tol.mean_kl


def test_header_and_tensor_types_follow_llama_cpp(llama, bpe, tmp_path) -> None:
    out = tmp_path / "m.gguf"
    _export(llama, bpe, out, "q8_0")
    f, c = _fields(out), llama.config
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 7  # MOSTLY_Q8_0
    assert f["llama.block_count"] == c.num_hidden_layers == 2
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.embedding_length"] == 32 and f["llama.feed_forward_length"] == 64
    assert f["llama.context_length"] == 256 and f["llama.vocab_size"] == VOCAB
    assert f["llama.rope.dimension_count"] == 8 and f["llama.rope.freq_base"] == 10000.0
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    assert (f["model"], f["pre"], f["add_bos"]) == ("gpt2", "gpt-2", False)
    assert (f["bos_token_id"], f["eos_token_id"], f["padding_token_id"]) == (1, 2, 2)
    assert f["tokenizer.chat_template"] == CHATML_TEMPLATE
    kinds = f["tensors"]
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == "F32"
    assert kinds["blk.1.attn_q.weight"] == kinds["token_embd.weight"] == "Q8_0"
    assert ("output.weight" in kinds) is not llama.config.tie_word_embeddings


def test_a_missing_qk_permutation_is_caught_and_nothing_is_left(bpe, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(writer, "permute", lambda w, n_head, n_head_kv: w)
    with pytest.raises(GGUFError, match="logits differ beyond the f16 tolerance"):
        _export(sharp_llama(), bpe, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []  # no file, no report, no temporary


def test_a_change_hidden_inside_the_q8_0_tolerance_is_still_caught(
    bpe, tmp_path, monkeypatch
) -> None:
    """A file whose weights differ a little from the source's (one layer's update lost, say) can
    stay inside q8_0's logit tolerance; the comparison with the rounded source still sees it."""
    import copy

    model = sharp_llama()
    other = copy.deepcopy(model)
    layer: Any = other.model.layers[1]
    with torch.no_grad():
        layer.mlp.down_proj.weight.mul_(1.05)
    real = writer.write_gguf
    monkeypatch.setattr(writer, "write_gguf", lambda m, *a, **k: real(other, *a, **k))
    with pytest.raises(GGUFError) as caught:
        _export(model, bpe, tmp_path / "m.gguf", "q8_0")
    assert "does not hold the source's weights rounded to q8_0" in str(caught.value)
    assert "beyond the q8_0 tolerance" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_force_keeps_a_failing_file_and_says_so(bpe, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(writer, "permute", lambda w, n_head, n_head_kv: w)
    report = _export(sharp_llama(), bpe, tmp_path / "m.gguf", force=True)
    assert report["forced"] and not report["passed"] and (tmp_path / "m.gguf").is_file()
    assert json.loads(verify_path(tmp_path / "m.gguf").read_text())["passed"] is False


def test_q8_0_falls_back_to_f16_where_rows_are_not_whole_blocks(bpe, tmp_path) -> None:
    model = sharp_llama(hidden=40, heads=4)  # rows of 40: not a multiple of q8_0's 32
    report = _export(model, bpe, tmp_path / "m.gguf", "q8_0")
    kinds = _fields(tmp_path / "m.gguf")["tensors"]
    assert report["passed"]
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["blk.0.ffn_down.weight"] == "Q8_0"
    assert "blk.0.attn_q.weight" in report["q8_0_fallbacks"]
    assert "blk.0.ffn_down.weight" not in report["q8_0_fallbacks"]


# ---- Ollama --------------------------------------------------------------------------------------


def test_ollama_modelfile_carries_template_and_stop(tied, bpe, tmp_path) -> None:
    out = tmp_path / "m.gguf"
    _export(tied, bpe, out, ollama=True)
    text = (tmp_path / "Modelfile").read_text()
    assert "FROM ./m.gguf\n" in text and f'TEMPLATE """{OLLAMA_CHATML}"""\n' in text
    assert 'PARAMETER stop "<|im_end|>"\n' in text and "SYSTEM" not in text


def test_a_default_system_prompt_becomes_system() -> None:
    text = modelfile("m.gguf", bpe_tokenizer(SMOL_TEMPLATE))
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM"""\n' in text


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}",
        CHATML_TEMPLATE.replace("message['content']", "(message['content'] | trim)"),
    ],
    ids=["other-format", "strips-content"],
)
def test_a_template_that_is_not_chatml_is_refused_before_writing(tied, template, tmp_path) -> None:
    with pytest.raises(GGUFError, match="not ChatML"):
        _export(tied, bpe_tokenizer(template), tmp_path / "m.gguf", ollama=True)
    assert list(tmp_path.iterdir()) == []


# ---- errors --------------------------------------------------------------------------------------


def test_paths_are_checked_before_anything_is_written(tied, bpe, tmp_path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    (tmp_path / "there.gguf").write_text("x")
    (tmp_path / "busy.gguf.verify.json").write_text("{}")
    cases = {
        "dir.gguf": "is a directory",
        "there.gguf": "already exists",
        "busy.gguf": "busy.gguf.verify.json: already exists",
        "nope/m.gguf": "does not exist",
        "there.gguf/m.gguf": "is not a directory",
        "m.bin": "must name a .gguf file",
    }
    for name, message in cases.items():
        with pytest.raises(GGUFError, match=message):
            _export(tied, bpe, tmp_path / name)
    assert (tmp_path / "there.gguf").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "busy.gguf.verify.json",
        "dir.gguf",
        "there.gguf",
    ]


def test_a_non_llama_model_is_refused(bert_dir, bpe, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    with pytest.raises(GGUFError, match=r"BertForSequenceClassification model; GGUF export"):
        _export(bert, bpe, tmp_path / "m.gguf")
    with pytest.raises(GGUFError, match="bert"):
        writer.check_exportable(bert.config)


def test_a_tokenizer_llama_cpp_cannot_carry_is_refused(tied, tmp_path) -> None:
    with pytest.raises(GGUFError, match="WordLevel"):
        _export(tied, tiny_tokenizer(), tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


# ---- through the CLI, from a trained adapter -----------------------------------------------------

RECIPE = (
    "model: {name: MODEL}\n"
    "task: {name: causal_lm, options: {max_length: 48}}\n"
    "data: {train: train.jsonl, holdout: 2}\n"
    "strategy: {name: lora, options: {r: 2}}\n"
    "train: {max_steps: 2, batch_size: 2, lr: 0.01, threads: 1}\n"
)
ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bert_dir) -> Path:
    """A LoRA run on a tiny BPE Llama (held-out rows kept), and one on BERT classification."""
    from adapterkit import api
    from adapterkit.recipe import resolve

    root = tmp_path_factory.mktemp("gguf-runs")
    model = sharp_llama(tied=True)
    model.save_pretrained(root / "llama")
    bpe_tokenizer().save_pretrained(root / "llama")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 3))
    (root / "recipe.yaml").write_text(RECIPE.replace("MODEL", str(root / "llama")))
    api.train(resolve(root / "recipe.yaml"), root / "lora", progress=False)
    (root / "sst.csv").write_text("sentence,label\ngood film,1\nbad film,0\n" * 2)
    bert = (
        f"model: {{name: {bert_dir}}}\ntask: {{name: sequence_classification}}\n"
        f"data: {{train: {root / 'sst.csv'}}}\nstrategy: {{name: lora, options: {{r: 2}}}}\n"
        "train: {max_steps: 1, batch_size: 2, threads: 1}\n"
    )
    (root / "bert.yaml").write_text(bert)
    api.train(resolve(root / "bert.yaml"), root / "bert", progress=False)
    return root


def test_cli_exports_a_trained_lora_adapter(runs, tmp_path) -> None:
    out = tmp_path / "lora.gguf"
    args = ["export", "--adapter", str(runs / "lora"), "--format", "gguf", "--type", "q8_0"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--ollama", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["type"] == "q8_0" and out.is_file()
    assert report["logits"]["held_out_rows"] == 2 and "holdout" in report["held_out"]
    assert report == json.loads(verify_path(out).read_text())
    assert (tmp_path / "Modelfile").read_text().startswith("# Written by adapterkit")
    again = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_refuses_a_bert_classification_adapter(runs, tmp_path) -> None:
    args = ["export", "--adapter", str(runs / "bert"), "--format", "gguf"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b.gguf")])
    assert result.exit_code == 2, result.output
    assert "bert" in result.output and "Llama-family causal language models only" in result.output
    assert list(tmp_path.iterdir()) == []
