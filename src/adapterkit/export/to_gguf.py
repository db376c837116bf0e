"""`adapterkit export --format gguf`: merge an adapter, write the GGUF, verify it, then publish.

    report = export_gguf(Path("runs/x"), Path("out/x.gguf"), type="q8_0", ollama=True)

Nothing is visible under the real names until the file has been read back and matched: the GGUF
is written under a hidden temporary name beside `--out`, verified there, and renamed into place;
then `<out>.verify.json` and (with `--ollama`) the `Modelfile` are written atomically. A file that
fails verification is deleted (exit 2) unless `force`, which keeps it and records the failure.

The held-out rows are the run's eval rows (or `data`), encoded by the adapter's task, plus
`gguf_check.sample_texts` (plain text, digits, code, special tokens, a rendered chat); a run without
eval data is verified on the sample texts alone, and the report says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterkit.errors import GGUFError, MergeError
from adapterkit.export import gguf as writer
from adapterkit.export.gguf_check import failure_message, verify_gguf
from adapterkit.storage.atomic import fsync_dir, fsync_file, write_json, write_text_atomic


@dataclass
class Request:
    """What to write: the file, its tensor type, a Modelfile or not, keep a failed file or not;
    `rows` are extra held-out token rows, `info` goes into the report (its "adapter" names the
    model in errors, its "name" becomes the GGUF's general.name)."""

    out: Path
    type: str = "f16"
    ollama: bool = False
    force: bool = False
    rows: list[list[int]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def verify_path(out: Path) -> Path:
    """Where the verification report of `out` goes: `<out>.verify.json` beside it."""
    return out.with_name(out.name + ".verify.json")


def modelfile_path(out: Path) -> Path:
    return out.with_name("Modelfile")


def export_gguf(
    adapter: Path,
    out: Path,
    *,
    type: str = "f16",
    ollama: bool = False,
    force: bool = False,
    data: Path | None = None,
    max_rows: int = 32,
) -> dict[str, Any]:
    """Merge `adapter` into its base (`export.merge.merged_model`) and export it as GGUF at `out`;
    returns the verification report (also written to `<out>.verify.json`)."""
    from adapterkit.export.adapted import plugins_of
    from adapterkit.export.merge import merged_model

    adapter = Path(adapter)
    request = Request(Path(out), type, ollama, force)
    check_request(request)
    found = plugins_of(adapter)
    writer.check_exportable(_base_config(found), what=str(adapter))  # before the merge loads it
    held_out, where = _held_out(found, data, max_rows)
    started = time.perf_counter()
    merged = merged_model(adapter)
    examples = merged.task.encode(held_out, merged.tokenizer, merged.task_options)
    request.rows = [list(e["input_ids"]) for e in examples if e.get("input_ids")]
    base = merged.manifest["base_model"]["name"]
    request.info = {
        "adapter": str(adapter),
        "name": f"{Path(base).name} + {adapter.name}",
        "held_out": where or "none: the run has no eval data (pass --data); sample texts only",
        "merge_seconds": round(time.perf_counter() - started, 3),
    }
    return export_model_gguf(merged.model, merged.tokenizer, request)


def export_model_gguf(model: Any, tokenizer: Any, request: Request) -> dict[str, Any]:
    """Write, verify and publish `model` + `tokenizer` as `request.out` (with its report, and its
    Modelfile when asked); returns the report."""
    check_request(request)
    writer.check_model(model, what=str(request.info.get("adapter", "the model")))
    modelfile_text = None
    if request.ollama:  # before any writing: an untranslatable template must not cost an export
        from adapterkit.export.ollama import modelfile

        modelfile_text = modelfile(request.out.name, tokenizer)
    report = {**request.info, **_write_and_verify(model, tokenizer, request)}
    write_json(verify_path(request.out), report)
    if modelfile_text is not None:
        write_text_atomic(modelfile_path(request.out), modelfile_text)
    fsync_dir(request.out.parent)
    return report


def check_request(request: Request) -> None:
    """GGUFError for a type not offered, an --out that is not a new .gguf file in an existing
    directory, or a report/Modelfile already beside it."""
    out = request.out
    if request.type not in writer.TYPES:
        raise GGUFError(f"--type {request.type}: not one of {', '.join(writer.TYPES)}")
    if out.suffix.lower() != ".gguf" and not out.is_dir():
        raise GGUFError(f"{out}: --out must name a .gguf file")
    companions = [verify_path(out)] + ([modelfile_path(out)] if request.ollama else [])
    writer.check_out_path(out, *companions)


def _base_config(found: Any) -> Any:
    """The adapter's base model config (no weights), to refuse a non-Llama before merging."""
    from adapterkit.export.adapted import base_source
    from adapterkit.storage import sources

    return sources.load_config(base_source(found))


def _held_out(found: Any, data: Path | None, max_rows: int) -> tuple[list[dict], str | None]:
    """The run's eval rows (or `data`'s), as `export.verify` reads them for a merge; none (and
    no error) when the run kept no eval data and no `data` was given."""
    from adapterkit.export import verify

    try:
        return verify.held_out_rows(found, data, max_rows)
    except MergeError:  # no recipe.yaml, or a run without eval data
        if data is not None:
            raise
        return [], None


def _write_and_verify(model: Any, tokenizer: Any, request: Request) -> dict[str, Any]:
    """Write to a temporary sibling, verify it, rename it to `out`; the report."""
    out = request.out
    tmp = writer.tmp_sibling(out)
    try:
        started = time.perf_counter()
        try:
            written = writer.write_gguf(
                model, tokenizer, tmp, request.type, name=request.info.get("name")
            )
        except GGUFError as exc:  # a tokenizer or layout it cannot carry: say whose
            raise GGUFError(f"{request.info.get('adapter', 'the model')}: {exc}") from exc
        write_s = time.perf_counter() - started
        report = verify_gguf(tmp, model, tokenizer, request.type, rows=request.rows)
        if not report["passed"] and not request.force:
            raise GGUFError(failure_message(out, report))
        report = {
            "format": "gguf",
            "file": out.name,
            "bytes": tmp.stat().st_size,
            "pre_tokenizer": written.pre_tokenizer,
            "tensor_types": written.type_counts(),
            "q8_0_fallbacks": written.fallbacks,
            **report,
            "forced": not report["passed"],
            "seconds": {
                "write": round(write_s, 3),
                "verify": round(time.perf_counter() - started - write_s, 3),
            },
        }
        fsync_file(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report
