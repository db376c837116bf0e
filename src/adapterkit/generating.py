"""Generating for many prompts: the work behind `adapterkit generate` / `predict` and
`api.generate`.

Prompts come from a list, or a file (`read_prompts`): plain text is one prompt per non-blank line,
as written; a `.jsonl` file holds one JSON object per line with a string "prompt" (for prompts that
span lines; other keys are ignored). The model is an adapter (its task and prompt format from the
manifest) or a bare base model prompted as a registered task. The task generates them in batches
(`adapterkit.task.generate_batch`), greedy or sampled as the `sampling.Settings` say, and the
outputs keep the prompts' order. `predict` generates for the rows of a data file in the task's
format (`adapterkit.task.read_prompts`, `generate_rows`), and predicts labels for a task that does
not generate. Outputs go to JSON lines (`write_jsonl`), written under a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit import task as task_mod
from adapterkit.errors import DataError, UserError

if TYPE_CHECKING:
    from torch import nn

    from adapterkit.sampling import Settings
    from adapterkit.task import Task


# ---- prompts in, outputs out --------------------------------------------------------------------


def read_prompts(path: Path) -> list[str]:
    """The prompts of a file: one per non-blank line, or per JSONL object (`.jsonl`); a
    DataError for a missing file, a directory, a bad line or no prompt at all."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; give a file with one prompt per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from exc
    return parse_prompts(text, str(path), jsonl=path.suffix.lower() == ".jsonl")


def parse_prompts(text: str, where: str, jsonl: bool = False) -> list[str]:
    """The prompts in `text` (from `where`, a file name or "<stdin>"), as `read_prompts` reads
    them; a DataError naming `where` and the line for a bad one, or when there is none."""
    prompts = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        prompts.append(_jsonl_prompt(line, where, lineno) if jsonl else line)
    if not prompts:
        raise DataError(f"{where}: no prompts (it is empty); give one prompt per line")
    return prompts


def _jsonl_prompt(line: str, where: str, lineno: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
        ) from exc
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise DataError(f'{where}:{lineno}: expected a JSON object with a string "prompt"')
    return record["prompt"]


def check_out(path: Path) -> None:
    """Refuse an output path that cannot take a file, before any model loads: a directory, or
    one in a directory that does not exist. An existing file is replaced (as `>` would)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; --out takes the name of a file (JSON lines)")
    if not path.parent.is_dir():
        raise UserError(f"{path}: the directory {path.parent} does not exist; create it first")


def jsonl_text(rows: Sequence[dict[str, Any]]) -> str:
    """One JSON object a line (UTF-8 as is)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """`rows` as JSON lines in `path`, written under a temporary name and renamed into place."""
    from adapterkit.storage.atomic import write_text_atomic

    check_out(path)
    write_text_atomic(Path(path), jsonl_text(rows))


# ---- the model: an adapter, or a bare base model as a task ---------------------------------------


@dataclasses.dataclass
class _Bound:
    task: Task
    options: Any
    model: nn.Module
    tokenizer: Any
    dtype: str | None  # the autocast dtype the adapter trained in


def _bind(adapter: Path | None, model: str | None, task: str | None) -> _Bound:
    from adapterkit import api

    if adapter is not None:
        loaded = api.load(Path(adapter))
        return _Bound(
            loaded.task,
            loaded.task_options,
            loaded.model,
            loaded.tokenizer,
            loaded.compute_dtype,
        )
    if model is None:
        raise TypeError("generate() needs an adapter or a model")
    from adapterkit import options as opts
    from adapterkit.storage import sources

    chosen = generating_task(task)
    t_opts, _ = opts.parse(type(chosen).Options, {}, "task")
    m, tok = chosen.load_model(sources.resolve(model), t_opts, {})
    m.eval()
    return _Bound(chosen, t_opts, m, tok, None)


def generating_task(name: str | None) -> Task:
    """The task `name`, or else the one registered task that generates, for a bare base model."""
    from adapterkit.plugins import load_registry

    registry = load_registry()
    if name is not None:
        return registry.task(name)
    classes = registry.classes["task"]
    names = [n for n in registry.names("task") if task_mod.generates(classes[n])]
    if len(names) != 1:
        raise UserError(
            "a base model without an adapter: say which task to prompt it as with --task "
            f"(tasks that generate: {', '.join(names) or 'none'})"
        )
    return registry.task(names[0])


# ---- generating ---------------------------------------------------------------------------------


def generate(
    prompts: Sequence[str],
    adapter: Path | None,
    model: str | None,
    task: str | None,
    settings: Settings,
) -> list[str]:
    """The output for each prompt, in order, from an adapter or a bare `model` prompted as `task`
    (optional when one registered task generates). Sampling without a seed draws one."""
    from adapterkit.training import precision

    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompts to generate for")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be strings")
    settings = settings.resolved()
    bound = _bind(adapter, model, task)
    if not task_mod.generates(bound.task):
        raise UserError(
            f"task '{bound.task.name}' does not generate text; use `adapterkit predict`"
        )
    with precision.autocast(bound.model, bound.dtype):
        return task_mod.generate_batch(
            bound.task, bound.model, bound.tokenizer, prompts, bound.options, settings
        )


def predict(adapter: Path, data: Path, settings: Settings) -> list[dict[str, Any]]:
    """Per row of `data` (in the adapter's task format): the generated output with the row's
    prompt and references for a task that generates, else its prediction (label, tags)."""
    from adapterkit import api

    data = Path(data)
    if data.is_dir():
        raise DataError(f"{data}: is a directory; give a data file in the task's format")
    if not data.exists():
        raise DataError(f"{data}: file not found; give a data file in the task's format")
    settings = settings.resolved()
    loaded = api.load(Path(adapter))
    task, t_opts = loaded.task, loaded.task_options
    rows = task_mod.read_prompts(task, Path(data), t_opts)
    if not rows:
        raise UserError(f"{data}: no rows to predict")
    with loaded.autocast():
        return task_mod.generate_rows(task, loaded.model, loaded.tokenizer, rows, t_opts, settings)
