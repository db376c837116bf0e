"""Verifying a merged model from its files: plain transformers against base + adapter.

The merged directory is loaded back with the `AutoModelFor...` class its config's `architectures`
names (no adapterkit code in the way), and run beside base + adapter on the same held-out batches:
the run's eval data (`data.eval`, or the `data.holdout` slice of its training file, as in
recipe.yaml), or `--data FILE`, at most `max_rows` rows. Per batch the task's logits
(`Task.logits`: one row per real position) give

    max_abs_logit_diff   the largest |merged - reference| over every logit
    mean_kl              KL(reference || merged) of the softmax at each position, averaged
    metric               the task's selection metric (`task.evaluate`) on both

and a tolerance per precision decides pass or fail. The precision is the least precise of the
written dtype and the base the reference computes in (a bf16 base computes in bf16 whatever the
export): max |dlogit| <= relative x max(1, max |reference logit|), and mean KL <= its bound.
Non-finite figures fail. See docs/merge.md for the figures these bounds were set from.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import DataError, MergeError, UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.api import Loaded
    from adapterkit.export.adapted import Plugins


@dataclass(frozen=True)
class Tolerance:
    """max |dlogit| <= relative x max(1, logit scale); mean KL <= mean_kl."""

    relative: float
    mean_kl: float


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(relative=1e-4, mean_kl=1e-6),
    "float16": Tolerance(relative=3e-2, mean_kl=2e-3),
    "bfloat16": Tolerance(relative=1.5e-1, mean_kl=2e-2),
}
"""The tolerance of each comparison precision (most precise first)."""

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BATCH_SIZE = 8


def precision(dtype: str, reference_dtype: str) -> str:
    """The less precise of the written `dtype` (fp32|bf16|fp16) and the reference's dtype."""
    order = list(TOLERANCES)
    written = _DTYPES[dtype]
    reference = reference_dtype if reference_dtype in order else "float32"
    return max(written, reference, key=order.index)


# ---- the rows ------------------------------------------------------------------------------------


def held_out_rows(found: Plugins, data: Path | None, max_rows: int) -> tuple[list[dict], str]:
    """The rows to verify on, at most `max_rows`, and where they came from."""
    if max_rows < 1:
        raise MergeError(f"--max-rows {max_rows}: must be at least 1")
    if data is not None:
        data = Path(data)
        if not data.exists():
            raise DataError(f"{data}: no such file (--data takes held-out rows to verify on)")
        if not data.is_file():
            raise DataError(f"{data}: not a file; --data takes a data file in the task's format")
        rows, where = found.task.read(data, found.task_options), str(data)
    else:
        rows, where = _run_eval_rows(found)
    if not rows:
        raise DataError(f"{where}: no rows to verify the merge on")
    return rows[:max_rows], where


def _run_eval_rows(found: Plugins) -> tuple[list[dict], str]:
    """The run's eval rows, read as training read them (recipe.yaml in the adapter directory)."""
    from adapterkit import api
    from adapterkit.recipe import resolve

    recipe_file = found.adapter / "recipe.yaml"
    hint = "pass --data FILE (held-out rows in the task's format) to verify the merge on"
    if not recipe_file.is_file():
        raise MergeError(f"{recipe_file}: missing, so the run's eval data is unknown; {hint}")
    try:
        recipe = resolve(recipe_file)
    except UserError as exc:
        first = str(exc).strip().splitlines()
        cause = " ".join(line.strip() for line in first[:3])
        raise MergeError(
            f"{recipe_file}: the run's eval data cannot be read ({cause}); {hint}"
        ) from exc
    if not recipe.data.eval and not recipe.data.holdout:
        raise MergeError(
            f"{recipe_file}: the run had no eval data (data.eval, data.holdout); {hint}"
        )
    _, rows, _ = api._read_data(found.task, recipe)  # the holdout slice exactly as training took it
    where = recipe.data.eval or f"{recipe.data.train} (data.holdout: {recipe.data.holdout} rows)"
    return rows, str(where)


def batches_of(loaded: Loaded, rows: list[dict]) -> list[dict[str, torch.Tensor]]:
    """`rows` encoded and collated as the task evaluates them."""
    from adapterkit.task import collate_all

    task, t_opts = loaded.task, loaded.task_options
    examples = task.encode(rows, loaded.tokenizer, t_opts)
    if not examples:
        raise DataError("no usable rows to verify the merge on (all dropped by encoding)")
    return collate_all(task, examples, loaded.tokenizer, t_opts, BATCH_SIZE)


# ---- the written model ---------------------------------------------------------------------------


def auto_class_name(architecture: str, model_type: str) -> str | None:
    """The `AutoModelFor...` class that builds `architecture` for `model_type` (the most specific
    one: `AutoModelForPreTraining` only when no other does), or None."""
    from transformers.models.auto import modeling_auto

    found = []
    for name, cls in vars(modeling_auto).items():
        mapping = getattr(getattr(cls, "_model_mapping", None), "_model_mapping", None)
        if not name.startswith("AutoModelFor") or not isinstance(mapping, dict):
            continue
        value = mapping.get(model_type)
        if value == architecture or (isinstance(value, (list, tuple)) and architecture in value):
            found.append(name)
    found.sort(key=lambda n: n == "AutoModelForPreTraining")
    return found[0] if found else None


def load_written(path: Path, dtype: str) -> tuple[nn.Module, str]:
    """The merged directory loaded with plain transformers, and the class that loaded it."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path))
    architecture = (getattr(config, "architectures", None) or [""])[0]
    name = auto_class_name(architecture, config.model_type)
    cls = getattr(transformers, name or architecture)
    model = cls.from_pretrained(str(path), dtype=getattr(torch, _DTYPES[dtype]))
    return model.eval(), f"transformers.{name or architecture}"


# ---- the figures ---------------------------------------------------------------------------------


def _logits(loaded_task: Any, model: nn.Module, batch: dict) -> torch.Tensor:
    from adapterkit.task import logits

    device = next(model.parameters()).device
    return logits(loaded_task, model, {k: v.to(device) for k, v in batch.items()}).float().cpu()


def logit_figures(reference: Loaded, model: nn.Module, batches: list[dict]) -> dict[str, Any]:
    """max |dlogit|, the logit scale (max |reference logit|, padding at the lowest float left
    out), mean KL(reference || model) per position, and the number of positions."""
    import torch
    import torch.nn.functional as F

    worst = scale = kl = 0.0
    positions = 0
    low = torch.finfo(torch.float32).min
    with torch.no_grad():
        for batch in batches:
            with reference.autocast():
                want = _logits(reference.task, reference.model, batch)
            got = _logits(reference.task, model, batch)
            diff = (want - got).abs().nan_to_num(nan=math.inf)
            worst = max(worst, float(diff.max()))
            real = want[want > low]
            scale = max(scale, float(real.abs().max()) if real.numel() else 0.0)
            kl += float(
                F.kl_div(
                    got.double().log_softmax(-1),
                    want.double().log_softmax(-1),
                    log_target=True,
                    reduction="sum",
                )
            )
            positions += int(want.shape[0])
    mean_kl = kl / positions if positions else math.nan
    return {
        "max_abs_logit_diff": worst,
        "logit_scale": scale,
        # rounding can put the KL of two equal distributions a hair below 0: reported as 0
        "mean_kl": max(mean_kl, 0.0) if math.isfinite(mean_kl) else math.inf,
        "positions": positions,
    }


def _metrics(loaded: Loaded, model: nn.Module, batches: list[dict], reference: bool) -> dict:
    import contextlib

    import torch

    context = loaded.autocast() if reference else contextlib.nullcontext()
    with torch.no_grad(), context:
        return loaded.task.evaluate(model, batches, loaded.task_options)


def _metric(loaded: Loaded, want: dict, got: dict) -> dict[str, Any]:
    from adapterkit.task import selection

    name, higher = selection(loaded.task, loaded.task_options)
    return {
        "name": name,
        "higher_is_better": higher,
        "reference": want.get(name),
        "merged": got.get(name),
    }


def _passed(figures: dict[str, Any], tolerance: Tolerance) -> tuple[bool, float]:
    bound = tolerance.relative * max(1.0, figures["logit_scale"])
    diff, kl = figures["max_abs_logit_diff"], figures["mean_kl"]
    ok = math.isfinite(diff) and math.isfinite(kl) and diff <= bound and kl <= tolerance.mean_kl
    return ok, bound


# ---- the report ----------------------------------------------------------------------------------


def _base_weights(loaded: Loaded, base: str) -> str:
    from adapterkit.strategy import quantized_base

    if base == "original":
        return "the base checkpoint's own weights, float32"
    dtype = loaded.manifest["base_model"].get("dtype") or "float32"
    if quantized_base(loaded.strategy):
        return "the 4-bit NF4 base the adapter trained on, dequantized"
    return f"the base as the adapter trained on it ({dtype})"


def compare(
    reference: Loaded, model: nn.Module, batches: list[dict], *, dtype: str, reference_dtype: str
) -> dict[str, Any]:
    """`model` (merged, written as `dtype`) against `reference` (base + adapter, computing in
    `reference_dtype`) on `batches`: the figures, the metric on both, the tolerance, pass/fail."""
    figures = logit_figures(reference, model, batches)
    want = _metrics(reference, reference.model, batches, reference=True)
    got = _metrics(reference, model, batches, reference=False)
    prec = precision(dtype, reference_dtype)
    passed, bound = _passed(figures, TOLERANCES[prec])
    return {
        "passed": passed,
        **figures,
        "tolerance": {"precision": prec, **asdict(TOLERANCES[prec]), "max_abs_logit_diff": bound},
        "metric": _metric(reference, want, got),
        "metrics": {"reference": want, "merged": got},
    }


def verify_written(
    path: Path, batches: list[dict], *, dtype: str, trained: Loaded, reference: Loaded
) -> dict[str, Any]:
    """The report on the merged directory `path`, loaded with plain transformers, against
    `reference`: `trained` (base + adapter as trained, `base` dequantized) or the original
    float32 base + adapter, unmerged, which the report then also compares with `trained`."""
    start = time.perf_counter()
    model, loaded_with = load_written(path, dtype)
    base = "dequantized" if reference is trained else "original"
    ref_dtype = trained.manifest["base_model"].get("dtype") or "float32"
    result = compare(
        reference,
        model,
        batches,
        dtype=dtype,
        reference_dtype=ref_dtype if base == "dequantized" else "float32",
    )
    report: dict[str, Any] = {
        "passed": result.pop("passed"),
        "strategy": trained.strategy.name,
        "task": trained.task.name,
        "dtype": dtype,
        "base": base,
        "base_weights": _base_weights(trained, base),
        "reference": "base + adapter as trained"
        if base == "dequantized"
        else "the original float32 base + adapter, unmerged",
        "loaded_with": loaded_with,
        **result,
    }
    if base != "dequantized":  # how far the chosen base moved the model from what trained
        vs = logit_figures(trained, model, batches)
        trained_metrics = _metrics(trained, trained.model, batches, reference=True)
        report["vs_trained"] = {
            **vs,
            "metric": _metric(trained, trained_metrics, result["metrics"]["merged"]),
        }
    report["verify_seconds"] = round(time.perf_counter() - start, 3)
    return report


def _g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    tol = report["tolerance"]
    metric = report["metric"]
    lines = [
        f"merged {report['adapter']} -> {report.get('out', '?')} ({report['dtype']}, base "
        f"{report['base']}: {report['base_weights']})",
        f"  verified on {report['rows']} rows ({report['positions']} positions) of "
        f"{report.get('data', '?')}, loaded with {report['loaded_with']}",
        f"  max |dlogit| {_g(report['max_abs_logit_diff'])} (tolerance {_g(tol['max_abs_logit_diff'])}"
        f"), mean KL {_g(report['mean_kl'])} (tolerance {_g(tol['mean_kl'])}), {tol['precision']}",
        f"  {metric['name']}: base + adapter {_g(metric['reference'])}, merged {_g(metric['merged'])}",
    ]
    if "vs_trained" in report:
        vs = report["vs_trained"]
        lines.append(
            f"  vs base + adapter as trained: max |dlogit| {_g(vs['max_abs_logit_diff'])}, mean KL "
            f"{_g(vs['mean_kl'])}, {vs['metric']['name']} {_g(vs['metric']['reference'])} -> "
            f"{_g(vs['metric']['merged'])}"
        )
    lines.append("  verification: " + ("passed" if report["passed"] else "FAILED"))
    return "\n".join(lines)


def failure_message(report: dict[str, Any], adapter: Path) -> str:
    """The VerificationFailed message: the figures, the tolerance, and what to do."""
    tol = report["tolerance"]
    finite = math.isfinite(report["max_abs_logit_diff"]) and math.isfinite(report["mean_kl"])
    why = "" if finite else " (its logits are not finite: a half dtype overflowing?)"
    return (
        f"{adapter}: the merged model ({report['dtype']}){why} differs from {report['reference']} "
        f"beyond the {tol['precision']} tolerance: max |dlogit| "
        f"{_g(report['max_abs_logit_diff'])} (tolerance {_g(tol['max_abs_logit_diff'])}), mean KL "
        f"{_g(report['mean_kl'])} (tolerance {_g(tol['mean_kl'])}); nothing was written. Try "
        "--dtype fp32, or pass --force to keep it anyway"
    )
