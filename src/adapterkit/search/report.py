"""A sweep's report: a row per trial (from the study), sweep.md, sweep.json and three plots.

    history.png      the selection metric of each trial, in order, and the best so far
    importance.png   each parameter's importance (Optuna's default importance evaluator)
    parameters.png   the selection metric against each parameter

Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapterkit import units
from adapterkit.comparison.report import _pyplot
from adapterkit.search import store
from adapterkit.search.space import Spec
from adapterkit.storage.atomic import write_json, write_text_atomic

ROW_FIGURES = (
    "steps",
    "best_step",
    "train_loss",
    "tokens_per_s",
    "peak_memory_bytes",
    "peak_memory_kind",
    "planned_memory_bytes",
    "wall_time_s",
    "returncode",
    "run_dir",
    "overrides",
)
DEFINITIONS = {
    "trial": "The trial's number in the study (0 first).",
    "status": "complete, pruned (stopped by the pruner), failed (the reason says why), refused "
    "(the plan says it cannot fit --budget; never started) or interrupted (the sweep stopped "
    "while it ran; its values ran again in a later trial).",
    "params": "The searched keys' values for this trial.",
    "value": "The selection metric on the eval data: of the trial's best evaluation (its best/) "
    "when complete, of its last evaluation when pruned.",
    "selected": "The trial chosen by the selection metric alone; its adapter is in best/.",
    "baseline": "The recipe's own values (queued as the first trial where the space holds them).",
    "rerun_of": "The interrupted trial whose values this trial ran again.",
    "reason": "Why the trial failed, was pruned or was refused.",
    "planned_memory_bytes": "The plan's peak for this trial (with --budget only).",
    "wall_time_s": "Seconds the trial's process ran: imports and loading too.",
}


def _intermediate(trial: Any) -> float | None:
    values = trial.intermediate_values
    return float(values[max(values)]) if values else None


def trial_row(trial: Any, keys: Sequence[str]) -> dict[str, Any]:
    """One trial as a row: its status, values, selection metric and figures."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        value = trial.value
    elif trial.state == TrialState.PRUNED:
        value = _intermediate(trial)
    else:
        value = None
    row = {
        "trial": trial.number,
        "status": store.status(trial),
        "selected": False,
        "params": {k: trial.params[k] for k in keys if k in trial.params},
        "value": value,
        "reason": attrs.get("reason"),
        "baseline": bool(attrs.get("baseline")),
        "rerun_of": attrs.get("rerun_of"),
    }
    return row | {key: attrs.get(key) for key in ROW_FIGURES}


def rows(study: Any, specs: Sequence[Spec]) -> list[dict[str, Any]]:
    """Every trial of the study, in order; an interrupted one names the trial that re-ran it."""
    keys = [s.key for s in specs]
    out = [trial_row(t, keys) for t in study.get_trials(deepcopy=False)]
    reruns = {r["rerun_of"]: r["trial"] for r in out if r["rerun_of"] is not None}
    for r in out:
        if r["status"] == store.INTERRUPTED and not r["reason"]:
            again = reruns.get(r["trial"])
            r["reason"] = "the sweep stopped while it ran" + (
                f"; its values ran again as trial {again}" if again is not None else ""
            )
    return sorted(out, key=lambda r: r["trial"])


# ---- sweep.md ------------------------------------------------------------------------------------


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(text: Any) -> str:
    return str(text or "").replace("\n", " ").replace("|", "\\|")


def _summary(doc: dict[str, Any]) -> list[str]:
    sel, rows_ = doc["selection"], doc["trials"]
    direction = "higher is better" if sel["higher_is_better"] else "lower is better"
    counts = {
        s: sum(r["status"] == s for r in rows_) for s in dict.fromkeys(r["status"] for r in rows_)
    }
    lines = [
        f"# Sweep of {doc['recipe']}",
        "",
        f"Selection: `{sel['metric']}` on the eval data ({direction}); the test data takes no "
        "part in it.",
        f"Trials: {len(rows_)} (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ").",
    ]
    best = doc["best"]
    if best is None:
        return [*lines, "Selected: none (no trial completed).", ""]
    values = ", ".join(f"{k}={_param(v)}" for k, v in best["params"].items())
    lines.append(
        f"Selected: trial {best['trial']} ({values}), {sel['metric']} {best['value']:.4f}."
    )
    if best.get("test_value") is not None:
        lines.append(
            f"Test: {sel['metric']} {best['test_value']:.4f} on {best['test_data']} (the selected "
            "adapter, scored once after the search)."
        )
    return [*lines, ""]


def markdown(doc: dict[str, Any]) -> str:
    """sweep.md: the summary, then one line per trial."""
    keys = list(doc["space"])
    metric = doc["selection"]["metric"]
    header = ["trial", "status", *keys, f"{metric} (eval)", "best step", "steps", "peak MiB"]
    header += ["planned MiB", "wall s", "reason"]
    lines = [*_summary(doc), "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in doc["trials"]:
        status = r["status"] + (", **selected**" if r["selected"] else "")
        status += ", recipe's values" if r["baseline"] else ""
        cells = [
            str(r["trial"]),
            status,
            *(_param(r["params"][k]) if k in r["params"] else "" for k in keys),
            _num(r["value"], ".4f"),
            _num(r["best_step"], "d"),
            _num(r["steps"], "d"),
            units.mib(r["peak_memory_bytes"]),
            units.mib(r["planned_memory_bytes"]),
            _num(r["wall_time_s"], ".1f"),
            _cell(r["reason"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- plots ---------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _label(doc: dict[str, Any]) -> str:
    sel = doc["selection"]
    return f"{sel['metric']} on eval ({'higher' if sel['higher_is_better'] else 'lower'} is better)"


def plot_history(doc: dict[str, Any], path: Path) -> None:
    """Each trial's selection metric by trial number; pruned ones apart; the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in doc["trials"] if r["status"] == store.COMPLETE and r["value"] is not None]
    pruned = [r for r in doc["trials"] if r["status"] == store.PRUNED and r["value"] is not None]
    if done:
        ax.scatter([r["trial"] for r in done], [r["value"] for r in done], label="complete")
        pick = max if doc["selection"]["higher_is_better"] else min
        best, xs, ys = None, [], []
        for r in done:
            best = r["value"] if best is None else pick(best, r["value"])
            xs.append(r["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        xs, ys = [r["trial"] for r in pruned], [r["value"] for r in pruned]
        ax.scatter(xs, ys, marker="x", color="tab:gray", label="pruned (last eval)")
    if done or pruned:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no trial with an eval figure", ha="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(_label(doc))
    ax.grid(alpha=0.3)
    _save(fig, path)


def importances(study: Any) -> tuple[dict[str, float], str | None]:
    """Optuna's parameter importances over the completed trials, or why there are none."""
    import warnings

    import optuna

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            return {}, str(exc) or type(exc).__name__
    # e.g. "Parameter importances will be equal" when too few trials tell them apart
    return values, "; ".join(str(w.message) for w in caught) or None


def plot_importance(values: dict[str, float], why_not: str | None, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.5 * max(1, len(values))))
    if values:
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (Optuna's default evaluator; they sum to 1)")
        if why_not:
            ax.set_title(why_not[:90], fontsize=8)
    else:
        text = f"no importances: {why_not or 'too few completed trials'}"
        ax.text(0.5, 0.5, text[:90], ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    _save(fig, path)


def plot_parameters(doc: dict[str, Any], specs: Sequence[Spec], path: Path) -> None:
    """The selection metric against each searched parameter, one panel each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(specs), figsize=(4.5 * len(specs), 4), squeeze=False)
    done = [r for r in doc["trials"] if r["status"] == store.COMPLETE and r["value"] is not None]
    for ax, spec in zip(axes[0], specs, strict=True):
        points = [(r["params"][spec.key], r["value"]) for r in done if spec.key in r["params"]]
        if spec.kind == "choice":
            labels = [str(c) for c in spec.args]
            xs = [labels.index(str(x)) for x, _ in points]
            ax.set_xticks(range(len(labels)), labels)
        else:
            xs = [x for x, _ in points]
            if spec.log_scale:
                ax.set_xscale("log")
        ax.scatter(xs, [y for _, y in points], color="tab:blue")
        ax.set_xlabel(spec.key)
        ax.set_ylabel(_label(doc))
        ax.grid(alpha=0.3)
    _save(fig, path)


def write_outputs(out: Path, doc: dict[str, Any], study: Any, specs: Sequence[Spec]) -> None:
    """sweep.json, sweep.md and the three plots in `out`."""
    values, why_not = importances(study)
    doc["importance"] = values
    write_json(out / "sweep.json", doc)
    write_text_atomic(out / "sweep.md", markdown(doc))
    plot_history(doc, out / "history.png")
    plot_importance(values, why_not, out / "importance.png")
    plot_parameters(doc, specs, out / "parameters.png")
