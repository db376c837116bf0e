"""`adapterkit merge`: every built-in strategy on a tiny causal LM and a LoRA on a classification
task, trained once each (1 step). The merged directory is loaded with plain transformers and its
logits compared here, independently of the verification, with base + adapter's (`api.load`); QLoRA
is merged into both bases and the original-base merge checked against peft's own merge; a merge
over its tolerance exits 2 and leaves nothing, `--force` keeps it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapterkit import api
from adapterkit.cli import cli
from adapterkit.errors import DataError, MergeError
from adapterkit.export.merge import merge, merged_model
from adapterkit.recipe import resolve
from adapterkit.testing import CHATML_TEMPLATE
from adapterkit.testing.fixtures import classification_rows, instruction_rows

CAUSAL = {"full": "{}", "head": "{}", "last_n": "{n: 1}", "lora": "{r: 2}", "qlora": "{r: 2}"}
EXACT = ("full", "head", "last_n")  # the trained tensors are written over the base: bit for bit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path, bert_dir: Path) -> Path:
    """One 1-step run per strategy on the tiny Llama, and a LoRA sequence classifier."""
    root = tmp_path_factory.mktemp("merge")
    (root / "train.jsonl").write_text(instruction_rows())
    (root / "train.tsv").write_text(classification_rows())
    cases = [(f"llama-{s}", llama_dir, "causal_lm", "train.jsonl", s, o) for s, o in CAUSAL.items()]
    cases.append(("bert-lora", bert_dir, "sequence_classification", "train.tsv", "lora", "{r: 2}"))
    for name, model, task, data, strategy, options in cases:
        recipe = root / f"{name}.yaml"
        recipe.write_text(
            f"model: {{name: {model}}}\n"
            f"task: {{name: {task}, options: {{max_length: 32}}}}\n"
            f"data: {{train: {data}, eval: {data}, max_eval_rows: 8}}\n"
            f"strategy: {{name: {strategy}, options: {options}}}\n"
            "train: {max_steps: 1, batch_size: 4, eval_batch_size: 4, lr: 0.01, threads: 1, "
            "precision: fp32}\n"
        )
        api.train(resolve(recipe), root / name, progress=False)
    return root


@pytest.fixture(scope="module")
def merged(runs: Path) -> dict[str, tuple[Path, dict]]:
    """Each run merged once (fp32, dequantized base): name -> (directory, report)."""
    out = {}
    for name in [*(f"llama-{s}" for s in CAUSAL), "bert-lora"]:
        report = merge(runs / name, runs / "merged" / name)
        out[name] = (runs / "merged" / name, report)
    return out


def _batch(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def _max_diff(adapter: Path, plain: torch.nn.Module, batch: dict) -> float:
    """max |logit| difference of `plain` and base + adapter (api.load) on `batch`'s real tokens."""
    loaded = api.load(adapter)
    with torch.no_grad(), loaded.autocast():
        want = loaded.model(**batch).logits.float()
    with torch.no_grad():
        got = plain(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    if want.dim() == 3:
        want, got = want[mask], got[mask]
    return float((want - got).abs().max())


@pytest.mark.parametrize("strategy", list(CAUSAL))
def test_every_strategy_merges_into_a_plain_transformers_model(
    strategy: str, runs: Path, merged: dict
) -> None:
    out, report = merged[f"llama-{strategy}"]
    assert report["passed"] and report["strategy"] == strategy
    assert json.loads((out / "verify.json").read_text()) == json.loads(json.dumps(report))
    assert report["loaded_with"] == "transformers.AutoModelForCausalLM"
    names = set(load_file(out / "model.safetensors"))
    assert not [n for n in names if "lora" in n or "base_layer" in n or "absmax" in n]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.dtype == torch.float32 and not hasattr(plain, "peft_config")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = _batch(tokenizer, ["write one two three", "the cat is happy . the dog is sad ."])
    diff = _max_diff(runs / f"llama-{strategy}", plain, batch)
    if strategy in EXACT:
        assert diff == 0.0
        assert report["max_abs_logit_diff"] <= 1e-6
    else:
        assert diff <= 1e-5
        assert report["max_abs_logit_diff"] <= 1e-5
    assert report["metric"]["reference"] == pytest.approx(report["metric"]["merged"], abs=1e-5)


def test_chat_template_and_end_of_turn_travel_with_the_model(merged: dict) -> None:
    out, _ = merged["llama-lora"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    generation = transformers.GenerationConfig.from_pretrained(out)
    eos = generation.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (
        eos if isinstance(eos, list) else [eos]
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "name a colour"}], add_generation_prompt=True, return_dict=True
    )
    ids = torch.tensor([prompt["input_ids"]])
    out_ids = model.generate(ids, max_new_tokens=4, do_sample=False)  # plain transformers runs it
    assert out_ids.shape[1] > ids.shape[1]


def test_a_classifier_keeps_its_labels_and_logits(runs: Path, merged: dict) -> None:
    out, report = merged["bert-lora"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    manifest = json.loads((runs / "bert-lora" / "adapterkit.json").read_text())
    labels = manifest["task"]["labels"]
    assert model.config.id2label == dict(enumerate(labels))
    assert model.config.label2id == {name: i for i, name in enumerate(labels)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert _max_diff(runs / "bert-lora", model, _batch(tokenizer, ["the cat is happy ."])) <= 1e-5
    assert report["passed"] and report["metric"]["name"] == "accuracy"
    assert report["metric"]["reference"] == report["metric"]["merged"]


def test_qlora_dequantized_base_is_closer_than_the_original(runs: Path, merged: dict) -> None:
    run = runs / "llama-qlora"
    _, dequantized = merged["llama-qlora"]
    original = merge(run, runs / "merged" / "qlora-original", base="original")
    assert dequantized["base"] == "dequantized" and original["base"] == "original"
    assert original["passed"]  # the merge itself is right: it matches original base + adapter
    closer = dequantized["max_abs_logit_diff"]
    farther = original["vs_trained"]["max_abs_logit_diff"]
    assert closer <= 1e-5 < farther  # the quantization error, measured
    assert dequantized["mean_kl"] < original["vs_trained"]["mean_kl"]

    # the original-base merge is what peft's own merge onto the unquantized base gives
    from peft import PeftModel

    base = transformers.AutoModelForCausalLM.from_pretrained(
        json.loads((run / "adapterkit.json").read_text())["base_model"]["name"]
    )
    reference = PeftModel.from_pretrained(base, run).merge_and_unload().state_dict()
    written = load_file(runs / "merged" / "qlora-original" / "model.safetensors")
    assert max(float((written[k] - reference[k]).abs().max()) for k in written) <= 1e-6


def test_merged_model_in_memory_in_bf16(runs: Path) -> None:
    result = merged_model(runs / "llama-lora", dtype="bf16")
    assert result.loaded is None and result.dtype == "bf16"
    assert {p.dtype for p in result.model.parameters()} == {torch.bfloat16}
    assert not any("lora" in name for name in result.model.state_dict())
    batch = _batch(result.tokenizer, ["write one two three"])
    assert _max_diff(runs / "llama-lora", result.model, batch) <= 0.05  # bf16 rounding only


def _broken(runs: Path, tmp: Path) -> Path:
    """A LoRA whose update is scaled by 1e5: fine in fp32, overflowing fp16 activations."""
    adapter = tmp / "broken"
    shutil.copytree(runs / "llama-lora", adapter)
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1e5 if "lora_B" in k else v for k, v in tensors.items()}, weights)
    return adapter


def test_over_tolerance_exits_2_and_leaves_nothing_unless_forced(
    runs: Path, tmp_path: Path
) -> None:
    adapter, out = _broken(runs, tmp_path), tmp_path / "merged"
    args = ["merge", "--adapter", str(adapter), "--out", str(out), "--dtype", "fp16"]
    failed = CliRunner().invoke(cli, args)
    assert failed.exit_code == 2, failed.output
    assert "float16 tolerance" in failed.output and "nothing was written" in failed.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))

    forced = CliRunner().invoke(cli, [*args, "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    report = json.loads(forced.stdout)
    assert report["passed"] is False and report["max_abs_logit_diff"] is None  # inf, as JSON null
    assert json.loads((out / "verify.json").read_text())["passed"] is False
    assert (out / "model.safetensors").is_file()


def test_bad_arguments_fail_before_any_model_loads(runs: Path, tmp_path: Path) -> None:
    run = runs / "llama-lora"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MergeError, match="already exists"):
        merge(run, tmp_path / "file")
    with pytest.raises(MergeError, match="--base 'nf4'"):
        merge(run, tmp_path / "m", base="nf4")
    with pytest.raises(MergeError, match="--dtype 'int8'"):
        merge(run, tmp_path / "m", dtype="int8")
    with pytest.raises(MergeError, match="--max-rows 0"):
        merge(run, tmp_path / "m", max_rows=0)
    with pytest.raises(DataError, match="not a file"):
        merge(run, tmp_path / "m", data=tmp_path)
    with pytest.raises(DataError, match="no such file"):
        merge(run, tmp_path / "m", data=tmp_path / "nope.jsonl")
    assert not (tmp_path / "m").exists()
