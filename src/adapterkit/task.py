"""The Task protocol: how a kind of data becomes batches, a loss and metrics.

Register a task class with the `register_tasks` hook. Tasks are stateless; every method receives the
task's parsed `options`. Batches are plain dicts of tensors; each must hold `attention_mask` (the
trainer counts non-padding tokens from it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from adapterkit.sampling import Settings
    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts


@runtime_checkable
class Task(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type]
    # The eval metric used to pick the best checkpoint, and whether higher is better (a task whose
    # options choose the metric also defines `selection(options)`, below; the core asks `selection`).
    selection_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def model_parts(self, source: ModelSource, options: Any) -> ModelParts:
        """Which modules form the head, from the model's config alone (no weights read)."""
        ...

    def load_model(
        self, source: ModelSource, options: Any, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        """Load (model, tokenizer) for this task, passing `load_kwargs` to `from_pretrained`."""
        ...

    def read(self, path: Path, options: Any) -> list[dict[str, Any]]:
        """Read a data file into rows; a bad line raises DataError naming the file and line."""
        ...

    def setup(self, rows: list[dict[str, Any]], options: Any) -> Any:
        """Options completed from the training rows before the model is built.

        Classification fills in the label names here (sorted, unless the recipe gave them), so the
        new head gets its size and the manifest records them. Return `options` when nothing is
        data-derived.
        """
        ...

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Any) -> list[dict]:
        """Tokenize rows into examples (lists of ids, labels). May drop rows; says how many."""
        ...

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Any
    ) -> dict[str, torch.Tensor]:
        """Pad a list of examples into one batch."""
        ...

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms the batch holds (response tokens, examples, labelled words).

        The trainer divides summed losses by the total over an accumulation window, so batch
        size and accumulation do not change the gradient.
        """
        ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The *summed* (not averaged) loss over the batch's targets."""
        ...

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Any
    ) -> dict:
        """Metrics over all batches, including `eval_loss` (mean per target over the whole set)."""
        ...

    def manifest(self, options: Any, tokenizer: Any) -> dict[str, Any]:
        """What a reloaded adapter needs to use this task again (prompt format, label names)."""
        ...


# ---- optional members, with their defaults ------------------------------------------------------
# A task may also define:
#   description: ClassVar[str]   (default: the class docstring)  shown by `adapterkit tasks`
#   meta_model(config, options) -> nn.Module
#       Its model class built from a transformers `config` on the meta device, in float32, no weights
#       read (the planner applies strategies to it). Without it, `adapterkit plan` cannot plan the task.
#   logits_bytes(batch, length, config, options) -> int
#       Bytes of the logits and the loss's copies of them at their largest, for `batch` rows of
#       `length` tokens. Default: three float32 copies of [batch, length, vocab_size] (a causal LM's).
#   collate_train(examples, tokenizer, options, seed, epoch) -> batch
#       A training batch of epoch `epoch` (0, 1, ...) in a run seeded `seed` (`train.seed`), for a
#       task that draws something afresh each epoch from a key instead of hidden RNG state (masked
#       LM: its masks), so a resumed run draws the same. Default: `collate`.
#   packs(options) -> bool
#       Whether a step's rows go into the model packed as one sequence (no padding, attention only
#       within each row). The planner then sees one row of batch x length tokens. Default: False.
#   selection(options) -> tuple[str, bool]
#       The eval metric that picks best/ and whether higher is better, when the options choose it
#       (called with the options `setup` completed). Default: (selection_metric, higher_is_better).
#   predict(model, tokenizer, rows, options, batch_size) -> list[dict]   for `adapterkit predict`
#       (a label and score per row, or a tag per word); rows may lack labels.
#   generate(model, tokenizer, prompt, options, max_new_tokens) -> str    for `adapterkit generate`
#       The greedy reply to one prompt (the old single-prompt form; `generate_batch` supersedes it).
#   generate_batch(model, tokenizer, prompts, options, settings) -> list[str]
#       The reply to each prompt (strings a user typed, put in the task's prompt format), in order,
#       as `settings` (adapterkit.sampling.Settings) say: max_new_tokens, batch_size, greedy
#       (temperature 0) or seeded sampling (temperature, top_p, seed), with the `model.generate`
#       arguments `sampling.generate_kwargs` gives. Default: `generate` once per prompt, greedy only.
#   read_prompts(path, options) -> list[dict]
#       Rows of a file to generate for (`adapterkit predict`): the task's data format, where the
#       response (the target) may be missing. Default: `read`.
#   generate_rows(model, tokenizer, rows, options, settings) -> list[dict]
#       `adapterkit predict` for a task that generates: per row (from `read_prompts`), its line,
#       its prompt, the generated "prediction" and its "references" where it has them, as
#       `settings` say. Default: `predict(...)` with `settings.batch_size`, default settings only.
#   generated_metrics(model, tokenizer, examples, options) -> dict
#       Figures of text the model generates for the encoded eval `examples` (BLEU, ROUGE, exact
#       match...), added to `evaluate`'s wherever the core evaluates: the evals during training, the
#       test set, `adapterkit eval`. Called with the model in eval mode, without gradients; the task
#       bounds the work itself (how many rows, how many new tokens). Default: no such figures.
#   logits(model, batch) -> Tensor
#       Float32 logits of a batch (on the model's device; called without gradients, in eval mode),
#       as a [N, C] tensor: one row per scored position, whose softmax is the model's distribution
#       there. `adapterkit merge` compares a merged model's with base + adapter's (max difference,
#       KL). Default: `model(input_ids, attention_mask[, token_type_ids]).logits`, the real tokens
#       of a [rows, tokens, C] output (or the [rows, C] output itself); a packed batch (position
#       ids, a mask of ones) goes in as position ids, transformers' own packed-sequence form.
#   generation_settings(options, tokenizer) -> dict[str, Any]
#       Generation-config fields an exported (merged) model carries, e.g. the end-of-turn token
#       among `eos_token_id` for a chat model, so plain `generate` stops where adapterkit's does.
#       Default: none (the base model's generation config stays as it is).
# The core reaches them only through the functions below, never by a task's name.


def meta_model(task: Task, config: Any, options: Any) -> nn.Module:
    """`task.meta_model(config, options)`; a PluginError naming the task when it has none."""
    from adapterkit.errors import PluginError

    build = getattr(task, "meta_model", None)
    if build is None:
        raise PluginError(
            f"task '{task.name}' cannot be planned: it has no meta_model(config, options) "
            "member (its model class built on the meta device)"
        )
    return build(config, options)


def logits_bytes(task: Task, batch: int, length: int, config: Any, options: Any) -> int:
    """`task.logits_bytes(...)`, or three float32 copies of [batch, length, vocab_size]."""
    own = getattr(task, "logits_bytes", None)
    if own is not None:
        return int(own(batch, length, config, options))
    return 3 * batch * length * int(getattr(config, "vocab_size", 0) or 0) * 4


def packs(task: Task, options: Any) -> bool:
    """`task.packs(options)`, or False (rows padded to the longest of their batch)."""
    own = getattr(task, "packs", None)
    return bool(own(options)) if own is not None else False


def generated_metrics(
    task: Task, model: nn.Module, tokenizer: Any, examples: list[dict], options: Any
) -> dict[str, Any]:
    """`task.generated_metrics(...)` on `examples`, or {} (no such member, or no examples)."""
    own = getattr(task, "generated_metrics", None)
    if own is None or not examples:
        return {}
    return dict(own(model, tokenizer, examples, options))


def selection(task: Task, options: Any) -> tuple[str, bool]:
    """`task.selection(options)`, or the class's (selection_metric, higher_is_better)."""
    own = getattr(task, "selection", None)
    if own is not None:
        metric, higher = own(options)
        return str(metric), bool(higher)
    return str(task.selection_metric), bool(task.higher_is_better)


def collate_train(
    task: Task, examples: list[dict], tokenizer: Any, options: Any, seed: int, epoch: int
) -> dict[str, torch.Tensor]:
    """`task.collate_train(examples, ..., seed=seed, epoch=epoch)`, or `task.collate(...)`."""
    own = getattr(task, "collate_train", None)
    if own is not None:
        return own(examples, tokenizer, options, seed=seed, epoch=epoch)
    return task.collate(examples, tokenizer, options)


def collate_all(
    task: Task, examples: list[dict], tokenizer: Any, options: Any, size: int
) -> list[dict[str, torch.Tensor]]:
    """`examples` as the task's batches of at most `size` rows, in order."""
    return [
        task.collate(examples[i : i + size], tokenizer, options)
        for i in range(0, len(examples), size)
    ]


def generates(task: object) -> bool:
    """Whether a task (or task class) generates text (`generate_batch`, or the single-prompt
    `generate`)."""
    return hasattr(task, "generate_batch") or hasattr(task, "generate")


def generate_batch(
    task: Task,
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    options: Any,
    settings: Settings,
) -> list[str]:
    """`task.generate_batch(...)`, or `task.generate(...)` once per prompt (greedy only: a task
    with just the single-prompt form cannot sample); a UserError for a task that does not generate."""
    from adapterkit.errors import UserError

    own = getattr(task, "generate_batch", None)
    if own is not None:
        return [str(t) for t in own(model, tokenizer, list(prompts), options, settings)]
    single = getattr(task, "generate", None)
    if single is None:
        raise UserError(f"task '{task.name}' does not generate text; use `adapterkit predict`")
    if settings.sampling:
        raise UserError(
            f"task '{task.name}' generates greedily only (it has no generate_batch member); "
            "use temperature 0"
        )
    limit = settings.new_tokens(options)
    return [str(single(model, tokenizer, p, options, max_new_tokens=limit)) for p in prompts]


def read_prompts(task: Task, path: Path, options: Any) -> list[dict[str, Any]]:
    """`task.read_prompts(path, options)` (rows whose response may be missing), or `task.read`."""
    own = getattr(task, "read_prompts", None)
    return own(path, options) if own is not None else task.read(path, options)


def generate_rows(
    task: Task,
    model: nn.Module,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    options: Any,
    settings: Settings,
) -> list[dict[str, Any]]:
    """`adapterkit predict`: `task.generate_rows(...)`, or `task.predict(...)` with
    `settings.batch_size` when nothing else is chosen; a UserError for a task that has neither,
    or whose predictions take no generation settings."""
    from adapterkit.errors import UserError

    own = getattr(task, "generate_rows", None)
    if own is not None:
        return list(own(model, tokenizer, rows, options, settings))
    predict = getattr(task, "predict", None)
    if predict is None:
        raise UserError(f"task '{task.name}' has no predictions; use `adapterkit generate`")
    if settings.chosen:
        raise UserError(
            f"task '{task.name}' predicts without generation settings (max_new_tokens, "
            "temperature, top_p, seed); leave them out"
        )
    return list(predict(model, tokenizer, rows, options, batch_size=settings.batch_size))


def logits(task: Task, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`task.logits(model, batch)`, or the model's own `.logits` at the batch's real tokens, as
    float32 [N, C] (see the optional members above)."""
    own = getattr(task, "logits", None)
    if own is not None:
        return own(model, batch)
    mask = batch["attention_mask"]
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"]}
    if "position_ids" in batch and bool(mask.all()):
        inputs["position_ids"] = batch[
            "position_ids"
        ]  # packed rows: no mask, as transformers reads
    else:
        inputs["attention_mask"] = mask
    config = getattr(model, "config", None)
    if "token_type_ids" in batch and (getattr(config, "type_vocab_size", 0) or 0) > 1:
        inputs["token_type_ids"] = batch["token_type_ids"]
    if hasattr(config, "use_cache"):
        inputs["use_cache"] = False  # a decoder would build a cache no one reads (and packing
        # is only read from position ids without one)
    out = model(**inputs).logits.float()
    if out.dim() == 3 and tuple(out.shape[:2]) == tuple(mask.shape):
        return out[mask.to(out.device).bool()]
    return out.reshape(-1, out.shape[-1])


def generation_settings(task: Task, options: Any, tokenizer: Any) -> dict[str, Any]:
    """`task.generation_settings(options, tokenizer)`, or {}."""
    own = getattr(task, "generation_settings", None)
    return dict(own(options, tokenizer)) if own is not None else {}
