"""Run several strategies on one recipe, each in its own process, and compare what each costs.

    rows = compare.run("recipes/smollm2/lora.yaml", ["full", "lora", "qlora"], ["train.max_steps=50"],
                       Path("runs/compare-lora"))

Every run shares the recipe's model, data, seed, steps and batch; a strategy other than the recipe's
own runs with its default options, refined by `<strategy>.<option>=value` overrides (`lora.r=16`).
Each run is a fresh `adapterkit train` child process, so one run's memory high-water mark, allocator
caches and memory-mapped weights cannot leak into the next one's figures; a run that dies (a bad
option, the kernel's out-of-memory killer) keeps its row with the reason and the others still run.

Writes into `out_dir`: `runs/<strategy>/` (each run's adapter, log.jsonl, metrics.json),
`logs/<strategy>.log` (each child's output), `<strategy>.json` (one row per run), `compare.json`
(all rows), `compare.md` (the table), `pareto.png` (eval metric against peak memory, Pareto front
marked) and `loss.png` (every run's training loss on one chart).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapterkit import options as opts
from adapterkit.compare.report import markdown_table, pareto_front, plot_losses, plot_pareto
from adapterkit.errors import UserError
from adapterkit.recipe import SECTIONS, Recipe, load_yaml, resolve
from adapterkit.storage.atomic import write_json

# Copied from the run's metrics.json under the same name (see train_config.DEFINITIONS).
METRICS_FIELDS = (
    "trainable_params",
    "trainable_percent",
    "total_params",
    "adapter_bytes",
    "peak_memory_bytes",
    "peak_memory_kind",
    "peak_memory_reset",
    "cuda_peak_reserved_bytes",
    "load_peak_memory_bytes",
    "rss_anon_bytes",
    "rss_file_bytes",
    "tokens_per_s",
    "train_loss",
    "steps",
)

# Every row has these keys, failed ones with None, so tables and JSON consumers see one shape.
FIELDS = (
    "strategy",
    "options",
    "error",
    "returncode",
    "run_dir",
    *METRICS_FIELDS,
    "wall_time_s",
    "trainer_wall_time_s",
    "eval_metric",
    "higher_is_better",
    "eval_value",
    "test_value",
    "pareto",
)

DEFINITIONS = {
    "options": "The strategy's resolved options (defaults filled in).",
    "error": "Why the run failed (null when it succeeded).",
    "returncode": "The child process's exit status (negative: killed by that signal).",
    "wall_time_s": "Seconds the child process ran, measured by compare: imports and loading too.",
    "trainer_wall_time_s": "The trainer's wall_time_s: fit() to metrics.json.",
    "eval_metric": "The task's selection metric, read from final_eval.",
    "eval_value": "eval_metric of the final adapter on the eval data.",
    "test_value": "eval_metric of the selected adapter on the test data, when there is test data.",
    "pareto": "On the Pareto front: no other run has lower-or-equal peak memory and a metric at "
    "least as good, with one of the two strictly better.",
}

OOM_KILLED = "out of memory (killed by the kernel, SIGKILL)"

# Output that means the child ran out of memory, whatever else was going on.
_OOM_PATTERNS = (
    "out of memory",
    "memoryerror",
    "can't allocate memory",
    "cannot allocate memory",
    "std::bad_alloc",
    "failed to map segment",
)
# Output that means out of memory only when compare itself capped the child's address space.
_LIMIT_PATTERNS = ("can't start new thread", "mmap failed")

_TAIL_BYTES = 64 * 1024


# ---- overrides -----------------------------------------------------------------------------------


def recipe_strategy_name(recipe_path: str | Path) -> str | None:
    """The strategy the recipe file names, or None where it names none (resolve reports that)."""
    data, _ = load_yaml(Path(recipe_path))
    section = data.get("strategy")
    name = section.get("name") if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def split_overrides(
    overrides: Sequence[str], strategies: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """Split overrides into those for every run and `<strategy>.<option>=v` ones for one run.

    `strategies` are the names that count as a prefix (the registered ones). `strategy.*`
    overrides are refused: with several strategies they would be ambiguous (an option of one
    strategy is an unknown key for another).
    """
    common: list[str] = []
    per: dict[str, list[str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        head, dot, rest = key.strip().partition(".")
        if head == "strategy":
            raise UserError(
                f"override '{item}': compare sets each run's strategy; give an option of one "
                "strategy as <strategy>.<option>=value, e.g. lora.r=16"
            )
        if head in strategies and head not in SECTIONS and sep and dot and rest:
            per.setdefault(head, []).append(f"strategy.options.{rest}={value}")
        else:
            common.append(item)
    return common, per


def strategy_overrides(
    recipe_strategy: str | None,
    strategy: str,
    overrides: Sequence[str],
    known: Sequence[str] = (),
) -> list[str]:
    """The overrides one run gets: the common ones, its strategy, and its own options.

    The recipe's own strategy keeps the recipe's options; any other strategy starts from its
    defaults (the recipe's options belong to another strategy and would be unknown keys).
    Overrides prefixed with another strategy's name (`known`: the registered names) are dropped.
    """
    common, per = split_overrides(overrides, [*known, strategy])
    own = (
        [] if strategy == recipe_strategy else [f"strategy.name={strategy}", "strategy.options={}"]
    )
    return [*common, *own, *per.get(strategy, [])]


def check_overrides(
    overrides: Sequence[str], strategies: Sequence[str], known: Sequence[str]
) -> None:
    """Refuse `<strategy>.x=v` for a strategy that is not compared: it would silently do nothing."""
    _, per = split_overrides(overrides, [*known, *strategies])
    stray = sorted(set(per) - set(strategies))
    if stray:
        raise UserError(
            f"overrides for {', '.join(stray)}, which is not among the strategies compared "
            f"({', '.join(strategies)})"
        )


# ---- failures ------------------------------------------------------------------------------------


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return lines[-1] if lines else ""


def classify_failure(returncode: int, output: str, memory_limited: bool = False) -> str:
    """A one-line-or-so reason for a failed child, from its exit status and its last output.

    SIGKILL is what the kernel's out-of-memory killer sends, so a child killed by it is reported as
    out of memory; allocation failures show in the output. Exit status 2 is a user error, whose
    message (after the CLI's "error: ") is reported as is.
    """
    if returncode == -signal.SIGKILL:
        return OOM_KILLED
    lowered = output.lower()
    patterns = _OOM_PATTERNS + (_LIMIT_PATTERNS if memory_limited else ())
    if any(p in lowered for p in patterns):
        return f"out of memory: {_last_line(output)}"
    if returncode == 2:
        lines = output.replace("\r", "\n").splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
        if starts:
            message = "\n".join(lines[starts[-1] :]).strip()
            return message.removeprefix("error:").strip()
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}: {_last_line(output)}".rstrip(": ")
    return f"failed (exit {returncode}): {_last_line(output)}".rstrip(": ")


# ---- running one strategy ------------------------------------------------------------------------


def _limit_address_space(limit: int) -> Callable[[], None]:
    """A preexec_fn capping the child's address space, to provoke out-of-memory deliberately."""

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _run_child(
    cmd: list[str], log_path: Path, echo: bool, memory_limit_bytes: int | None
) -> tuple[int, str, float]:
    """Run `cmd`, streaming its output to the log (and our stderr when echo); (rc, tail, seconds).

    The child's stdout and stderr are merged so its tqdm bar and messages keep their order; they go
    to our stderr, never our stdout, which carries only the table (or the JSON).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    preexec = _limit_address_space(memory_limit_bytes) if memory_limit_bytes else None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail = b""
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec
        )
        try:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
                tail = (tail + chunk)[-_TAIL_BYTES:]
                if echo:
                    _echo(chunk)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: do not leave a training child behind
                proc.kill()
                proc.wait()
            proc.stdout.close()
    return returncode, tail.decode("utf-8", "replace"), time.perf_counter() - started


def _echo(chunk: bytes) -> None:
    """Pass the child's bytes to our stderr as they come (its tqdm bar redraws with \\r)."""
    raw = getattr(sys.stderr, "buffer", None)
    if raw is not None:
        sys.stderr.flush()
        raw.write(chunk)
        raw.flush()
    else:  # a text-only stream (a notebook, a test's StringIO)
        sys.stderr.write(chunk.decode("utf-8", "replace"))
        sys.stderr.flush()


def _empty_row(strategy: str) -> dict[str, Any]:
    return {key: None for key in FIELDS} | {"strategy": strategy, "pareto": False}


def _metric_of(evals: Any, metric: str | None) -> float | None:
    if not isinstance(evals, dict) or metric is None or evals.get(metric) is None:
        return None
    return float(evals[metric])


def _row_from_run(row: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Fill a row from the run's metrics.json (the trainer's figures, unchanged)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in METRICS_FIELDS:
        row[key] = metrics.get(key)
    row["trainer_wall_time_s"] = metrics.get("wall_time_s")
    row["eval_value"] = _metric_of(metrics.get("final_eval"), row["eval_metric"])
    row["test_value"] = _metric_of(metrics.get("test_eval"), row["eval_metric"])
    return row


def _task_metric(recipe: Recipe) -> tuple[str, bool]:
    from adapterkit.plugins import load_registry

    task = load_registry().task(recipe.task.name)
    return task.selection_metric, bool(task.higher_is_better)


def _validate(
    recipe_path: Path, strategies: Sequence[str], overrides: Sequence[str]
) -> dict[str, tuple[list[str], Recipe | None, str | None]]:
    """Each run's overrides and resolved recipe, or its recipe error, before any process starts."""
    from adapterkit.plugins import load_registry

    known = load_registry().names("strategy")
    check_overrides(overrides, strategies, known)
    own = recipe_strategy_name(recipe_path)
    plans: dict[str, tuple[list[str], Recipe | None, str | None]] = {}
    for strategy in strategies:
        run_overrides = strategy_overrides(own, strategy, overrides, known)
        try:
            plans[strategy] = (run_overrides, resolve(recipe_path, run_overrides), None)
        except UserError as exc:
            plans[strategy] = (run_overrides, None, str(exc))
    return plans


def run(
    recipe_path: str | Path,
    strategies: Sequence[str],
    overrides: Sequence[str],
    out_dir: Path,
    progress: bool = True,
    memory_limit_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Train the recipe once per strategy, each in a fresh process; write and return the rows."""
    strategies = list(strategies)
    if not strategies:
        raise UserError("--strategies: give at least one strategy, e.g. full,lora")
    duplicates = sorted({s for s in strategies if strategies.count(s) > 1})
    if duplicates:
        raise UserError(f"--strategies: listed more than once: {', '.join(duplicates)}")
    recipe_path, out_dir = Path(recipe_path), Path(out_dir).resolve()
    plans = _validate(recipe_path, strategies, overrides)
    resolved = [r for _, r, _ in plans.values() if r is not None]
    metric, higher = _task_metric(resolved[0]) if resolved else (None, None)

    rows = []
    for i, strategy in enumerate(strategies, 1):
        run_overrides, recipe, error = plans[strategy]
        row = _empty_row(strategy) | {"eval_metric": metric, "higher_is_better": higher}
        if progress:
            print(f"[{i}/{len(strategies)}] {strategy}", file=sys.stderr, flush=True)
        if recipe is None:
            row["error"] = error
        else:
            row["options"] = opts.as_dict(recipe.strategy.options)
            row = _train_one(row, recipe_path, run_overrides, out_dir, progress, memory_limit_bytes)
        if progress:
            outcome = f"failed: {row['error']}" if row["error"] else f"{row['wall_time_s']:.1f} s"
            print(f"[{i}/{len(strategies)}] {strategy}: {outcome}", file=sys.stderr, flush=True)
        rows.append(row)

    if metric is not None:
        front = pareto_front(rows, "eval_value", bool(higher))
        for row in rows:
            row["pareto"] = any(row is f for f in front)
    write_outputs(rows, out_dir, recipe_path, list(overrides))
    return rows


def _train_one(
    row: dict[str, Any],
    recipe_path: Path,
    run_overrides: list[str],
    out_dir: Path,
    progress: bool,
    memory_limit_bytes: int | None,
) -> dict[str, Any]:
    strategy = row["strategy"]
    run_dir = out_dir / "runs" / strategy
    cmd = [sys.executable, "-m", "adapterkit", "train", str(recipe_path), *run_overrides]
    cmd += ["--out", str(run_dir), "--overwrite"] + ([] if progress else ["--no-progress"])
    rc, tail, seconds = _run_child(
        cmd, out_dir / "logs" / f"{strategy}.log", progress, memory_limit_bytes
    )
    row.update(returncode=rc, wall_time_s=seconds, run_dir=str(run_dir))
    if rc != 0:
        row["error"] = classify_failure(rc, tail, memory_limited=memory_limit_bytes is not None)
        return row
    try:
        return _row_from_run(row, run_dir)
    except (OSError, ValueError) as exc:
        row["error"] = f"the run finished but its metrics.json is unreadable: {exc}"
        return row


def write_outputs(
    rows: Sequence[dict[str, Any]], out_dir: Path, recipe_path: Path, overrides: list[str]
) -> None:
    """<strategy>.json per run, compare.json, compare.md, pareto.png and loss.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        write_json(out_dir / f"{row['strategy']}.json", row)
    write_json(
        out_dir / "compare.json",
        {
            "recipe": str(recipe_path),
            "overrides": overrides,
            "rows": list(rows),
            "definitions": DEFINITIONS,
        },
    )
    (out_dir / "compare.md").write_text(markdown_table(rows))
    plot_pareto(rows, out_dir / "pareto.png")
    ok = {r["strategy"]: Path(r["run_dir"]) for r in rows if not r["error"] and r["run_dir"]}
    plot_losses(ok, out_dir / "loss.png")


_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(text: str) -> int:
    """'2GiB', '300MB', '512M', '1e9' -> bytes; KiB/MiB/GiB are binary, KB/MB/GB (and K/M/G) decimal."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?)B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"--memory-limit: cannot read '{text}' as a size, e.g. 2GiB or 500MB")
    number, unit, binary = match.groups()
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"--memory-limit: cannot read '{text}' as a size") from None
    unit = unit.upper()
    scale = 1024 ** ("KMGT".index(unit) + 1) if binary and unit else _UNITS[unit]
    if value <= 0:
        raise UserError(f"--memory-limit: must be positive, got '{text}'")
    return int(value * scale)
