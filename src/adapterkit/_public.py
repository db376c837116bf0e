"""The Python API at the package's top level, one function per CLI command.

    import adapterkit

    metrics = adapterkit.train("recipes/smollm2/lora.yaml", ["train.max_steps=20"], out="runs/try")
    loaded = adapterkit.load("runs/try")                 # .model, .tokenizer, ready for inference
    adapterkit.evaluate("runs/try", "data/instructions/eval.jsonl")
    adapterkit.merge("runs/try", "runs/try-merged")       # a plain Hugging Face model directory

A recipe is a file or a mapping of the same five sections (its data paths then relative to the
working directory). Each function takes the CLI command's options as keyword arguments and returns
what the command prints, as data. Heavy libraries load on the first call, so `import adapterkit`
stays light.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapterkit.api import Loaded

RecipeLike = str | Path | Mapping[str, Any]


def _resolve(recipe: RecipeLike, overrides: Sequence[str]) -> Any:
    from adapterkit.recipe import resolve

    return resolve(recipe if isinstance(recipe, Mapping) else Path(recipe), list(overrides))


def _default_out(recipe: RecipeLike, prefix: str = "") -> Path:
    stem = "recipe" if isinstance(recipe, Mapping) else Path(recipe).stem
    return Path("runs") / f"{prefix}{stem}"


def train(
    recipe: RecipeLike,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """`adapterkit train`: fine-tune as `recipe` says (plus `overrides`, section.key=value);
    returns the run's metrics (metrics.json). `out` defaults to runs/<recipe name>."""
    from adapterkit import api

    resolved = _resolve(recipe, overrides)
    out_dir = Path(out) if out is not None else _default_out(recipe)
    return api.train(resolved, out_dir, progress=progress, overwrite=overwrite, resume=resume)


def load(
    adapter: str | Path, *, base: str | None = None, trust_remote_code: bool = False
) -> Loaded:
    """A trained adapter on its base model, in eval mode: `.model`, `.tokenizer`, `.task`,
    `.manifest`; `with loaded.autocast():` runs it in the precision it trained in."""
    from adapterkit import api

    return api.load(Path(adapter), base=base, trust_remote_code=trust_remote_code)


def evaluate(adapter: str | Path, data: str | Path, *, batch_size: int = 8) -> dict[str, Any]:
    """`adapterkit eval`: the task's metrics for `adapter` on a data file in the task's format."""
    from adapterkit import api

    return api.evaluate(Path(adapter), Path(data), batch_size=batch_size)


def predict(
    adapter: str | Path, data: str | Path, *, batch_size: int = 32, **options: Any
) -> list[dict[str, Any]]:
    """`adapterkit predict`: one prediction per row of `data` (for a task that generates, its
    output; `max_new_tokens`, `temperature`, `top_p`, `seed` as keywords)."""
    from adapterkit import api

    return api.predict(Path(adapter), Path(data), batch_size=batch_size, **options)


def generate(prompt: Any, **options: Any) -> Any:
    """`adapterkit generate`: the answer to `prompt` (`adapter=DIR` or `model=NAME`, and the
    command's other options as keywords)."""
    from adapterkit import api

    if options.get("adapter") is not None:
        options["adapter"] = Path(options["adapter"])
    return api.generate(prompt, **options)


def merge(adapter: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """`adapterkit merge`: write base + adapter as one plain Hugging Face model directory, verified
    against the adapter; returns the verification report (also `out/verify.json`)."""
    from adapterkit.export import merge as merging

    return merging.merge(Path(adapter), Path(out), **options)


def plan(
    recipe: RecipeLike,
    strategies: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    device: str | None = None,
) -> list[Any]:
    """`adapterkit plan`: the training memory of `recipe` per strategy (its own by default), from
    the model's config alone; `device` cpu or cuda (default: cuda if present)."""
    from adapterkit.api import quiet_known_notices
    from adapterkit.planning import memory

    quiet_known_notices()
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        from adapterkit.errors import UserError

        raise UserError(f"device: expected cpu or cuda, got {device!r}")
    resolved = _resolve(recipe, overrides)
    return memory.from_recipe(resolved, list(strategies) if strategies else None, device)


def compare(
    recipe: RecipeLike,
    strategies: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    *,
    memory_limit: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """`adapterkit compare`: train `recipe` once per strategy (every registered one by default),
    each in its own process; returns the rows (also written to `out`)."""
    from adapterkit.comparison import runs

    if strategies is None:
        from adapterkit.plugins import load_registry

        strategies = load_registry().names("strategy")
    out_dir = Path(out) if out is not None else _default_out(recipe, "compare-")
    if not isinstance(recipe, Mapping):
        return runs.run(Path(recipe), strategies, list(overrides), out_dir, progress, memory_limit)
    with tempfile.TemporaryDirectory(prefix="adapterkit-recipe-") as tmp:
        path = _recipe_file(recipe, Path(tmp))
        return runs.run(path, strategies, list(overrides), out_dir, progress, memory_limit)


def _recipe_file(recipe: Mapping[str, Any], folder: Path) -> Path:
    """`recipe` as a file the child processes can read: resolved (defaults filled in, data paths
    absolute) and written under `folder`."""
    import yaml

    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(_resolve(recipe, ()).to_dict(), sort_keys=False))
    return path


def sweep(
    recipe: RecipeLike, space: Sequence[str] | Mapping[str, str], **options: Any
) -> dict[str, Any]:
    """`adapterkit sweep`: search `space` (KEY=SPEC items) with Optuna, each trial its own run,
    selecting on the eval data only; returns sweep.json (`trials=` and `out=` are required)."""
    from adapterkit.search.run import sweep as run_sweep

    return run_sweep(recipe, space, **options)
