"""`adapterkit inspect`: every built-in strategy's output on a tiny causal LM and a LoRA on a
classification task, trained once each (1 step); the report checked against the files themselves
(safetensors read in full here), the verdicts against what the runtimes' loaders do, and the
error cases through the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapterkit import api
from adapterkit.cli import cli
from adapterkit.export import inspection
from adapterkit.recipe import resolve
from adapterkit.testing.fixtures import classification_rows, instruction_rows

CAUSAL = {"full": "{}", "head": "{}", "last_n": "{n: 1}", "lora": "{r: 2}", "qlora": "{r: 2}"}
RUNS = [*(f"llama-{s}" for s in CAUSAL), "bert-lora"]
# (peft, vllm, llama_cpp, merge) as the files decide them
EXPECTED = {
    "llama-full": (False, False, False, True), "llama-head": (False, False, False, True),
    "llama-last_n": (False, False, False, True), "llama-lora": (True, True, True, True),
    "llama-qlora": (True, True, True, True), "bert-lora": (True, False, False, True),
}  # fmt: skip
TOP_KEYS = {
    "path", "kind", "best_of", "format", "format_version", "strategy", "task", "base_model",
    "versions", "tensors", "aliases", "totals", "files", "run", "targets",
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path, bert_dir: Path) -> Path:
    """One 1-step run per case, each trained once for the whole module."""
    root = tmp_path_factory.mktemp("inspect")
    (root / "train.jsonl").write_text(instruction_rows())
    (root / "train.tsv").write_text(classification_rows())
    cases = [(f"llama-{s}", llama_dir, "causal_lm", "train.jsonl", s, o) for s, o in CAUSAL.items()]
    cases.append(("bert-lora", bert_dir, "sequence_classification", "train.tsv", "lora", "{r: 2}"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERKIT_AUTO_PRECISION", "fp32")  # as the conformance kit trains QLoRA
        for name, model, task, data, strategy, options in cases:
            recipe = root / f"{name}.yaml"
            recipe.write_text(
                f"model: {{name: {model}}}\n"
                f"task: {{name: {task}, options: {{max_length: 32}}}}\n"
                f"data: {{train: {data}, eval: {data}, max_eval_rows: 4}}\n"
                f"strategy: {{name: {strategy}, options: {options}}}\n"
                "train: {max_steps: 1, batch_size: 4, eval_batch_size: 4, lr: 0.01, threads: 1"
                + (", checkpoint_every: 1}\n" if name == "llama-head" else "}\n")
            )
            api.train(resolve(recipe), root / name, progress=False)
    return root


@pytest.fixture(scope="module")
def reports(runs: Path) -> dict[str, dict[str, Any]]:
    """Each run's report, made once (inspect only reads)."""
    return {name: inspection.inspect(runs / name) for name in RUNS}


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["inspect", *args])


def _copy(runs: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs / name, tmp_path / name))


def _edited(runs: Path, run: str, tmp_path: Path, /, **base: Any) -> tuple[Path, dict[str, Any]]:
    """A copy of run `run` whose manifest's base_model takes `base`; (copy, its manifest)."""
    a = _copy(runs, run, tmp_path)
    manifest = json.loads((a / "adapterkit.json").read_text())
    manifest["base_model"].update(base)
    (a / "adapterkit.json").write_text(json.dumps(manifest))
    return a, manifest


# ---- the report against the files -------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_tensors_are_the_files_own(name: str, runs: Path, reports: dict) -> None:
    report = reports[name]
    weights = runs / name / "adapter_model.safetensors"
    tensors = load_file(weights)
    assert [t["name"] for t in report["tensors"]] == sorted(tensors)
    for t in report["tensors"]:
        real = tensors[t["name"]]
        assert t["shape"] == list(real.shape)
        assert t["dtype"] == str(real.dtype).removeprefix("torch.")
        assert t["parameters"] == real.numel()
        assert t["bytes"] == real.numel() * real.element_size()
    totals = report["totals"]
    assert totals["count"] == len(tensors)
    assert totals["parameters"] == sum(t.numel() for t in tensors.values())
    assert totals["file_bytes"] == weights.stat().st_size > totals["bytes"]
    metrics = json.loads((runs / name / "metrics.json").read_text())
    assert totals["parameters"] == metrics["trainable_params"]  # each trained tensor once


@pytest.mark.parametrize("name", RUNS)
def test_manifest_base_and_run_sections(name: str, runs: Path, reports: dict) -> None:
    report = reports[name]
    manifest = json.loads((runs / name / "adapterkit.json").read_text())
    metrics = json.loads((runs / name / "metrics.json").read_text())
    assert report["kind"] == "run" and report["best_of"] is None
    assert report["strategy"] == {**manifest["strategy"], "installed": True}
    assert report["task"]["name"] == manifest["task"]["name"]
    assert report["task"]["options"] == manifest["task"]["options"]
    base = report["base_model"]
    assert base["fingerprint"] == manifest["base_model"]["fingerprint"]
    assert base["resolves"] is True and base["fingerprint_matches"] is True
    assert report["versions"]["torch"] == {
        "recorded": manifest["versions"]["torch"],
        "installed": torch.__version__,
    }
    run = report["run"]
    assert run["steps"] == metrics["steps"] == 1 and run["best_dir"] is True
    assert run["final_eval"] == metrics["final_eval"] and run["best_step"] == metrics["best_step"]
    kept = sorted(p.name for p in (runs / name / "checkpoints").glob("step-*"))
    assert run["checkpoints"] == kept and bool(kept) == (name == "llama-head")
    names = {f["name"] for f in report["files"]}
    assert "recipe.yaml" in names and ("adapter_config.json" in names) == ("lora" in name)


def test_classification_reports_its_labels_and_model_class(reports: dict) -> None:
    report = reports["bert-lora"]
    assert report["task"]["manifest"]["labels"] == ["mid", "neg", "pos"]
    assert report["task"]["model_class"] == "BertForSequenceClassification"
    kinds = {t["name"]: t["kind"] for t in report["tensors"]}
    assert kinds["base_model.model.classifier.weight"] == "module"  # modules_to_save
    assert {k for n, k in kinds.items() if "lora_" in n} == {"lora_matrix"}
    assert report["run"]["selection_metric"] in report["run"]["best_eval"]


def test_a_best_dir_is_an_adapter_of_its_run(runs: Path, reports: dict) -> None:
    report = inspection.inspect(runs / "llama-lora" / "best")
    assert report["kind"] == "adapter" and report["run"] is None
    assert report["best_of"] == str(runs / "llama-lora")
    assert report["tensors"] == reports["llama-lora"]["tensors"]  # best = final after 1 step


# ---- the verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_verdicts(name: str, reports: dict) -> None:
    targets = reports[name]["targets"]
    got = tuple(targets[k]["ok"] for k in ("peft", "vllm", "llama_cpp", "merge"))
    assert got == EXPECTED[name], targets
    for verdict in targets.values():
        assert bool(verdict["reasons"]) == (verdict["ok"] is not True), verdict
    if name.endswith(("full", "head", "last_n")):
        for key in ("peft", "vllm", "llama_cpp"):
            assert "no adapter_config.json" in targets[key]["reasons"][0]


def test_lora_on_a_classifier_fails_vllm_for_its_saved_head(reports: dict) -> None:
    targets = reports["bert-lora"]["targets"]
    vllm = " ".join(targets["vllm"]["reasons"])
    assert "unsupported LoRA weight" in vllm and "base_model.model.classifier" in vllm
    assert "vllm#9280" in vllm and "BertForSequenceClassification" in vllm
    assert "Llama-family" in " ".join(targets["llama_cpp"]["reasons"])


def test_a_peft_yes_loads_with_plain_peft(runs: Path, reports: dict, llama_dir: Path) -> None:
    """The verdict is peft's own: the directory loads with PeftModel and changes the logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert reports["llama-lora"]["targets"]["peft"]["ok"] is True
    base = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 3]])
    before = base(ids).logits
    model = PeftModel.from_pretrained(base, str(runs / "llama-lora"))
    saved = load_file(runs / "llama-lora" / "adapter_model.safetensors")
    key = next(k for k in saved if "lora_B" in k)
    loaded = model.state_dict()[key.replace(".lora_B.", ".lora_B.default.")]
    assert torch.equal(loaded, saved[key]) and not torch.allclose(model(ids).logits, before)


def test_a_saved_lm_head_fails_vllm_and_llama_cpp(runs: Path, tmp_path: Path) -> None:
    """The reported failures (vllm#9280, llama.cpp#11554): a LoRA that also saves the lm_head."""
    a = _copy(runs, "llama-lora", tmp_path)
    tensors = load_file(a / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = torch.zeros(128, 32)
    save_file(tensors, a / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((a / "adapter_config.json").read_text())
    (a / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    report = inspection.inspect(a)
    targets = report["targets"]
    assert targets["peft"]["ok"] is True and targets["merge"]["ok"] is True
    assert targets["vllm"]["ok"] is False and targets["llama_cpp"]["ok"] is False
    assert "base_model.model.lm_head.weight" in targets["vllm"]["reasons"][0]
    assert "llama.cpp#11554" in targets["llama_cpp"]["reasons"][0]
    kinds = {t["name"]: t["kind"] for t in report["tensors"]}
    assert kinds["base_model.model.lm_head.weight"] == "module"


def test_a_tensor_peft_would_not_load(runs: Path, tmp_path: Path, llama_dir: Path) -> None:
    a = _copy(runs, "llama-lora", tmp_path)
    config = json.loads((a / "adapter_config.json").read_text())
    kept = [m for m in config["target_modules"] if not m.endswith("q_proj")]
    (a / "adapter_config.json").write_text(json.dumps({**config, "target_modules": kept}))
    peft = inspection.inspect(a)["targets"]["peft"]
    assert peft["ok"] is False and "4 tensor(s) peft would not load" in peft["reasons"][0]
    assert "q_proj" in peft["reasons"][0]
    # and peft itself leaves them out: no LoRA on q_proj once it has loaded the directory
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(a))
    adapted = {n for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted and not any("q_proj" in n for n in adapted)


def test_base_missing_or_another_model(runs: Path, tmp_path: Path) -> None:
    a, _ = _edited(runs, "llama-lora", tmp_path, name=str(tmp_path / "gone"))
    report = inspection.inspect(a)
    assert report["base_model"]["resolves"] is False and "gone" in report["base_model"]["note"]
    targets = report["targets"]
    assert targets["peft"]["ok"] is True  # the files alone decide it
    assert targets["vllm"]["ok"] is None and targets["llama_cpp"]["ok"] is None
    assert targets["merge"]["ok"] is False and "base model" in targets["merge"]["reasons"][0]

    b, _ = _edited(runs, "llama-full", tmp_path, fingerprint="0" * 64)
    other = inspection.inspect(b)
    assert other["base_model"]["fingerprint_matches"] is False
    assert "fingerprint" in other["targets"]["merge"]["reasons"][0]


def test_plugins_not_installed_or_options_that_do_not_fit(runs: Path, tmp_path: Path) -> None:
    a = _copy(runs, "llama-full", tmp_path)
    manifest = json.loads((a / "adapterkit.json").read_text())
    manifest["strategy"]["name"] = "not-installed"
    manifest["task"]["options"]["bogus"] = 1
    (a / "adapterkit.json").write_text(json.dumps(manifest))
    report = inspection.inspect(a)
    assert report["strategy"]["installed"] is False and report["task"]["installed"] is True
    merge = " ".join(report["targets"]["merge"]["reasons"])
    assert report["targets"]["merge"]["ok"] is False
    assert "strategy 'not-installed' is not installed" in merge and "task.bogus" in merge


def test_an_unconverted_gguf_base_is_not_converted(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    a, _ = _edited(runs, "llama-lora", tmp_path, name="smollm2-135m", gguf_sha256="ab" * 32)
    base = inspection.inspect(a)["base_model"]
    assert base["resolves"] is None and "not converted" in base["note"]
    assert not (tmp_path / "cache").exists()


def test_a_gguf_base_is_checked_through_its_converted_copy(
    runs: Path, tmp_path: Path, llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converted copy laid out as sources.convert_gguf leaves it (a plain HF directory with the
    GGUF file's sha256 recorded) stands for the GGUF file; a changed file no longer matches."""
    from adapterkit.storage import sources

    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    gguf_file = tmp_path / "tiny.gguf"
    gguf_file.write_bytes(b"GGUF stand-in")
    sha = sources.sha256_file(gguf_file)
    copy = Path(shutil.copytree(llama_dir, tmp_path / "cache" / "models" / f"tiny-{sha[:16]}"))
    (copy / sources.SOURCE_FILE).write_text(json.dumps({"gguf_sha256": sha}))
    fingerprint = sources.fingerprint(sources.ModelSource(str(gguf_file), copy, sha))
    a, _ = _edited(
        runs, "llama-lora", tmp_path, name=str(gguf_file), gguf_sha256=sha, fingerprint=fingerprint
    )
    base = inspection.inspect(a)["base_model"]
    assert base["resolves"] is True and base["path"] == str(copy)
    assert base["fingerprint_matches"] is True and base["note"] == ""
    gguf_file.write_bytes(b"another GGUF")
    base = inspection.inspect(a)["base_model"]
    assert base["fingerprint_matches"] is False and "sha256 differs" in base["note"]


def test_a_chained_base_is_not_merged(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose base is another run: inspect neither merges that run (train or eval does)
    nor checks the fingerprint, and takes the architecture from the first run's base."""
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    link = {"run": str(runs / "llama-lora"), "strategy": "lora", "task": "causal_lm"}
    a, _ = _edited(runs, "llama-head", tmp_path, name=str(runs / "llama-lora"), chain=[link])
    report = inspection.inspect(a)
    base = report["base_model"]
    assert base["resolves"] is True and base["fingerprint_matches"] is None
    assert "chained run" in base["note"] and base["chain"] == [link]
    assert report["task"]["model_class"] == "LlamaForCausalLM"
    assert report["targets"]["merge"]["ok"] is True
    assert not (tmp_path / "cache").exists()  # nothing merged, nothing cached
    assert f"chain: {runs / 'llama-lora'} (lora, causal_lm)" in _cli(str(a)).output


def test_no_model_weights_are_loaded(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch
    from transformers import PreTrainedModel

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect loaded weights")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    report = inspection.inspect(runs / "bert-lora")
    assert report["task"]["model_class"] == "BertForSequenceClassification"
    assert report["base_model"]["fingerprint_matches"] is True


# ---- the command ------------------------------------------------------------------------------------


def test_json_keys_are_the_documented_ones(runs: Path) -> None:
    result = _cli(str(runs / "llama-qlora"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == TOP_KEYS
    documented = re.findall(r"^    (\w+(?:, \w+)*)  ", inspection.__doc__ or "", flags=re.MULTILINE)
    assert {k for line in documented for k in line.split(", ")} >= TOP_KEYS
    assert set(report["targets"]) == {"peft", "vllm", "llama_cpp", "merge"}
    for verdict in report["targets"].values():
        assert set(verdict) == {"ok", "reasons", "notes"}
    assert set(report["tensors"][0]) == {"name", "shape", "dtype", "parameters", "bytes", "kind"}
    assert set(report["totals"]) == {"count", "parameters", "bytes", "file_bytes", "dtypes"}


def test_text_output(runs: Path) -> None:
    result = _cli(str(runs / "bert-lora"))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"{runs / 'bert-lora'}: a training run")
    for text in (
        "strategy   lora",
        "model      BertForSequenceClassification",
        "fingerprint matches",
    ):
        assert text in out
    assert "labels=[" in out and "targets\n  peft       yes" in out
    assert "  vLLM       no\n" in out and "unsupported LoRA weight" in out
    assert "  merge      yes" in out and "best/: yes" in out


# ---- errors ---------------------------------------------------------------------------------------


def _fails(path: Path, *expected: str) -> None:
    result = _cli(str(path))
    assert result.exit_code == 2, result.output
    message = result.output.partition("error: ")[2]
    for text in expected:
        assert text in message, result.output


def test_not_an_adapterkit_directory_says_what_it_is(
    runs: Path, tmp_path: Path, llama_dir: Path
) -> None:
    _fails(tmp_path / "nope", "nope: no such directory")
    (tmp_path / "file.json").write_text("{}")
    _fails(tmp_path / "file.json", "is a file, not a directory")
    _fails(llama_dir, "no adapterkit.json", "a Hugging Face model directory (config.json")
    peft_only = _copy(runs, "llama-lora", tmp_path)
    (peft_only / "adapterkit.json").unlink()
    _fails(peft_only, "no adapterkit.json", "a plain peft adapter")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path / "empty", "an empty directory")


def test_broken_files(runs: Path, tmp_path: Path) -> None:
    a = _copy(runs, "llama-lora", tmp_path)
    manifest = (a / "adapterkit.json").read_text()
    (a / "adapterkit.json").write_text("{garbage")
    _fails(a, f"{a}/adapterkit.json: not valid JSON")
    (a / "adapterkit.json").write_text(
        json.dumps({**json.loads(manifest), "strategy": {"name": 5}})
    )
    _fails(a, "strategy.name: expected str, got int")
    (a / "adapterkit.json").write_text(manifest)
    weights = a / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _fails(a, str(weights), "cannot be read as safetensors")
    weights.write_bytes(b"\xff" * 8 + data[8:])  # a header length past the end of the file
    _fails(a, "cannot be read as safetensors")
    weights.unlink()
    _fails(a, f"{weights}: missing")
    torch.save({"w": torch.zeros(1)}, a / "adapter_model.bin")
    _fails(a, "only pickle", "arbitrary code")
