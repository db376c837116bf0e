"""`adapterkit inspect DIR`: what a run or adapter is, and where it can go, without its base's weights.

The report is adapterkit.export.inspection's (its docstring lists the `--json` keys); this module
only lays it out for a terminal.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

_SHOWN_TENSORS = 8
_WIDTH = 100
_TARGETS = (("peft", "peft"), ("vllm", "vLLM"), ("llama_cpp", "llama.cpp"), ("merge", "merge"))
_HEADLINE = ("eval_loss",)


@click.command("inspect")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable keys).")
def inspect(directory: Path, as_json: bool) -> None:
    """What the run or adapter in DIRECTORY is: strategy, task, base model, tensors, run figures,
    and whether plain peft, vLLM, llama.cpp and `adapterkit merge` can take it. Reads headers and
    configs only: no model weights are loaded."""
    from adapterkit.export.inspection import inspect as build_report

    report = build_report(directory)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(render(report)))


def render(report: dict[str, Any]) -> list[str]:
    """The report as short, aligned lines for a terminal."""
    lines = [_title(report)]
    lines += _row("strategy", report["strategy"]["name"], _options(report["strategy"]["options"]))
    task = report["task"]
    lines += _row("task", task["name"], _options(task["options"]))
    added = {k: v for k, v in task["manifest"].items() if task["options"].get(k, object()) != v}
    if added:  # what the task recorded beyond its options (label names, prompt format)
        lines += _row("", _options(added))
    lines += _base(report)
    lines += _row("versions", _versions(report["versions"]))
    lines += _tensors(report)
    files = ", ".join(f"{f['name']} ({_bytes(f['bytes'])})" for f in report["files"])
    lines += _row("files", files or "none")
    if report["run"] is not None:
        lines += _run(report["run"])
    lines.append("targets")
    for key, label in _TARGETS:
        lines += _target(label, report["targets"][key])
    return lines


def _title(report: dict[str, Any]) -> str:
    if report["kind"] == "run":
        what = "a training run (its final adapter)"
    elif report["best_of"]:
        what = f"the best adapter of the run {report['best_of']}"
    else:
        what = "an adapter"
    return f"{report['path']}: {what}"


def _row(label: str, *parts: str) -> list[str]:
    """`label` and `parts`, wrapped at _WIDTH columns under the text's own column."""
    text = "  ".join(p for p in parts if p)
    wrapped = textwrap.wrap(text, _WIDTH - 11, break_long_words=False, break_on_hyphens=False) or [
        ""
    ]
    return [f"{label if i == 0 else '':<10} {line}".rstrip() for i, line in enumerate(wrapped)]


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else f"<{len(text)} chars>"


def _options(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in options.items()) or "(no options)"


def _bytes(n: int | None) -> str:
    from adapterkit.units import human_bytes

    return "?" if n is None else human_bytes(n)


def _base(report: dict[str, Any]) -> list[str]:
    base = report["base_model"]
    fingerprint = str(base.get("fingerprint") or "")[:12]
    lines = _row("base", str(base["name"]), f"({base.get('dtype')}, fingerprint {fingerprint})")
    if base["resolves"]:
        same = "matches" if base["fingerprint_matches"] else "DIFFERS"
        lines += _row("", f"found here at {base['path']}; fingerprint {same}")
    elif base["resolves"] is False:
        lines += _row("", "NOT FOUND on this machine")
    if base["note"]:
        lines += _row("", base["note"])
    for link in base.get("chain") or []:
        lines += _row("", f"chain: {link.get('run')} ({link.get('strategy')}, {link.get('task')})")
    if report["task"]["model_class"]:
        lines += _row("model", report["task"]["model_class"])
    return lines


def _versions(versions: dict[str, dict[str, str | None]]) -> str:
    out = []
    for name, v in versions.items():
        here = v["installed"]
        differs = f" (here {here or 'not installed'})" if here != v["recorded"] else ""
        out.append(f"{name} {v['recorded']}{differs}")
    return ", ".join(out) or "not recorded"


def _tensors(report: dict[str, Any]) -> list[str]:
    totals, tensors = report["totals"], report["tensors"]
    dtypes = ", ".join(f"{d} x{n}" for d, n in totals["dtypes"].items())
    lines = _row(
        "tensors",
        f"{totals['count']} ({totals['parameters']:,} parameters, {_bytes(totals['bytes'])}; "
        f"{dtypes or 'none'}), file {_bytes(totals['file_bytes'])}",
    )
    width = max((len(t["name"]) for t in tensors[:_SHOWN_TENSORS]), default=0)
    for t in tensors[:_SHOWN_TENSORS]:
        shape = "x".join(str(d) for d in t["shape"]) or "scalar"
        lines.append(
            f"  {t['name']:<{width}}  {shape:>11}  {t['dtype']:<8} {_bytes(t['bytes']):>10}  "
            f"{t['kind']}"
        )
    if len(tensors) > _SHOWN_TENSORS:
        lines.append(f"  ... {len(tensors) - _SHOWN_TENSORS} more (--json lists every tensor)")
    if report["aliases"]:
        lines += _row("", f"tied: {_options(report['aliases'])}")
    return lines


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _evals(run: dict[str, Any]) -> str:
    keys = [*_HEADLINE, *([run["selection_metric"]] if run["selection_metric"] else [])]
    keys = list(dict.fromkeys(keys))
    out = []
    for which in ("final_eval", "best_eval"):
        figures = run.get(which) or {}
        shown = " ".join(f"{k} {_figure(figures[k])}" for k in keys if k in figures)
        if shown:
            step = (
                f" (step {run['best_step']})" if which == "best_eval" and run["best_step"] else ""
            )
            out.append(f"{which.removesuffix('_eval')} {shown}{step}")
    return ", ".join(out)


def _run(run: dict[str, Any]) -> list[str]:
    parts = []
    if run["steps"] is not None:
        parts.append(f"{run['steps']} steps")
    if run["train_loss"] is not None:
        parts.append(f"train_loss {_figure(run['train_loss'])}")
    lines = _row("run", ", ".join(parts + ([_evals(run)] if _evals(run) else [])) or "no figures")
    speed = []
    if run["tokens_per_s"] is not None:
        speed.append(f"{run['tokens_per_s']:,.0f} tokens/s")
    if run["peak_memory_bytes"] is not None:
        speed.append(f"peak memory {_bytes(run['peak_memory_bytes'])} ({run['peak_memory_kind']})")
    if run["precision"]:
        speed.append(f"{run['precision']} on {run['device']}")
    if speed:
        lines += _row("", ", ".join(speed))
    checkpoints = run["checkpoints"]
    kept = f"{len(checkpoints)} (latest {checkpoints[-1]})" if checkpoints else "none"
    lines += _row("", f"best/: {'yes' if run['best_dir'] else 'no'}; checkpoints/: {kept}")
    if run["note"]:
        lines += _row("", run["note"])
    return lines


def _target(label: str, verdict: dict[str, Any]) -> list[str]:
    word = {True: "yes", False: "no", None: "?"}[verdict["ok"]]
    lines = [f"  {label:<10} {word}"]
    for text, first in [
        *((r, "- ") for r in verdict["reasons"]),
        *((n, "") for n in verdict["notes"]),
    ]:
        lines += textwrap.wrap(
            text, _WIDTH, initial_indent=" " * 15 + first, subsequent_indent=" " * (15 + len(first)),
            break_long_words=False, break_on_hyphens=False,
        )  # fmt: skip
    return lines
