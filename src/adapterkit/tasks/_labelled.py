"""What the tasks that add a new, freshly initialised head share: the head, the model, the labels.

The head is found on a built model, not from a list of names: every top-level child that is not
the base model, plus the base model's pooler when the task model uses one (BERT's sequence
classifier does, its token classifier does not). That gives `classifier` for BERT, `score` for
Llama, and so on, and it is the same list QLoRA keeps out of quantization. Built on the meta
device it costs no weights and no memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from adapterkit.errors import DataError, ModelError
from adapterkit.strategy import ModelParts
from adapterkit.tasks import _models

if TYPE_CHECKING:
    from torch import nn

    from adapterkit.storage.sources import ModelSource


class LabelledOptions(Protocol):
    """The Options of a task with a new head: its label names, None until read from the data."""

    @property
    def labels(self) -> Sequence[str] | None: ...


def num_labels(options: LabelledOptions) -> int:
    """The head size for `options.labels`: their number, or 2 while they are not known yet."""
    labels = options.labels
    return max(1, len(labels)) if labels else 2


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def head_of(model: nn.Module) -> ModelParts:
    """The new head's module names on a built task model (meta device or real)."""
    prefix = str(getattr(model, "base_model_prefix", ""))
    base = getattr(model, prefix, None)
    head = [
        name
        for name, child in model.named_children()
        if child is not base and _has_parameters(child)
    ]
    pooler = getattr(base, "pooler", None)
    if pooler is not None and _has_parameters(pooler):
        head.append(f"{prefix}.pooler")
    if not head:
        raise ModelError(f"found no head modules in {type(model).__name__}")
    return ModelParts(head=tuple(head), new_head=True)


def head_parts(kind: str, source: ModelSource, labels: int) -> ModelParts:
    """The new head's module names for `AutoModelFor<kind>` on this model, from its config."""
    return head_of(_models.meta_model(kind, _models.config_of(source), max(1, labels)))


def require_labels(options: LabelledOptions, what: str) -> list[str]:
    """`options.labels`; a ModelError when they are unknown (so would the head's size be).

    `what` names the model ("token classifier").
    """
    labels = options.labels
    if not labels:
        raise ModelError(
            f"the label names of the {what} are unknown; set task.options.labels or train on "
            "labelled data so they are read from it"
        )
    return [str(x) for x in labels]


def load_labelled_model(
    kind: str,
    source: ModelSource,
    options: LabelledOptions,
    load_kwargs: dict[str, Any],
    what: str,
) -> tuple[nn.Module, Any]:
    """(model, tokenizer): `AutoModelFor<kind>` with one output per label, names in its config.

    `what` names the model in errors ("sequence classifier"). The config learns the pad token,
    so a decoder's sequence classifier can find each row's last real token.
    """
    labels = require_labels(options, what)
    model, tokenizer = _models.load_pretrained(
        kind,
        source,
        f"a {what}",
        load_kwargs,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@dataclass(frozen=True)
class LabelSet:
    """Label names in head order, and the checks that name the row at fault (all DataError).

    `noun` is what a label is called in messages ("label", "tag"), `among` the words between
    "is not" and "task.options.labels" ("one of", "in"): each task keeps the wording it had.
    """

    names: tuple[str, ...]
    noun: str = "label"
    among: str = "one of"

    @classmethod
    def infer(
        cls,
        seen: Iterable[str],
        *,
        first: str | None = None,
        key: Callable[[str], Any] | None = None,
        **wording: str,
    ) -> LabelSet:
        """The distinct labels `seen`, sorted (by `key`), with `first` ahead of them if given."""
        rest = sorted(set(seen) - {first}, key=key)
        return cls((first, *rest) if first is not None else tuple(rest), **wording)

    @classmethod
    def given(cls, names: Iterable[Any], **wording: str) -> LabelSet:
        """task.options.labels as strings, in their order; a repeated label is an error."""
        labels = [str(x) for x in names]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise DataError(f"task.options.labels: repeated label(s) {', '.join(repeated)}")
        return cls(tuple(labels), **wording)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def _listed(self) -> str:
        return ", ".join(self.names)

    def check(self, items: Iterable[tuple[str, str]]) -> None:
        """Every (label, where) of the training data is one of task.options.labels."""
        for label, where in items:
            if label not in self._index:
                raise DataError(
                    f"{where}: {self.noun} {label!r} is not {self.among} task.options.labels "
                    f"({self._listed()}); add it there or fix the row"
                )

    def id_of(self, label: str, where: str) -> int:
        """The head's output for `label`; one the model was not trained with is an error."""
        index = self._index.get(label)
        if index is None:
            raise DataError(
                f"{where}: {self.noun} {label!r} is not one of the model's labels "
                f"({self._listed()}); the training data had no such {self.noun}"
            )
        return index
