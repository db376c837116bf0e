"""Every row of docs/errors.md, through the real CLI: exit status 2, one message naming the file
(with line) or key or directory, no traceback. The table and the cases must list the same ids."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from filelock import FileLock
from safetensors.torch import load_file, save_file

from adapterkit import api
from adapterkit.cli import cli
from adapterkit.recipe import resolve
from adapterkit.testing import save_tiny_bert_dir, save_tiny_llama_dir

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    {"instruction": "write one two three", "output": "one two three ."},
    {"instruction": "name a colour", "input": "red or blue", "output": "blue ."},
]
RECIPE = (
    "model: {name: MODEL}\n"
    "task: {name: causal_lm, options: {max_length: 64}}\n"
    "data: {train: train.jsonl}\n"
    "strategy: {name: lora, options: {r: 2}}\n"
    "train: {max_steps: 2, batch_size: 2, lr: 0.01, checkpoint_every: 1, threads: 1}\n"
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    save_tiny_llama_dir(root / "tiny")
    save_tiny_llama_dir(root / "untied", tied=False)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    (root / "recipe.yaml").write_text(RECIPE.replace("MODEL", str(root / "tiny")))
    api.train(resolve(root / "recipe.yaml"), root / "run", progress=False)
    return root


# ---- the cases: each returns (CLI arguments, substrings the message must hold) ---------------------

Case = Callable[[Path, Path], tuple[list[str], list[str]]]


def _train(ws: Path, tmp: Path, *overrides: str) -> list[str]:
    return ["train", str(ws / "recipe.yaml"), *overrides, "--out", str(tmp / "out")]


def _file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _seq(ws: Path, tmp: Path, data: Path, *extra: str) -> list[str]:
    return _train(
        ws,
        tmp,
        "task.name=sequence_classification",
        "task.options={}",
        f"data.train={data}",
        *extra,
    )


def _adapter(ws: Path, tmp: Path) -> Path:
    """A fresh copy of the trained adapter to break."""
    dst = tmp / "adapter"
    shutil.copytree(ws / "run", dst)
    return dst


def _eval(adapter: Path, ws: Path) -> list[str]:
    return ["eval", "--adapter", str(adapter), "--data", str(ws / "train.jsonl")]


def _edit_manifest(adapter: Path, edit: Callable[[dict], None]) -> None:
    path = adapter / "adapterkit.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _edit_tensors(adapter: Path, edit: Callable[[dict], None]) -> str:
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return sorted(tensors)[0]


def data_missing(ws, tmp):
    return _train(ws, tmp, f"data.train={tmp / 'nope.jsonl'}"), ["data.train: file not found"]


def data_empty(ws, tmp):
    f = _file(tmp, "empty.jsonl", "")
    return _train(ws, tmp, f"data.train={f}"), [str(f), "empty"]


def jsonl_malformed(ws, tmp):
    f = _file(tmp, "bad.jsonl", json.dumps(ROWS[0]) + "\n{not json\n")
    return _train(ws, tmp, f"data.train={f}"), [f"{f}:2:", "invalid JSON", "column 2"]


def csv_malformed(ws, tmp):
    f = _file(tmp, "bad.csv", "sentence,label\ngood film,1\nbad,film,0\n")
    return _seq(ws, tmp, f), [f"{f}:3:", "3 fields", "header on line 1 has 2"]


def conllu_malformed(ws, tmp):
    word = "\t".join(["1", "the", "_", "DET", "_", "_", "_", "_", "_", "_"])
    f = _file(tmp, "bad.conllu", word + "\n2\tcat\tNOUN\n")
    options = "task.options={token_column: FORM, tag_column: UPOS}"
    args = _train(ws, tmp, "task.name=token_classification", options, f"data.train={f}")
    return args, [f"{f}:2:", "3 fields, but a CoNLL-U line has 10"]


def pairs_misaligned(ws, tmp):
    src = _file(tmp, "train.en", "a cat\na dog\n")
    tgt = _file(tmp, "train.de", "eine katze\n")
    options = "task.options={source_file: en, target_file: de}"
    args = _train(ws, tmp, "task.name=seq2seq", options, f"data.train={src}")
    return args, [f"{src} has 2 lines but {tgt} has 1"]


def target_empty(ws, tmp):
    rows = '{"source": "a", "target": "b"}\n{"source": "c", "target": " "}\n'
    f = _file(tmp, "pairs.jsonl", rows)
    args = _train(ws, tmp, "task.name=seq2seq", "task.options={}", f"data.train={f}")
    return args, [f"{f}:2:", "empty text in 'target'"]


def qa_offset(ws, tmp):
    qa = {
        "id": "q1",
        "question": "what is the cat ?",
        "answers": [{"text": "red", "answer_start": 12}],
    }
    data = {"data": [{"paragraphs": [{"context": "the cat is red .", "qas": [qa]}]}]}
    f = _file(tmp, "squad.json", json.dumps(data))
    args = _train(ws, tmp, "task.name=extractive_qa", "task.options={}", f"data.train={f}")
    return args, [str(f), "data[0].paragraphs[0].qas[0] (id q1)", "does not match the context"]


def tsv_malformed(ws, tmp):
    f = _file(tmp, "bad.tsv", "sentence\tlabel\ngood film\t1\nbad film 0\n")
    return _seq(ws, tmp, f), [f"{f}:3:", "1 fields"]


def conll_malformed(ws, tmp):
    f = _file(tmp, "bad.conll", "a O\nb O X\n")
    args = _train(ws, tmp, "task.name=token_classification", "task.options={}", f"data.train={f}")
    return args, [f"{f}:2:", "3 columns, but line 1 has 2"]


def column_missing(ws, tmp):
    f = _file(tmp, "cols.csv", "text,label\ngood film,1\n")
    return _seq(ws, tmp, f), [f"{f}:1:", "no column 'sentence'", "task.options.text_column"]


def field_missing(ws, tmp):
    f = _file(tmp, "nofield.jsonl", json.dumps({"instruction": "hi"}) + "\n")
    return _train(ws, tmp, f"data.train={f}"), [f"{f}:1:", "output"]


def label_unknown(ws, tmp):
    f = _file(tmp, "labels.csv", "sentence,label\ngood,pos\nbad,neg\nhm,maybe\n")
    args = _seq(ws, tmp, f, "task.options.labels=[neg,pos]")
    return args, [f"{f}:4", "label 'maybe' is not one of task.options.labels"]


def recipe_unknown_key(ws, tmp):
    return _train(ws, tmp, "train.lrr=0.1"), ["train.lrr: unknown key", "did you mean 'lr'"]


def recipe_wrong_type(ws, tmp):
    return _train(ws, tmp, "train.batch_size=many"), ["train.batch_size", "valid integer"]


def recipe_tracker(ws, tmp):
    return _train(ws, tmp, "train.log_with=[tensorbord]"), [
        "train.log_with",
        "unknown tracker 'tensorbord'",
        "installed here:",
    ]


def recipe_yaml(ws, tmp):
    f = _file(tmp, "broken.yaml", "model: {name: x}\ntrain: {a: [}\n")
    return ["train", str(f)], [f"{f}:2:", "invalid YAML"]


def strategy_unknown(ws, tmp):
    return _train(ws, tmp, "strategy.name=lorra"), ["unknown strategy 'lorra'", "'lora'"]


def task_unknown(ws, tmp):
    return _train(ws, tmp, "task.name=causal"), ["task.name: unknown task 'causal'"]


def option_range(ws, tmp):
    return _train(ws, tmp, "strategy.options.r=0"), ["strategy.options.r", "greater than or equal"]


def model_not_a_model(ws, tmp):
    (tmp / "empty-model").mkdir()
    args = _train(ws, tmp, f"model.name={tmp / 'empty-model'}")
    return args, [str(tmp / "empty-model"), "no config.json"]


def adapter_incomplete(ws, tmp):
    a = _adapter(ws, tmp)
    (a / "adapter_model.safetensors").unlink()
    return _eval(a, ws), [f"{a}/adapter_model.safetensors: missing"]


def adapter_truncated(ws, tmp):
    a = _adapter(ws, tmp)
    w = a / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return _eval(a, ws), [str(w), "cannot be read as safetensors"]


def adapter_corrupt_manifest(ws, tmp):
    a = _adapter(ws, tmp)
    (a / "adapterkit.json").write_text("{garbage")
    return _eval(a, ws), [f"{a}/adapterkit.json: not valid JSON"]


def adapter_manifest_types(ws, tmp):
    a = _adapter(ws, tmp)
    _edit_manifest(a, lambda m: m["strategy"].update(name=5))
    return _eval(a, ws), [f"{a}/adapterkit.json", "strategy.name: expected str, got int"]


def adapter_pickle_only(ws, tmp):
    a = tmp / "pickled"
    a.mkdir()
    torch.save({"w": torch.zeros(1)}, a / "adapter_model.bin")
    return _eval(a, ws), [str(a), "only pickle", "arbitrary code"]


def adapter_other_base(ws, tmp):
    a = _adapter(ws, tmp)
    _edit_manifest(a, lambda m: m["base_model"].update(name=str(ws / "untied")))
    return _eval(a, ws), ["adapter was trained on base model", str(ws / "untied")]


def adapter_stray_tensor(ws, tmp):
    a = _adapter(ws, tmp)
    _edit_tensors(a, lambda t: t.update({"evil.weight": torch.zeros(2)}))
    return _eval(a, ws), ["map to no module of the model: ['evil.weight']", "nothing was loaded"]


def adapter_shape_dtype(ws, tmp):
    a = _adapter(ws, tmp)

    def half(t: dict) -> None:
        first = sorted(t)[0]
        t[first] = t[first].half()

    name = _edit_tensors(a, half)
    return _eval(a, ws), [f"shape or dtype differs: {name}", "float16 in the file"]


_HELD: list = []  # locks held while a case's command runs


def _sweep(ws, tmp, *extra):
    args = ["sweep", str(ws / "recipe.yaml"), "data.holdout=1", *extra]
    return [*args, "--out", str(tmp / "sw"), "--no-progress"]


def _refused_sweep(ws, tmp):
    """A sweep whose one trial the budget refuses: a study on disk, no training process."""
    from adapterkit.search import sweep

    space = ["train.lr=log(1e-4,1e-3)"]
    sweep(
        ws / "recipe.yaml",
        space,
        trials=1,
        out=tmp / "sw",
        overrides=["data.holdout=1"],
        budget="1KiB",
        progress=False,
    )


def sweep_space(ws, tmp):
    args = _sweep(ws, tmp, "--space", "train.lrr=log(1e-4,1e-3)")
    return args, ["--space train.lrr=log(1e-4,1e-3): 1 problem", "train.lrr: unknown key"]


def sweep_no_eval(ws, tmp):
    args = ["sweep", str(ws / "recipe.yaml"), "--space", "train.lr=log(1e-4,1e-3)"]
    return [*args, "--out", str(tmp / "sw")], ["a sweep selects on eval data", "data.holdout"]


def sweep_out_exists(ws, tmp):
    _refused_sweep(ws, tmp)
    args = _sweep(ws, tmp, "--space", "train.lr=log(1e-4,1e-3)")
    return args, [f"{tmp / 'sw'}: already exists and holds a sweep", "--resume"]


def sweep_resume_none(ws, tmp):
    args = [*_sweep(ws, tmp, "--space", "train.lr=log(1e-4,1e-3)"), "--resume"]
    return args, [f"{tmp / 'sw'}: no sweep to resume"]


def sweep_resume_differs(ws, tmp):
    _refused_sweep(ws, tmp)
    args = [*_sweep(ws, tmp, "--space", "train.lr=log(1e-4,1e-2)"), "--resume"]
    return args, ["cannot resume", 'space train.lr: "log(0.0001,0.001)" -> "log(0.0001,0.01)"']


def sweep_locked(ws, tmp):
    _refused_sweep(ws, tmp)
    lock = FileLock(str(tmp / "sw" / "sweep.lock"), thread_local=False)
    lock.acquire()
    _HELD.append(lock)
    args = [*_sweep(ws, tmp, "--space", "train.lr=log(1e-4,1e-3)"), "--resume"]
    return args, [f"{tmp / 'sw'}: another sweep is running there"]


def tune_only(ws, tmp):
    args = ["compare", str(ws / "recipe.yaml"), "--tune-space", "train.lr=log(1e-4,1e-3)"]
    return args, ["--tune-space: only with --tune N"]


def inspect_not_adapterkit(ws, tmp):
    args = ["inspect", str(ws / "tiny")]
    return args, [f"{ws / 'tiny'}: no adapterkit.json", "a Hugging Face model directory"]


def inspect_not_a_directory(ws, tmp):
    args = ["inspect", str(ws / "recipe.yaml")]
    return args, [f"{ws / 'recipe.yaml'}: is a file, not a directory"]


def adapter_remote_code(ws, tmp):
    a = _adapter(ws, tmp)
    _edit_manifest(a, lambda m: m["base_model"].update(trust_remote_code=True))
    return _eval(a, ws), ["trust_remote_code", "say-so"]


def out_exists(ws, tmp):
    return ["train", str(ws / "recipe.yaml"), "--out", str(ws / "run")], [
        "holds an adapter",
        "--resume",
        "--overwrite",
    ]


def resume_differs(ws, tmp):
    out = tmp / "out"
    shutil.copytree(ws / "run", out)
    args = [*_train(ws, tmp, "train.lr=0.02"), "--resume"]
    return args, ["cannot resume", "train.lr: 0.01 -> 0.02"]


def resume_none(ws, tmp):
    return [*_train(ws, tmp), "--resume"], [f"{tmp / 'out'}/checkpoints: no checkpoint"]


def resume_overwrite(ws, tmp):
    return [*_train(ws, tmp), "--resume", "--overwrite"], ["contradict"]


def _generate(ws: Path, *flags: str) -> list[str]:
    return ["generate", "--model", str(ws / "tiny"), "--task", "causal_lm", *flags]


def prompts_empty(ws, tmp):
    f = _file(tmp, "prompts.txt", "\n  \n")
    return _generate(ws, "--prompts", str(f)), [str(f), "no prompts"]


def prompts_directory(ws, tmp):
    return _generate(ws, "--prompts", str(tmp)), [str(tmp), "is a directory"]


def sampling_range(ws, tmp):
    args = ["generate", "hi", "--adapter", str(ws / "run"), "--temperature", "-1"]
    return args, ["temperature must be 0 (greedy) or above"]


def out_directory(ws, tmp):
    args = ["predict", "--adapter", str(ws / "run"), str(ws / "train.jsonl"), "--out", str(tmp)]
    return args, [str(tmp), "is a directory", "--out"]


def _merge(adapter: Path, out: Path, *flags: str) -> list[str]:
    return ["merge", "--adapter", str(adapter), "--out", str(out), *flags]


def merge_adapter_missing(ws, tmp):
    return _merge(tmp / "nope", tmp / "m"), [f"{tmp / 'nope'}: no such adapter directory"]


def merge_not_an_adapter(ws, tmp):
    (tmp / "plain").mkdir()
    return _merge(tmp / "plain", tmp / "m"), [f"{tmp / 'plain'}/adapter_model.safetensors: missing"]


def merge_base_missing(ws, tmp):
    a = _adapter(ws, tmp)
    _edit_manifest(a, lambda m: m["base_model"].update(name=str(tmp / "gone")))
    return _merge(a, tmp / "m"), [f"{a}/adapterkit.json", "base model", str(tmp / "gone")]


def merge_out_exists(ws, tmp):
    args = _merge(ws / "run", ws / "run", "--data", str(ws / "train.jsonl"))
    return args, [f"{ws / 'run'}: already exists", "never replaces"]


def merge_out_parent_file(ws, tmp):
    out = ws / "train.jsonl" / "merged"
    return _merge(ws / "run", out), [f"{ws / 'train.jsonl'}: not a directory", str(out)]


def merge_no_eval_data(ws, tmp):
    return _merge(ws / "run", tmp / "m"), [f"{ws / 'run'}/recipe.yaml", "no eval data", "--data"]


def merge_tolerance(ws, tmp):
    a = _adapter(ws, tmp)
    _edit_tensors(a, lambda t: t.update({k: v * 1e5 for k, v in t.items() if "lora_B" in k}))
    args = _merge(a, tmp / "m", "--dtype", "fp16", "--data", str(ws / "train.jsonl"))
    return args, ["float16 tolerance", "max |dlogit| inf", "nothing was written"]


def _export(adapter: Path, out: Path) -> list[str]:
    return ["export", "--adapter", str(adapter), "--format", "gguf", "--out", str(out)]


def gguf_not_llama(ws, tmp):
    bert = save_tiny_bert_dir(tmp / "bert")
    data = _file(tmp, "sst.csv", "sentence,label\ngood film,1\nbad film,0\n")
    recipe = _file(
        tmp,
        "bert.yaml",
        f"model: {{name: {bert}}}\ntask: {{name: sequence_classification}}\n"
        f"data: {{train: {data}}}\nstrategy: {{name: lora, options: {{r: 2}}}}\n"
        "train: {max_steps: 1, batch_size: 2, threads: 1}\n",
    )
    api.train(resolve(recipe), tmp / "bert-run", progress=False)
    return _export(tmp / "bert-run", tmp / "b.gguf"), [
        f"{tmp / 'bert-run'} is a bert",
        "Llama-family causal language models only",
    ]


def gguf_tokenizer(ws, tmp):
    return _export(ws / "run", tmp / "m.gguf"), [
        f"{ws / 'run'}: tokenizer: a WordLevel model",
        "byte-level BPE",
    ]


def gguf_out_exists(ws, tmp):
    out = _file(tmp, "m.gguf", "x")
    return _export(ws / "run", out), [f"{out}: already exists", "another --out"]


CASES: dict[str, Case] = {
    name.replace("_", "-"): fn
    for name, fn in list(globals().items())
    if callable(fn)
    and name[0] != "_"
    and name.islower()
    and fn.__module__ == __name__
    and name not in ("ws", "catalogue_ids")
}


def catalogue_ids() -> list[str]:
    text = (ROOT / "docs" / "errors.md").read_text()
    return re.findall(r"^\| ([a-z]+-[a-z-]+) \|", text, flags=re.MULTILINE)


def test_every_catalogue_row_has_a_case_and_every_case_a_row() -> None:
    ids = catalogue_ids()
    assert len(ids) == len(set(ids)) >= 25
    assert sorted(ids) == sorted(CASES)


@pytest.mark.parametrize("row", catalogue_ids())
def test_catalogue_row(row: str, ws: Path, tmp_path: Path) -> None:
    args, expected = CASES[row](ws, tmp_path)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert result.exit_code == 2, result.output
    # (a model-loading progress bar may precede it; the message is what follows "error: ")
    message = result.output.partition("error: ")[2]
    assert message, result.output
    for text in expected:
        assert text in message, (text, result.output)


def test_a_real_process_prints_no_traceback_unless_debug(ws: Path, tmp_path: Path) -> None:
    bad = _file(tmp_path, "bad.jsonl", "{not json\n")
    args = [str(ws / "recipe.yaml"), f"data.train={bad}", "--out", str(tmp_path / "o")]
    plain = subprocess.run(
        [sys.executable, "-m", "adapterkit", "train", *args], capture_output=True, text=True
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == plain.stderr.strip().splitlines()[0]  # one line
    debug = subprocess.run(
        [sys.executable, "-m", "adapterkit", "--debug", "train", *args],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr
