"""`check_strategy`: one call that proves a strategy meets the contract, on tiny random models.

For each task case (default: every built-in task, each on a tiny Llama or BERT) it writes a recipe
with the options, trains a few real optimizer steps through `adapterkit.api.train`, and checks:
  - the class registers, and its options round-trip through a recipe and a manifest;
  - training changed exactly the adapter tensors; every other parameter and buffer is bit-identical;
  - the saved adapter is the trained tensors bit for bit; `api.load` reloads the same tensors and
    the reloaded model computes the trained model's loss exactly;
  - loading refuses a missing, a stray and a misshapen tensor with AdapterError;
  - on the meta device `plan_apply` leaves the same trainable names and shapes as `apply` does on
    the real model, and `adapterkit.plan` plans it, counting the same trainable parameters.
The class is registered under its name only while the check runs (installed or not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit import options as opts
from adapterkit.registry import Kind
from adapterkit.testing._report import KIT, Check, parse_options, registers, round_trip
from adapterkit.testing.fixtures import (
    TASK_CASES,
    TaskCase,
    Workspace,
    recipe_dict,
    workspace,
    write_recipe,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.api import Loaded
    from adapterkit.recipe import Recipe
    from adapterkit.strategy import ModelParts, Strategy


def check_strategy(
    strategy_cls: type[Strategy],
    options: Any = None,
    *,
    tasks: Iterable[str | TaskCase] | None = None,
    steps: int = 3,
) -> list[str]:
    """Check `strategy_cls` with `options` (an Options instance, a dict, or None for defaults) on
    each of `tasks` (names of built-in tasks, or TaskCase; default all built-in ones), training
    `steps` optimizer steps on each (LoRA's zero-initialised B lets A move from step 2 on).

    Returns the names of the tasks checked; raises AssertionError (ConformanceError) naming the
    check that failed and why.
    """
    check = Check(f"check_strategy({getattr(strategy_cls, '__name__', strategy_cls)})")
    if steps < 2:
        check.fail("steps", f"{steps}: use 2 or more (a zero-initialised factor moves at step 2)")
    registers(check, "strategy", strategy_cls)
    options = parse_options(check, strategy_cls, options, "strategy.options")
    round_trip(check, strategy_cls, options, "strategy.options")
    cases = _cases(check, tasks)
    with (
        tempfile.TemporaryDirectory(prefix="adapterkit-check-") as tmp,
        _registered(strategy_cls) as recording,
    ):
        for case in cases:
            subject = Check(f"{check.subject} on task {case.task}")
            _check_case(subject, recording, options, workspace(case, Path(tmp)), steps)
    return [case.task for case in cases]


def _cases(check: Check, tasks: Iterable[str | TaskCase] | None) -> list[TaskCase]:
    from adapterkit.plugins import load_registry

    cases = []
    for item in TASK_CASES if tasks is None else tasks:
        if not isinstance(item, TaskCase) and item not in TASK_CASES:
            check.fail(
                "tasks",
                f"no tiny case for task {item!r} (built-in cases: {', '.join(TASK_CASES)}); "
                "pass an adapterkit.testing.TaskCase for another task",
            )
        cases.append(item if isinstance(item, TaskCase) else TASK_CASES[item])
    if not cases:
        check.fail("tasks", "no task to check the strategy on")
    registered = load_registry().names("task")
    for case in cases:
        if case.task not in registered:
            check.fail(
                "tasks",
                f"task {case.task!r} is not registered (registered: {', '.join(registered)}); "
                "install the plugin that provides it: the check trains through "
                "adapterkit.api.train, which finds tasks by name",
            )
    return cases


@dataclasses.dataclass
class _Recording:
    """The strategy under check and, registered under its name while the check runs, a subclass
    of it that keeps each model its `apply` returns, with a copy of that model's parameters and
    buffers as they were then (before training)."""

    checked: type[Strategy]
    registered: type
    applied: list[tuple[nn.Module, dict[str, torch.Tensor]]]

    @property
    def name(self) -> str:
        return str(self.checked.name)


def _recording(cls: type[Strategy]) -> _Recording:
    applied: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []

    def apply(self: Strategy, model: nn.Module, options: Any, parts: ModelParts) -> nn.Module:
        out = cls.apply(self, model, options, parts)
        applied.append((out, _snapshot(out)))
        return out

    registered = type(cls.__name__, (cls,), {"apply": apply, "__doc__": cls.__doc__})
    return _Recording(cls, registered, applied)


@contextlib.contextmanager
def _registered(cls: type[Strategy]) -> Iterator[_Recording]:
    """`cls`, recording, registered as its name in the process registry; restored afterwards."""
    from adapterkit.plugins import load_registry

    registry, recording = load_registry(), _recording(cls)
    table = registry.classes["strategy"]
    key: tuple[Kind, str] = ("strategy", recording.name)
    old_class, old_owner = table.get(recording.name), registry.owners.get(key)
    table[recording.name], registry.owners[key] = recording.registered, KIT
    try:
        yield recording
    finally:
        if old_class is None or old_owner is None:
            table.pop(recording.name, None)
            registry.owners.pop(key, None)
        else:
            table[recording.name], registry.owners[key] = old_class, old_owner


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.detach().to("cpu", copy=True) for name, t in tensors}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical values (and shape and dtype), wherever each tensor lives."""
    import torch

    return a.dtype == b.dtype and torch.equal(a.detach().cpu(), b.detach().cpu())


def _check_case(
    check: Check, recording: _Recording, options: Any, ws: Workspace, steps: int
) -> None:
    from adapterkit import api
    from adapterkit.recipe import resolve

    strategy = recording.checked()
    raw = opts.as_dict(options)
    with check.step("the options round-trip through a recipe file (adapterkit.recipe.resolve)"):
        recipe = resolve(write_recipe(ws, recipe_dict(ws, recording.name, raw, steps)))
    if opts.as_dict(recipe.strategy.options) != raw:
        check.fail("options round-trip", f"{raw!r} resolve as {recipe.strategy.options!r}")
    out = ws.root / "run"
    with check.step(f"trains {steps} steps (adapterkit.api.train)"):
        recording.applied.clear()
        api.train(recipe, out, progress=False)
        trained, before = recording.applied[-1]
    _check_only_adapter_trained(check, strategy, options, trained, before, steps)
    with check.step("reloads (adapterkit.api.load)"):
        loaded = api.load(out)
    _check_reload(check, strategy, options, trained, loaded, ws, out)
    _check_refusals(check, strategy, options, loaded.model, out)
    _check_meta(check, recording.checked, options, trained, loaded, recipe)


def _check_only_adapter_trained(
    check: Check,
    strategy: Strategy,
    options: Any,
    trained: nn.Module,
    before: dict[str, torch.Tensor],
    steps: int,
) -> None:
    with check.step("adapter_state_dict of the trained model"):
        pointers = {t.data_ptr() for t in strategy.adapter_state_dict(trained, options).values()}
    params = dict(trained.named_parameters())
    adapter = {n for n, p in params.items() if p.data_ptr() in pointers}
    changed = {n for n, p in params.items() if n not in before or not same(p, before[n])}
    buffers = [n for n, b in trained.named_buffers() if n in before and not same(b, before[n])]
    outside = sorted(changed - adapter) + buffers
    if outside:
        check.fail(
            "only the adapter trains",
            f"{len(outside)} tensor(s) outside the adapter changed in training: {outside[:5]}; "
            "every other parameter and buffer must stay bit-identical (frozen, never written)",
        )
    idle = sorted(adapter - changed)
    if idle:
        check.fail(
            "every adapter tensor trains",
            f"{len(idle)} adapter tensor(s) did not change in {steps} optimizer steps: "
            f"{idle[:5]}; they get no gradient (not used in the forward pass, or detached?)",
        )


def _check_reload(
    check: Check,
    strategy: Strategy,
    options: Any,
    trained: nn.Module,
    loaded: Loaded,
    ws: Workspace,
    out: Path,
) -> None:
    from adapterkit.storage.adapter_format import read_adapter
    from adapterkit.testing._report import differences

    _, saved = read_adapter(out)
    diff = differences(
        saved, strategy.adapter_state_dict(trained, options), same, ("saved", "trained")
    )
    if diff:
        check.fail("the adapter saves bit for bit", f"saved and trained tensors differ: {diff}")
    with check.step("adapter_state_dict of the reloaded model"):
        theirs = strategy.adapter_state_dict(loaded.model, options)
    diff = differences(saved, theirs, same, ("saved", "reloaded"))
    if diff:
        check.fail("reloads bit for bit", f"the saved and the reloaded adapter differ: {diff}")
    with check.step("the reloaded model computes the trained model's loss"):
        mine, again = _loss(loaded, trained, ws), _loss(loaded, loaded.model, ws)
    if not same(mine, again):
        check.fail(
            "reloads bit for bit", f"loss {mine.item()!r} trained, {again.item()!r} reloaded"
        )


def _loss(loaded: Loaded, model: nn.Module, ws: Workspace) -> torch.Tensor:
    import torch

    task, t_opts = loaded.task, loaded.task_options
    examples = task.encode(task.read(ws.data, t_opts)[:4], loaded.tokenizer, t_opts)
    batch = task.collate(examples, loaded.tokenizer, t_opts)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), loaded.autocast():  # as the run computed it: bf16 base, fp32 adapter
        return task.loss(model, {k: v.to(device) for k, v in batch.items()}).detach().cpu()


def _check_refusals(
    check: Check, strategy: Strategy, options: Any, model: nn.Module, out: Path
) -> None:
    import torch

    from adapterkit.errors import AdapterError
    from adapterkit.storage.adapter_format import read_adapter

    _, saved = read_adapter(out)
    if not saved:
        check.fail("loading refuses bad tensors", "the saved adapter holds no tensor")
    first = next(iter(saved))
    bad = {
        "a missing tensor": {k: v for k, v in saved.items() if k != first},
        "a stray tensor": {**saved, "adapterkit_check.stray.weight": saved[first].clone()},
        "a misshapen tensor": {**saved, first: torch.zeros((*saved[first].shape, 2))},
    }
    for what, tensors in bad.items():
        try:
            strategy.load_adapter_state_dict(model, tensors, options)
        except AdapterError:
            continue
        except Exception as exc:
            check.fail(
                "loading refuses bad tensors",
                f"{what} raised {type(exc).__name__} ({exc}); raise adapterkit.errors.AdapterError",
            )
        check.fail(
            "loading refuses bad tensors",
            f"load_adapter_state_dict accepted {what} (around {first!r}); it must raise "
            "AdapterError, as adapterkit.strategy.load_trainable_tensors does",
        )


def _check_meta(
    check: Check,
    cls: type[Strategy],
    options: Any,
    trained: nn.Module,
    loaded: Loaded,
    recipe: Recipe,
) -> None:
    from adapterkit import task as task_api
    from adapterkit.planning import memory
    from adapterkit.storage import sources
    from adapterkit.strategy import plan_apply, trainable_named_parameters
    from adapterkit.testing._report import differences

    task, t_opts = loaded.task, loaded.task_options
    with check.step("the task builds its model on the meta device (Task.meta_model)"):
        source = sources.resolve(recipe.model.name)
        meta = task_api.meta_model(task, sources.load_config(source), t_opts)
    with check.step("plans on the meta device (plan_apply)"):
        planned = plan_apply(cls(), meta, options, task.model_parts(source, t_opts))
        got = {n: tuple(p.shape) for n, p in trainable_named_parameters(planned)}
    want = {n: tuple(p.shape) for n, p in trainable_named_parameters(trained)}
    diff = differences(got, want, lambda a, b: a == b, ("on the meta device", "on the real model"))
    if diff:
        check.fail("plans on the meta device", f"plan_apply and apply train other tensors: {diff}")
    done = dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, options=t_opts))
    with check.step("adapterkit.planning.memory.from_recipe plans it"):
        plans = memory.from_recipe(done, [cls], "cpu")
    count = sum(p.numel() for _, p in trainable_named_parameters(trained))
    if len(plans) != 1 or plans[0].trainable_params != count:
        check.fail(
            "the planner counts its trainable parameters",
            f"{[p.trainable_params for p in plans]} planned, {count} really train",
        )
