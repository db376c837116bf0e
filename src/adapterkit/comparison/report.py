"""The comparison's report: the Pareto front, the Markdown table and the two plots.

Pure functions of the rows `runs.run` produces (see runs.FIELDS); matplotlib is imported only
when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapterkit import units


def _usable(row: dict[str, Any], metric: str, memory: str) -> bool:
    if row.get("error"):
        return False
    values = (row.get(metric), row.get(memory))
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def pareto_front(
    rows: Sequence[dict[str, Any]],
    metric: str,
    higher_is_better: bool,
    memory: str = "peak_memory_bytes",
) -> list[dict[str, Any]]:
    """The rows no other row beats: memory at most as high and metric at least as good, one strictly.

    Failed rows and rows without both figures are left out. Identical rows do not dominate each
    other, so a tie on the front keeps both. Returned in order of increasing memory.
    """
    usable = [r for r in rows if _usable(r, metric, memory)]
    sign = 1.0 if higher_is_better else -1.0

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ma, mb = a[memory], b[memory]
        ga, gb = sign * a[metric], sign * b[metric]
        return ma <= mb and ga >= gb and (ma < mb or ga > gb)

    front = [r for r in usable if not any(dominates(o, r) for o in usable if o is not r)]
    return sorted(front, key=lambda r: (r[memory], -sign * r[metric]))


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _settings(row: dict[str, Any]) -> str:
    values = row.get("settings") or {}
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per run; memory in MiB; a failed run shows its reason in the last column; tuned
    runs (compare --tune) say the settings their sweep selected; with test data, the selected
    adapter's test figure."""
    metric = next((r["eval_metric"] for r in rows if r.get("eval_metric")), None) or "eval"
    tuned = any(r.get("settings") for r in rows)
    tested = any(r.get("test_value") is not None for r in rows)
    header = [
        "strategy",
        *(["settings (selected on eval)"] if tuned else []),
        "trainable",
        "trainable %",
        "adapter MiB",
        "peak MiB",
        "load peak MiB",
        "anon / file MiB",
        "tokens/s",
        "wall s",
        "train loss",
        metric,
        *([f"test {metric}"] if tested else []),
        "pareto",
        "error",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rss = (
            ""
            if r.get("rss_anon_bytes") is None
            else (f"{units.mib(r['rss_anon_bytes'])} / {units.mib(r.get('rss_file_bytes'))}")
        )
        error = (r.get("error") or "").replace("\n", " ").replace("|", "\\|")
        cells = [
            r["strategy"],
            *([_settings(r)] if tuned else []),
            _num(r.get("trainable_params"), ","),
            _num(r.get("trainable_percent"), ".3f"),
            units.mib(r.get("adapter_bytes")),
            units.mib(r.get("peak_memory_bytes")),
            units.mib(r.get("load_peak_memory_bytes")),
            rss,
            _num(r.get("tokens_per_s"), ".1f"),
            _num(r.get("wall_time_s"), ".1f"),
            _num(r.get("train_loss"), ".4f"),
            _num(r.get("eval_value"), ".4f"),
            *([_num(r.get("test_value"), ".4f")] if tested else []),
            "yes" if r.get("pareto") else "",
            error,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported on demand."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Eval metric against peak memory, one labelled point per successful run, front joined."""
    plt = _pyplot()
    metric = next((r["eval_metric"] for r in rows if r.get("eval_metric")), None)
    higher = bool(next((r["higher_is_better"] for r in rows if r.get("eval_metric")), False))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    usable = [r for r in rows if metric and _usable(r, "eval_value", "peak_memory_bytes")]
    for r in usable:
        x, y = r["peak_memory_bytes"] / 2**20, r["eval_value"]
        ax.scatter([x], [y], color="tab:blue", zorder=3)
        ax.annotate(r["strategy"], (x, y), textcoords="offset points", xytext=(5, 5))
    front = pareto_front(usable, "eval_value", higher) if usable else []
    if front:
        xs = [r["peak_memory_bytes"] / 2**20 for r in front]
        ys = [r["eval_value"] for r in front]
        ax.plot(xs, ys, color="tab:red", marker="o", linestyle="--", label="Pareto front", zorder=4)
        ax.legend()
    if not usable:
        ax.text(
            0.5, 0.5, "no successful run with an eval metric", ha="center", transform=ax.transAxes
        )
    kind = next((r["peak_memory_kind"] for r in usable if r.get("peak_memory_kind")), None)
    ax.set_xlabel(f"peak memory, MiB ({kind or 'training steps'})")
    direction = "higher is better" if higher else "lower is better"
    ax.set_ylabel(f"{metric or 'eval metric'} ({direction})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _losses(log_path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if "loss" in entry and "step" in entry:
                steps.append(int(entry["step"]))
                losses.append(float(entry["loss"]))
    return steps, losses


def plot_losses(run_dirs: dict[str, Path], path: Path) -> None:
    """Every run's training loss per step (from its log.jsonl) on one chart."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for name, run_dir in run_dirs.items():
        steps, losses = _losses(Path(run_dir) / "log.jsonl")
        if steps:
            ax.plot(steps, losses, marker="." if len(steps) < 50 else None, label=name)
            drawn += 1
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no successful run", ha="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss per target token")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
