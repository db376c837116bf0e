"""adapterkit.testing's conformance kit: every built-in and both example plugins pass it, and it
catches each way a plugin can break the contract, saying which check failed."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from adapterkit.plugins import load_registry
from adapterkit.strategy import freeze, load_named_tensors, load_trainable_tensors, unfreeze
from adapterkit.testing import ConformanceError, TaskCase, check_strategy, check_task
from adapterkit.testing.fixtures import TASK_CASES, conll_rows, instruction_rows

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fp32_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit's runs train in fp32 (`precision: auto` means bf16 on this AMX CPU). Under bf16
    autocast bitsandbytes' 4-bit layers recast their frozen bias to each input's dtype in place,
    which the "only the adapter trains" check reads as a written frozen tensor (QLoRA on BERT), and
    a bf16 base hides the small write the "writes a frozen weight" negative case makes."""
    monkeypatch.setenv("ADAPTERKIT_AUTO_PRECISION", "fp32")


ALL_TASKS = list(TASK_CASES)
"""Every built-in task: each built-in strategy is checked on all of them."""
PLUGIN_TASKS = ["causal_lm", "sequence_classification", "token_classification"]
"""The example plugins are checked on one decoder task and two encoder tasks (their code has no
task-specific path; the cross product with every task would only repeat these)."""


def _module(name: str, path: Path) -> ModuleType:
    """Import a plugin from its source folder, as its own tests would (nothing installed)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path / name / "__init__.py")
        assert spec is not None and spec.loader is not None
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def norms() -> type:
    return _module("adapterkit_norms", ROOT / "tests" / "plugin_dist").Norms


def ia3() -> type:
    return _module("adapterkit_ia3", ROOT / "examples" / "adapterkit-ia3" / "src").Ia3


BUILTIN_STRATEGIES = {
    "full": {},
    "head": {},
    "last_n": {"n": 1},
    "lora": {"r": 4},
    "qlora": {"r": 4},
}
PLUGIN_STRATEGIES = {  # options, and the tasks they matter for
    "norms": (norms, {}, PLUGIN_TASKS),
    "norms-train_head": (norms, {"train_head": True}, ["causal_lm"]),  # a new head always trains
    "ia3": (ia3, {}, PLUGIN_TASKS),
}


@pytest.mark.parametrize(("name", "options"), BUILTIN_STRATEGIES.items())
def test_builtin_strategy_meets_the_contract(name: str, options: dict) -> None:
    cls = load_registry().classes["strategy"][name]
    assert check_strategy(cls, options) == ALL_TASKS


@pytest.mark.parametrize("case", PLUGIN_STRATEGIES, ids=str)
def test_example_plugin_strategy_meets_the_contract(case: str) -> None:
    get_class, options, tasks = PLUGIN_STRATEGIES[case]
    assert check_strategy(get_class(), options, tasks=tasks) == tasks


@pytest.mark.parametrize("name", ALL_TASKS)
def test_builtin_task_meets_the_contract(name: str) -> None:
    check_task(load_registry().classes["task"][name])


def test_a_task_case_of_ones_own() -> None:
    """A plugin passes its own TaskCase: here token classification on the tiny Llama."""
    case = TaskCase("token_classification", "llama", "tags.txt", conll_rows, {"max_length": 32})
    assert check_strategy(norms(), tasks=[case]) == ["token_classification"]


def test_check_task_takes_a_data_file(tmp_path: Path) -> None:
    data = tmp_path / "tags.txt"
    data.write_text(conll_rows())
    check_task(load_registry().classes["task"]["token_classification"], data=data, model="llama")


# ---- strategies that break the contract, one way each ---------------------------------------------


@dataclass
class _NoOptions:
    pass


class _HeadOnly:
    """A correct strategy (the head trains) that each broken one below changes in one place."""

    name = "broken"
    description = "for tests"
    Options = _NoOptions

    def load_kwargs(self, options: Any, parts: Any) -> dict:
        return {}

    def apply(self, model: Any, options: Any, parts: Any) -> Any:
        freeze(model)
        for name in parts.head:
            unfreeze(model.get_submodule(name))
        return model

    def adapter_state_dict(self, model: Any, options: Any) -> dict:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def load_adapter_state_dict(self, model: Any, tensors: dict, options: Any) -> None:
        load_trainable_tensors(model, tensors)


class _LoadsPartially(_HeadOnly):
    def load_adapter_state_dict(self, model: Any, tensors: dict, options: Any) -> None:
        load_named_tensors(model, tensors)  # refuses stray names, not missing ones


class _IdleTensor(_HeadOnly):
    def apply(self, model: Any, options: Any, parts: Any) -> Any:
        model = super().apply(model, options, parts)
        model.register_parameter("idle", torch.nn.Parameter(torch.zeros(3)))  # never used
        return model


class _WritesFrozenWeight(_HeadOnly):
    def apply(self, model: Any, options: Any, parts: Any) -> Any:
        model = super().apply(model, options, parts)
        norm = next(m for m in model.modules() if "Norm" in type(m).__name__)

        def drift(*_: Any) -> None:  # a frozen weight written in place on every forward
            norm.weight.data.mul_(1.001)

        model.register_forward_pre_hook(drift)
        return model


@dataclass
class _PathOptions:
    cache: Path = Path("cache")


class _PathOption(_HeadOnly):
    Options = _PathOptions


class _NeedsRealWeights(_HeadOnly):
    def apply(self, model: Any, options: Any, parts: Any) -> Any:
        model = super().apply(model, options, parts)
        float(next(model.parameters()).detach().sum())  # reads a weight: none on the meta device
        return model


class _PlansOtherTensors(_HeadOnly):
    def plan_apply(self, model: Any, options: Any, parts: Any) -> Any:
        freeze(model)
        return model


BROKEN = {
    "loads a partial adapter": (_LoadsPartially, "accepted a missing tensor"),
    "an adapter tensor never trains": (_IdleTensor, "did not change in 3 optimizer steps"),
    "writes a frozen weight": (_WritesFrozenWeight, "outside the adapter changed in training"),
    "options that YAML cannot hold": (_PathOption, "cannot be written as YAML"),
    "cannot run on the meta device": (_NeedsRealWeights, "plans on the meta device (plan_apply)"),
    "plans another trainable set": (_PlansOtherTensors, "plan_apply and apply train other"),
}


def test_the_correct_strategy_the_broken_ones_start_from_passes() -> None:
    assert check_strategy(_HeadOnly, tasks=["causal_lm"]) == ["causal_lm"]


@pytest.mark.parametrize("what", BROKEN)
def test_check_strategy_names_what_is_broken(what: str) -> None:
    cls, message = BROKEN[what]
    with pytest.raises(ConformanceError, match="check_strategy") as exc:
        check_strategy(cls, tasks=["causal_lm"])
    assert message in str(exc.value)
    assert isinstance(exc.value, AssertionError)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (["summarisation"], "no tiny case for task 'summarisation'"),
        ([TaskCase("text_lm", "llama", "x.txt", str)], "task 'text_lm' is not registered"),
        ([], "no task to check"),
    ],
    ids=["unknown name", "unregistered task", "none"],
)
def test_check_strategy_says_which_tasks_it_cannot_run(tasks: list, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_strategy(_HeadOnly, tasks=tasks)


def test_check_strategy_leaves_the_registry_as_it_was() -> None:
    registry = load_registry()
    before = dict(registry.classes["strategy"])
    with pytest.raises(ConformanceError):
        check_strategy(_LoadsPartially, tasks=["causal_lm"])
    check_strategy(registry.classes["strategy"]["head"], tasks=["causal_lm"])
    assert registry.classes["strategy"] == before


# ---- tasks that break the contract ------------------------------------------------------------------


def _causal_lm() -> type:
    return load_registry().classes["task"]["causal_lm"]


def _broken_tasks() -> dict[str, tuple[type, str]]:
    base = _causal_lm()

    class MeanLoss(base):  # type: ignore[misc, valid-type]
        def loss(self, model: Any, batch: dict) -> Any:
            return super().loss(model, batch) / self.targets(batch)

    class HalfMetaModel(base):  # type: ignore[misc, valid-type]
        def meta_model(self, config: Any, options: Any) -> Any:
            return super().meta_model(config, options).to(torch.float16)  # loads in float32

    class NoSelectionMetric(base):  # type: ignore[misc, valid-type]
        selection_metric = "bleu"

    return {
        "averages its loss": (MeanLoss, "the loss is summed, not averaged"),
        "plans another model": (HalfMetaModel, "meta_model builds the model load_model loads"),
        "lacks its selection metric": (NoSelectionMetric, "must return finite numbers"),
    }


BROKEN_TASKS = ["averages its loss", "plans another model", "lacks its selection metric"]


@pytest.mark.parametrize("what", BROKEN_TASKS)
def test_check_task_names_what_is_broken(what: str, tmp_path: Path) -> None:
    cls, message = _broken_tasks()[what]
    data = tmp_path / "train.jsonl"
    data.write_text(instruction_rows())
    with pytest.raises(ConformanceError, match="check_task") as exc:
        check_task(cls, {"max_length": 48}, data=data)
    assert message in str(exc.value)
