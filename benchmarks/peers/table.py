"""results.md: the medians table per strategy, every rep, each row's settings, the rules used."""

from __future__ import annotations

from typing import Any

GIB = 2**30
NAMES = {
    "adapterkit": "adapterkit (shipped recipe)",
    "tutorial": "tutorial (Trainer + peft, defaults)",
    "trl": "TRL SFTTrainer (tuned)",
    "hf_tuned": "HF Trainer (tuned, padding-free)",
    "hf_grouped": "HF Trainer (tuned, group_by_length)",
}


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value / GIB:.2f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _loss(row: dict, ours: dict | None) -> str:
    text = _f(row["first_step_loss"], ".5f")
    if ours is not None and row is not ours and ours["first_step_loss"]:
        rel = row["first_step_loss"] / ours["first_step_loss"] - 1
        text += f" ({rel:+.1e})"
    return text


def _medians(rows: list[dict]) -> list[str]:
    ours = next((r for r in rows if r["peer"] == "adapterkit"), None)
    lines = [
        "| row | numerics | valid | tok/s | tok/s, steps 2+ | peak GiB (training) | max RSS GiB "
        "(process) | first-step loss (rel. to adapterkit) | final train loss | eval loss | MFU | "
        "MFU, steps 2+ | tok/s ÷ tutorial | peak ÷ tutorial | tok/s ÷ best peer | peak ÷ best peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["tokens_per_s_range"]
        cells = [
            NAMES.get(r["peer"], r["peer"]), r["numerics"], "yes" if r["valid"] else "**no**",
            f"{_f(r['tokens_per_s'])} ({low:.0f}–{high:.0f})", _f(r["tokens_per_s_after_first"]),
            _gib(r["peak_memory_bytes"]), _gib(r["max_rss_bytes"]), _loss(r, ours),
            _f(r["final_train_loss"], ".4f"), _f(r["eval_loss"], ".4f"), _pct(r["mfu"]),
            _pct(r["mfu_after_first"]), _x(r.get("tokens_per_s_vs_tutorial")),
            _x(r.get("peak_memory_bytes_vs_tutorial")), _x(r.get("tokens_per_s_vs_best_peer")),
            _x(r.get("peak_memory_bytes_vs_best_peer")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _reps(runs: list[dict]) -> list[str]:
    lines = [
        "| row | rep | tok/s | tok/s, steps 2+ | peak GiB | max RSS GiB | first-step loss | "
        "|rel. diff| to fp32 reference | final loss | eval loss | wall s | other CPU load | valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cells = [
            r["peer"], str(r["rep"]), _f(r["tokens_per_s"]), _f(r["tokens_per_s_after_first"]),
            _gib(r.get("peak_memory_bytes")), _gib(r.get("max_rss_bytes")),
            _f(r["first_step_loss"], ".5f"),
            _f((r.get("first_step_rel_diff") or {}).get("the fp32 reference"), ".1e"),
            _f(r["final_train_loss"], ".4f"),
            _f(r.get("eval_loss"), ".4f"), _f(r.get("wall_s"), ".0f"), _pct(r.get("other_cpu_load")),
            "yes" if r["valid"] else "no: " + "; ".join(r["invalid_reasons"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _header(result: dict[str, Any]) -> list[str]:
    p, peaks, ref = result["protocol"], result["peaks"], result.get("reference") or {}
    flops = ", ".join(f"{k} {v:.3f} GFLOP" for k, v in result["flops"]["per_token_gflop"].items())
    return [
        "# adapterkit against the trainers users pick instead (CPU)",
        "",
        f"`{result['command']}`",
        "",
        f"SmolLM2-135M, batch {p['batch_size']}, max length {p['max_length']}, the first "
        f"{p['rows']} shipped instruction rows ({result['shared']['n_examples']} examples), "
        f"{p['max_steps']} steps, {p['reps']} reps in alternating fresh processes, "
        f"{peaks['threads']} threads. The same token ids and loss mask for every row; "
        f"{sum(result['shared']['step_tokens']):,} real tokens trained per run; eval: the first "
        f"{p['eval_rows']} eval rows ({result['shared']['eval_targets']:,} target tokens).",
        "",
        f"Matmul peak measured in this run: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 "
        f"{peaks['bf16']:.0f} GFLOP/s (best of the calibrations before and after the runs). "
        f"Model FLOPs per real token: {flops}; fp32 reference first-step loss: "
        f"{_f(ref.get('first_step_loss'), '.5f')}.",
        "",
        *_busy(result["runs"], result["calibrations"]),
    ]


BUSY = 0.10


def _busy(runs: list[dict], calibrations: list[dict]) -> list[str]:
    """A warning when other processes used a noticeable share of the CPU during some runs."""
    loads = [(f"{r['strategy']}/{r['peer']} rep {r['rep']}", r.get("other_cpu_load")) for r in runs]
    loads += [
        (f"matmul calibration {i + 1}", c.get("other_cpu_load")) for i, c in enumerate(calibrations)
    ]
    busy = [name for name, load in loads if (load or 0.0) > BUSY]
    if not busy:
        return []
    return [
        f"**The machine was not idle**: other processes used over {BUSY:.0%} of the CPU during "
        f"{', '.join(busy)} (column 'other CPU load'); those speeds (and peaks) are not to be "
        "trusted.",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    lines = _header(result)
    for strategy in dict.fromkeys(r["strategy"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["strategy"] == strategy]
        runs = [r for r in result["runs"] if r["strategy"] == strategy]
        lines += [f"## {strategy}", "", "Medians over the reps (tok/s: min–max in brackets).", ""]
        lines += [*_medians(rows), "", "Every rep:", "", *_reps(runs), ""]
    if result["goals"]:
        lines += ["## The issue's goals (adapterkit's medians)", ""]
        lines += [
            f"- {'PASS' if g['pass'] else 'FAIL'}: {g['goal']} (measured {g['measured']:.3g})"
            + ("" if g["valid"] else "; **adapterkit's row is invalid: not comparable**")
            for g in result["goals"]
        ]
        lines.append("")
    lines += ["## Settings each row ran with", ""]
    for row in result["rows"]:
        lines.append(f"- {row['strategy']} / {row['peer']}: `{row['settings']}`")
    lines += ["", "## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in result["definitions"].items()]
    return "\n".join(lines) + "\n"
