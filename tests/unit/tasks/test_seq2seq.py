"""The seq2seq task on tiny random T5 and BART models: reading pairs (JSONL, TSV, aligned text
files) and their errors, the loss on the target tokens, generation, the metrics against sacreBLEU
on the predictions, the tied and untied LM head, and the memory plan against autograd."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from adapterkit import api
from adapterkit.cli import cli
from adapterkit.errors import DataError, RecipeError
from adapterkit.plugins import load_registry
from adapterkit.recipe import resolve
from adapterkit.storage.sources import load_config
from adapterkit.storage.sources import resolve as resolve_model
from adapterkit.tasks._loss import IGNORE
from adapterkit.tasks.seq2seq import Options, Seq2Seq, encoding, generation
from adapterkit.testing import check_task
from adapterkit.testing.fixtures import seq2seq_rows
from adapterkit.testing.tiny import save_tiny_t5_dir

TASK = Seq2Seq()
PAIRS = [json.loads(line) for line in seq2seq_rows().splitlines()]


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t5")
    return {
        "tied": save_tiny_t5_dir(root / "tied"),
        "untied": save_tiny_t5_dir(root / "untied", tied=False),
    }


def _load(path: Path, options: Options | None = None) -> tuple[Any, Any]:
    model, tok = TASK.load_model(resolve_model(str(path)), options or Options(), {})
    return model.eval(), tok


# ---- reading --------------------------------------------------------------------------------------


def test_jsonl_rows_with_a_list_source_and_several_references(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    rows = [
        {"doc": ["First sentence.", "Second one. "], "tldr": ["a", "b"]},
        {"doc": "plain", "tldr": "c"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = TASK.read(f, Options(source_field="doc", target_field="tldr"))
    assert [r["source"] for r in got] == ["First sentence. Second one.", "plain"]
    assert [r["references"] for r in got] == [["a", "b"], ["c"]]
    assert got[1]["where"] == f"{f}:2"


def test_tsv_rows_and_a_file_without_targets(tmp_path: Path) -> None:
    f = tmp_path / "x.tsv"
    f.write_text("en\tde\none\teins\ntwo\tzwei\n")
    rows = TASK.read(f, Options(source_field="en", target_field="de"))
    assert [(r["source"], r["references"], r["line"]) for r in rows] == [
        ("one", ["eins"], 2),
        ("two", ["zwei"], 3),
    ]
    f.write_text("en\none\n")
    assert TASK.read(f, Options(source_field="en", target_field="de"))[0]["references"] is None


@pytest.mark.parametrize("given", ["train.en", "train.de", "train"])
def test_aligned_text_files_by_either_name(tmp_path: Path, given: str) -> None:
    (tmp_path / "train.en").write_text("one two\nthree\n")
    (tmp_path / "train.de").write_text("eins zwei\ndrei\n")
    rows = TASK.read(tmp_path / given, Options(source_file="en", target_file=".de"))
    assert [(r["source"], r["references"]) for r in rows] == [
        ("one two", ["eins zwei"]),
        ("three", ["drei"]),
    ]
    assert rows[1]["where"] == f"{tmp_path / 'train.en'}:2"


def _pair_error(tmp_path: Path, name: str, text: str, **options: Any) -> str:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(DataError) as exc:
        TASK.encode(TASK.read(f, Options(**options)), None, Options(**options))
    return str(exc.value)


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.de").write_text("eins\n")
    msg = _pair_error(tmp_path, "a.en", "one\ntwo\n", source_file="en", target_file="de")
    assert f"{tmp_path / 'a.en'} has 2 lines but {tmp_path / 'a.de'} has 1" in msg
    (tmp_path / "b.de").write_text("eins\n\n")
    msg = _pair_error(tmp_path, "b.en", "one\ntwo\n", source_file="en", target_file="de")
    assert msg.startswith(f"{tmp_path / 'b.de'}:2: empty line")
    rows = '{"source": "a", "target": "b"}\n{"source": "a", "target": "  "}\n'
    assert _pair_error(tmp_path, "c.jsonl", rows).startswith(
        f"{tmp_path / 'c.jsonl'}:2: empty text"
    )
    msg = _pair_error(tmp_path, "d.jsonl", '{"src": "a", "target": "b"}\n')
    assert f"{tmp_path / 'd.jsonl'}:1: no field 'source'" in msg and "source_field" in msg
    rows = '{"source": "a", "target": "b"}\n{"source": "c"}\n'
    assert _pair_error(tmp_path, "e.jsonl", rows).startswith(f"{tmp_path / 'e.jsonl'}:2: no target")
    msg = _pair_error(tmp_path, "f.tsv", "source\ttarget\na\tb\nc\n")
    assert msg.startswith(f"{tmp_path / 'f.tsv'}:3: 1 fields")
    assert "extension '.txt'" in _pair_error(tmp_path, "g.txt", "a\n")
    msg = _pair_error(tmp_path, "h.en", "one\n", source_file="en", target_file="de")
    assert "no target" in msg  # no h.de: a file to predict, not to train on
    with pytest.raises(RecipeError, match="come together"):
        TASK.read(tmp_path / "a.en", Options(source_file="en"))


# ---- encoding and the loss ------------------------------------------------------------------------


def test_loss_is_summed_over_the_target_tokens_only(t5_dirs: dict[str, Path]) -> None:
    """The decoder reads the shifted labels: the summed loss is transformers' own mean loss (which
    shifts the labels itself) times the number of target tokens, on a padded batch."""
    options = Options(prefix="translate English to German: ", max_length=32)
    model, tok = _load(t5_dirs["tied"], options)
    rows = [{"source": p["source"], "references": [p["target"]]} for p in PAIRS[:3]]
    examples = TASK.encode(rows, tok, options)
    assert examples[0]["input_ids"] == tok(options.prefix + PAIRS[0]["source"])["input_ids"]
    assert examples[0]["labels"] == tok(text_target=PAIRS[0]["target"])["input_ids"]
    assert examples[0]["labels"][-1] == tok.eos_token_id
    batch = TASK.collate(examples, tok, options)
    assert (batch["labels"] == IGNORE).any() and (batch["attention_mask"] == 0).any()
    count = sum(len(e["labels"]) for e in examples)
    assert TASK.targets(batch) == count
    with torch.no_grad():
        ours = float(TASK.loss(model, batch))
        theirs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    assert math.isclose(ours, float(theirs) * count, rel_tol=1e-5)


def test_long_texts_are_cut_and_counted_but_references_stay_whole(t5_dirs: dict[str, Path]) -> None:
    options = Options(max_length=4, max_target_length=3)
    _, tok = _load(t5_dirs["tied"], options)
    rows = [{"source": p["source"], "references": [p["target"]]} for p in PAIRS[:6]]
    examples = TASK.encode(rows, tok, options)
    assert all(len(e["input_ids"]) <= 4 and len(e["labels"]) <= 3 for e in examples)
    assert examples.cut_sources == 4 and examples.cut_targets == 5  # "four five" + </s> fits 3
    assert examples[0]["references"] == [PAIRS[0]["target"]]


# ---- generation -----------------------------------------------------------------------------------


def test_generation_does_not_depend_on_the_batch_size(t5_dirs: dict[str, Path]) -> None:
    options = Options(max_new_tokens=6)
    model, tok = _load(t5_dirs["untied"], options)
    rows = [{"source": p["source"], "line": i} for i, p in enumerate(PAIRS[:5])]
    one = TASK.predict(model, tok, rows, options, batch_size=1)
    five = TASK.predict(model, tok, rows, options, batch_size=5)
    assert one == five and all(set(p) == {"line", "source", "prediction"} for p in one)
    beams = Options(max_new_tokens=6, num_beams=3, length_penalty=0.5)
    kwargs = generation.generate_kwargs(model, tok, beams)
    assert kwargs["num_beams"] == 3 and kwargs["length_penalty"] == 0.5
    assert kwargs["decoder_start_token_id"] == 0 and kwargs["eos_token_id"] == tok.eos_token_id
    assert "length_penalty" not in generation.generate_kwargs(model, tok, options)
    beam_out = TASK.predict(model, tok, rows, beams, batch_size=2)
    assert beam_out == TASK.predict(model, tok, rows, beams, batch_size=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, t5_dirs: dict[str, Path]) -> dict:
    """Full fine-tuning of the tiny T5 on the word-for-word mapping, evaluated before and after."""
    root = tmp_path_factory.mktemp("trained")
    (root / "train.jsonl").write_text(seq2seq_rows())
    (root / "recipe.yaml").write_text(
        f"model: {{name: {t5_dirs['tied']}}}\n"
        "task: {name: seq2seq, options: {max_length: 32, max_new_tokens: 10, "
        "max_eval_generate: 12, metrics: [bleu, chrf, exact_match]}}\n"
        "data: {train: train.jsonl, eval: train.jsonl}\n"
        "strategy: {name: full}\n"
        "train: {max_steps: 50, batch_size: 6, eval_batch_size: 5, lr: 0.01, schedule: constant,"
        " seed: 0, precision: fp32, threads: 1}\n"
    )
    metrics = api.train(resolve(root / "recipe.yaml"), root / "out", progress=False)
    return {"root": root, "metrics": metrics}


def test_training_on_a_mapping_reaches_a_high_bleu(trained: dict) -> None:
    before, after = trained["metrics"]["initial_eval"], trained["metrics"]["final_eval"]
    assert before["bleu"] < 10 and after["bleu"] > 90 and after["exact_match"] > 80
    assert after["eval_loss"] < before["eval_loss"] / 10
    assert after["generated_rows"] == 12
    assert after["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_eval_is_sacrebleu_on_the_predictions_and_reloads_bit_for_bit(trained: dict) -> None:
    import sacrebleu

    root, out = trained["root"], trained["root"] / "out"
    again = api.evaluate(out, root / "train.jsonl", batch_size=5)
    assert again == trained["metrics"]["final_eval"]
    predictions = api.predict(out, root / "train.jsonl", batch_size=4)
    hyps = [p["prediction"] for p in predictions]
    refs = [[p["references"][0] for p in predictions]]
    assert again["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=1e-9)
    assert again["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score, abs=1e-9)
    result = CliRunner().invoke(
        cli, ["eval", "--adapter", str(out), "--data", str(root / "train.jsonl"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["bleu"] == again["bleu"]
    assert api.generate("one two three", adapter=out, max_new_tokens=5) == "eins zwei drei"


# ---- the model: tied or untied head ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "trained_names"), [("tied", {"shared.weight"}), ("untied", {"lm_head.weight"})]
)
def test_head_trains_the_lm_head_tied_or_not(
    t5_dirs: dict[str, Path], kind: str, trained_names: set[str]
) -> None:
    source = resolve_model(str(t5_dirs[kind]))
    parts = TASK.model_parts(source, Options())
    assert parts.head == ("lm_head",) and not parts.new_head
    model, _ = _load(t5_dirs[kind])
    meta = TASK.meta_model(load_config(source), Options())

    def layout(m: Any) -> dict:
        return {n: tuple(p.shape) for n, p in m.named_parameters()}

    assert layout(meta) == layout(model)
    head = load_registry().strategy("head")
    applied = head.apply(model, head.Options(), parts)
    assert set(head.adapter_state_dict(applied, head.Options())) == trained_names


def test_a_tiny_bart_passes_the_task_check(tmp_path: Path) -> None:
    """BART: decoder start = </s>, targets `<s> ... </s>`, learned positions; no T5 specifics."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    words = sorted({w for p in PAIRS for w in f"{p['source']} {p['target']}".split()})
    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2,
    )  # fmt: skip
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    tok.save_pretrained(tmp_path / "bart")
    data = tmp_path / "train.jsonl"
    data.write_text(seq2seq_rows())
    options = Options(max_length=16, max_new_tokens=4, max_eval_generate=4)
    check_task(Seq2Seq, options, data=data, model=str(tmp_path / "bart"))
    model, tok = _load(tmp_path / "bart", options)
    assert encoding.decoder_inputs(model, torch.tensor([[5, 6, 2]])).tolist() == [[2, 5, 6]]


# ---- the plan -------------------------------------------------------------------------------------


def _saved_bytes(loss: torch.Tensor, model: Any) -> int:
    """Bytes of the tensors autograd saved for backward, each storage once, parameters and the
    loss's own (log-softmax, targets) left out (as tests/unit/planning/test_memory.py counts them)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack += [f for f, _ in node.next_functions]
        if node.name() in ("NllLossBackward0", "LogSoftmaxBackward0"):
            continue
        for attr in (a for a in dir(node) if a.startswith("_saved_")):
            value = getattr(node, attr)
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["tied", "untied"])
@pytest.mark.parametrize(("strategy", "options"), [("full", {}), ("head", {}), ("lora", {"r": 4})])
def test_planned_activations_are_the_saved_tensors(
    t5_dirs: dict[str, Path], kind: str, strategy: str, options: dict
) -> None:
    from adapterkit.planning.memory import plan

    s = load_registry().strategy(strategy)
    source = resolve_model(str(t5_dirs[kind]))
    model, _ = _load(t5_dirs[kind])
    model = s.apply(model, s.Options(**options), TASK.model_parts(source, Options())).train()
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # a padded row
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.flip(1)}
    saved = _saved_bytes(TASK.loss(model, batch), model)
    planned = plan(str(t5_dirs[kind]), "seq2seq", [strategy], {strategy: options}, 2, 8, "cpu")
    assert planned[0].components["activations"] == pytest.approx(saved, rel=0.01)
    assert planned[0].trainable_params == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
