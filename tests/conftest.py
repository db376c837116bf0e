"""Shared test set-up: offline always, a fresh plugin registry per test, and session fixtures for
the tiny models (written once per run) and the repo root.

tests/unit/<subsystem>/ mirrors src/adapterkit/; tests/system/ holds the CLI, crash and end-to-end
tests that run whole commands or child processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the suite may contact a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _fresh_plugin_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees plugins as its own environment variables say, not a cached registry."""
    from adapterkit import plugins

    for var in ("ADAPTERKIT_PLUGINS", "ADAPTERKIT_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    plugins.load_registry.cache_clear()
    plugins.plugin_manager.cache_clear()


@pytest.fixture(scope="session")
def tok():
    """The tiny causal-LM tokenizer (a chat template, ChatML end-of-turn)."""
    from adapterkit.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT model directory with its WordPiece tokenizer; read-only for tests."""
    from adapterkit.testing import save_tiny_bert_dir

    return save_tiny_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model directory (tied embeddings); read-only for tests."""
    from adapterkit.testing import save_tiny_llama_dir

    return save_tiny_llama_dir(tmp_path_factory.mktemp("llama"))
