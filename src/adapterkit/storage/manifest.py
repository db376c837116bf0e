"""An adapter's manifest (`adapterkit.json`), as a run writes it; `adapter_format` reads and
checks it. Nothing here knows a strategy or a task by name: the task adds its own fields."""

from __future__ import annotations

import contextlib
import platform
from typing import TYPE_CHECKING, Any

from adapterkit import __version__
from adapterkit import options as opts
from adapterkit.storage import sources

if TYPE_CHECKING:
    from adapterkit.recipe import Recipe
    from adapterkit.task import Task


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"adapterkit": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "accelerate"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def build(recipe: Recipe, source: sources.ModelSource, task: Task, tokenizer: Any) -> dict:
    """The manifest (`adapterkit.json`) of a run of `recipe`: strategy and options, task, its
    options and what it needs to be used again (labels, prompt format), the base model and its
    fingerprint, and the library versions."""
    return {
        "format": "adapterkit-adapter",
        "format_version": 1,
        "strategy": {
            "name": recipe.strategy.name,
            "options": opts.as_dict(recipe.strategy.options),
        },
        "task": {
            "name": recipe.task.name,
            "options": opts.as_dict(recipe.task.options),
            **task.manifest(recipe.task.options, tokenizer),
        },
        "base_model": {
            "name": recipe.model.name,
            "fingerprint": sources.fingerprint(source),
            "gguf_sha256": source.gguf_sha256,
            "dtype": recipe.model.dtype,
            "trust_remote_code": recipe.model.trust_remote_code,
            **({"chain": list(source.chain)} if source.chain else {}),
        },
        "versions": versions(),
    }
