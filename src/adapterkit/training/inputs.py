"""What the loop is given besides the model and the recipe's `train` section.

The task and its examples (TrainData), the strategy's adapter (AdapterBinding), and how the run
continues (Resume).

The loop knows a strategy only through AdapterBinding: which tensors form the adapter, how to
write it into a directory and how to put saved tensors back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterkit.errors import PluginError
from adapterkit.strategy import trainable_named_parameters

if TYPE_CHECKING:
    from torch import Tensor, nn

    from adapterkit.strategy import Strategy
    from adapterkit.task import Task

Tensors = dict[str, "Tensor"]


@dataclass(frozen=True)
class TrainData:
    """The task, its options, its encoded examples and the tokenizer its batches are padded with."""

    task: Task
    task_options: Any
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None
    tokenizer: Any

    def batch(self, indices: list[int], seed: int = 0, epoch: int = 0) -> dict[str, Tensor]:
        """The training examples at `indices` as one batch (on the CPU), for epoch `epoch` of a
        run seeded `seed` (`Task.collate_train`; most tasks ignore both)."""
        from adapterkit.task import collate_train

        examples = [self.train[j] for j in indices]
        return collate_train(self.task, examples, self.tokenizer, self.task_options, seed, epoch)

    def eval_batches(self, size: int) -> list[dict[str, Tensor]]:
        """Every eval example, in order, in batches of at most `size` (none without eval data)."""
        from adapterkit.task import collate_all

        return collate_all(self.task, self.eval or [], self.tokenizer, self.task_options, size)


def check_adapter_matches_trainable(
    model: nn.Module, adapter_tensors: Callable[[nn.Module], Tensors]
) -> None:
    """Raise unless the adapter's tensors are exactly the trainable parameters.

    Compared by storage and shape, so a tied weight counts once and a copy does not pass for the
    parameter. A mismatch means the strategy would save weights that did not train, or train
    weights that are never saved: both lose work silently, so it is an error before step 1.
    """
    trainable = {(p.data_ptr(), tuple(p.shape)): n for n, p in trainable_named_parameters(model)}
    saved: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in adapter_tensors(model).items():
        saved.setdefault((t.data_ptr(), tuple(t.shape)), name)
    not_saved = sorted(n for k, n in trainable.items() if k not in saved)
    not_trained = sorted(n for k, n in saved.items() if k not in trainable)
    if not_saved or not_trained:
        lines = [
            "the strategy's adapter tensors are not exactly the trainable parameters "
            "(a bug in the strategy):"
        ]
        if not_saved:
            lines.append(f"  trainable but not saved: {', '.join(not_saved[:10])}")
        if not_trained:
            lines.append(f"  saved but not trained: {', '.join(not_trained[:10])}")
        raise PluginError("\n".join(lines))


@dataclass(frozen=True)
class AdapterBinding:
    """The strategy's adapter as the loop sees it.

    `tensors(model)`: the tensors that form the adapter (exactly the trainable parameters);
    `save(model, directory)`: write the adapter there, returning its size in bytes;
    `load(model, tensors)`: put saved tensors back (needed only to resume).
    """

    tensors: Callable[[nn.Module], Tensors]
    save: Callable[[nn.Module, Path], int]
    load: Callable[[nn.Module, Tensors], None] | None = None

    @classmethod
    def of(
        cls, strategy: Strategy, options: Any, save: Callable[[nn.Module, Path], int]
    ) -> AdapterBinding:
        """The binding of `strategy` with its `options`; `save` writes the adapter directory."""
        return cls(
            tensors=lambda m: strategy.adapter_state_dict(m, options),
            save=save,
            load=lambda m, t: strategy.load_adapter_state_dict(m, t, options),
        )

    def check_matches_trainable(self, model: nn.Module) -> None:
        """A PluginError unless the adapter is exactly the model's trainable parameters."""
        check_adapter_matches_trainable(model, self.tensors)

    def restore(self, model: nn.Module, tensors: Tensors, where: str) -> None:
        """Put saved `tensors` back into `model`, after checking they are exactly its adapter's."""
        from adapterkit.storage.adapter_format import check_tensors

        check_tensors(tensors, self.tensors(model), where)
        if self.load is None:
            raise TypeError("resuming needs AdapterBinding.load to put the weights back")
        self.load(model, tensors)


@dataclass(frozen=True)
class Resume:
    """How a run continues, and how it can be continued.

    `checkpoint`: a checkpoint from `checkpoints.load_checkpoint` to continue from (None: a fresh
    run); `run_state`: stored in every checkpoint's trainer_state.json (the caller keeps the
    resolved recipe there, to compare on resume); `hint`: ends the message of an interrupted run.
    """

    checkpoint: dict[str, Any] | None = None
    run_state: dict[str, Any] = field(default_factory=dict)
    hint: str = "run the same command again with --resume"
