"""results.md of the encoder benchmark: the medians, every rep, the goal, settings, definitions."""

from __future__ import annotations

from typing import Any

GIB = 2**30
BUSY = 0.10
NAMES = {
    "adapterkit": "adapterkit (shipped recipe)",
    "hf_trainer": "HF Trainer + peft (group_by_length, bf16 autocast, fp32 base)",
    "hf_trainer_bf16_base": "HF Trainer + peft (group_by_length, bf16 autocast, bf16 base)",
}


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value / GIB:.2f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _medians(rows: list[dict]) -> list[str]:
    lines = [
        "| row | numerics | valid | tok/s | tok/s, steps 2+ | padding | peak GiB (training) | "
        "max RSS GiB (process) | first-step loss | final train loss | eval loss | accuracy "
        "(before → after) | MFU | MFU, steps 2+ | adapterkit tok/s ÷ row's | adapterkit peak ÷ "
        "row's |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["tokens_per_s_range"]
        name = NAMES.get(r["peer"], str(r["peer"])) + (
            " **(best peer)**" if r["is_best_peer"] else ""
        )
        cells = [
            name, r["numerics"], "yes" if r["valid"] else "**no**",
            f"{_f(r['tokens_per_s'])} ({low:.0f}–{high:.0f})", _f(r["tokens_per_s_after_first"]),
            _pct(r["padding_share"]), _gib(r["peak_memory_bytes"]), _gib(r["max_rss_bytes"]),
            _f(r["first_step_loss"], ".5f"), _f(r["final_train_loss"], ".4f"),
            _f(r["eval_loss"], ".4f"),
            f"{_f(r['initial_accuracy'], '.3f')} → {_f(r['accuracy'], '.3f')}",
            _pct(r["mfu"]), _pct(r["mfu_after_first"]),
            _x(r["adapterkit_tokens_per_s_ratio"]), _x(r["adapterkit_peak_memory_bytes_ratio"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _reps(runs: list[dict]) -> list[str]:
    lines = [
        "| row | rep | tok/s | tok/s, steps 2+ | peak GiB | max RSS GiB | first-step loss | "
        "rel. diff to fp32 reference | final loss | eval loss | accuracy | wall s | other CPU "
        "load | valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cells = [
            r["peer"], str(r["rep"]), _f(r["tokens_per_s"]), _f(r["tokens_per_s_after_first"]),
            _gib(r.get("peak_memory_bytes")), _gib(r.get("max_rss_bytes")),
            _f(r["first_step_loss"], ".5f"), _f(r.get("first_step_rel_diff"), ".1e"),
            _f(r["final_train_loss"], ".4f"), _f(r.get("eval_loss"), ".4f"),
            _f(r.get("accuracy"), ".3f"), _f(r.get("wall_s"), ".0f"), _pct(r.get("other_cpu_load")),
            "yes" if r["valid"] else "no: " + "; ".join(r["invalid_reasons"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _busy(runs: list[dict], calibrations: list[dict]) -> list[str]:
    loads = [(f"{r['peer']} rep {r['rep']}", r.get("other_cpu_load")) for r in runs]
    loads += [(f"calibration {i + 1}", c.get("other_cpu_load")) for i, c in enumerate(calibrations)]
    busy = [name for name, load in loads if (load or 0.0) > BUSY]
    if not busy:
        return []
    return [
        f"**The machine was not idle**: other processes used over {BUSY:.0%} of the CPU during "
        f"{', '.join(busy)} (column 'other CPU load'); those speeds (and peaks) are not to be "
        "trusted.",
        "",
    ]


def _header(result: dict[str, Any]) -> list[str]:
    p, peaks, shared = result["protocol"], result["peaks"], result["shared"]
    construction = result["reference"]["construction"]
    return [
        "# adapterkit against the HF Trainer script: MiniLM SST-2 LoRA (CPU)",
        "",
        f"`{result['command']}`",
        "",
        f"`{p['recipe']}` ({p['numbers']['model']}, batch {p['numbers']['batch_size']}, max "
        f"length {p['numbers']['max_length']}), the first {p['rows']} training rows after the "
        f"recipe's holdout: one epoch, {p['numbers']['max_steps']} steps, "
        f"{sum(shared['lengths']):,} real tokens; eval: the first {shared['eval_rows']} holdout "
        f"rows. {p['reps']} reps in alternating fresh processes, {peaks['threads']} threads. "
        "Every row trains adapterkit's token ids, each example once, in its own length-grouped "
        "order.",
        "",
        f"Matmul peak measured in this run: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 "
        f"{peaks['bf16']:.0f} GFLOP/s. Model FLOPs per real token: "
        f"{result['flops']['per_token'] / 1e6:.1f} MFLOP. The peer script's initial model is "
        f"{'bit-identical to' if construction['identical'] else '**not** identical to'} "
        f"adapterkit's ({construction['trainable_params']:,} trainable parameters).",
        "",
        *_busy(result["runs"], result["calibrations"]),
    ]


def markdown(result: dict[str, Any]) -> str:
    lines = _header(result)
    lines += ["Medians over the reps (tok/s: min–max in brackets).", ""]
    lines += [*_medians(result["rows"]), "", "Every rep:", "", *_reps(result["runs"]), ""]
    g = result.get("goal")
    if g:
        lines += ["## The issue's goal (adapterkit's medians)", ""]
        measured = "–" if g["measured"] is None else f"{g['measured']:.2f}×"
        lines.append(
            f"- {'PASS' if g['pass'] else 'FAIL'}: {g['goal']} (against {g['against']}: "
            f"{measured}; peak memory {_x(g['peak_ratio'])})"
            + ("" if g["valid"] else "; **a row is invalid: not comparable**")
        )
        lines.append("")
    lines += ["## Settings each row ran with", ""]
    lines += [f"- {row['peer']}: `{row['settings']}`" for row in result["rows"]]
    lines += ["", "## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in result["definitions"].items()]
    return "\n".join(lines) + "\n"
