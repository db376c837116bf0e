"""Shared test set-up: offline always, quiet logs, fixtures for tiny models and the repo root."""

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
