"""The encoder benchmark's preparation (parent side): the recipe, the tokens, the schedule, FLOPs.

The recipe is resolved with exactly the overrides the adapterkit row gets, and the rows are read,
split (the recipe's fixed holdout) and encoded by adapterkit's own code (`api._read_data`, the
task's `setup` and `encode`), so the peer's JSONL holds the very token ids adapterkit trains on.
The schedule is adapterkit's length-grouped data order (`optim.data_windows` with the lengths
`optim.grouping_lengths` gives the trainer): the parent checks adapterkit's logged tokens per step
against it, so a change of order in the trainer shows up as a failed check. The protocol trains
exactly one epoch (rows a multiple of the batch size), so adapterkit and the peer, whose
`group_by_length` sampler groups differently, train the same examples, each once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "recipes/minilm/sst2-lora.yaml"


def adapterkit_overrides(
    rows: int, eval_rows: int, batch_size: int, threads: int | None
) -> list[str]:
    """The protocol's overrides of the shipped recipe (the benchmark's --set extras come after)."""
    overrides = [
        f"data.max_train_rows={rows}",
        f"data.max_eval_rows={eval_rows}",
        "data.test=null",  # the eval slice is the one figure both rows report
        f"train.max_steps={rows // batch_size}",  # one epoch
        "train.eval_every=null",  # no selection evals mid-run; the start and final evals only
        "train.log_every=1",  # every step's tokens and loss, to check the schedule
    ]
    return overrides + ([f"train.threads={threads}"] if threads else [])


def resolve(overrides: list[str]) -> Any:
    from adapterkit import recipe

    return recipe.resolve(ROOT / RECIPE, overrides)


def numbers(recipe: Any) -> dict[str, Any]:
    """What the peer copies from the resolved recipe."""
    train, lora = recipe.train, recipe.strategy.options
    return {
        "lr": float(train.lr), "schedule": train.schedule, "warmup": int(train.warmup),
        "seed": int(train.seed), "batch_size": int(train.batch_size),
        "eval_batch_size": int(train.eval_batch_size or train.batch_size),
        "grad_accum": int(train.grad_accum), "max_grad_norm": train.max_grad_norm,
        "weight_decay": float(train.weight_decay), "max_steps": int(train.max_steps),
        "r": int(lora.r), "alpha": float(lora.alpha), "dropout": float(lora.dropout),
        "target_modules": lora.target_modules, "max_length": int(recipe.task.options.max_length),
        "group_by_length": bool(train.group_by_length), "model": recipe.model.name,
    }  # fmt: skip


@dataclass
class EncShared:
    """The files the peer reads, and what adapterkit's schedule trains each step."""

    model_path: str
    train_file: Path
    eval_file: Path
    labels: list[str]  # the head's label names, in order
    lengths: list[int]  # real tokens of each training example
    checksums: list[int]  # the sum of each training example's token ids
    schedule: list[list[int]]  # adapterkit's examples per step
    eval_rows: int

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncShared:
        files = ("train_file", "eval_file")
        fields: dict[str, Any] = {k: Path(v) if k in files else v for k, v in data.items()}
        return cls(**fields)

    def step_tokens(self, steps: list[list[int]]) -> list[int]:
        return [sum(self.lengths[i] for i in step) for step in steps]

    def step_checksums(self, steps: list[list[int]]) -> list[int]:
        return [sum(self.checksums[i] for i in step) for step in steps]

    def step_padded(self, steps: list[list[int]]) -> list[int]:
        return [len(step) * max(self.lengths[i] for i in step) for step in steps]


class Encoded(NamedTuple):
    model_path: str
    task: Any
    options: Any  # the task options, label names filled in from the training rows
    tokenizer: Any
    train: list[dict]
    evals: list[dict]


def _encode(recipe: Any) -> Encoded:
    """The model's directory and the examples, as adapterkit's `train` makes them."""
    from adapterkit import api
    from adapterkit.plugins import load_registry
    from adapterkit.storage import sources

    task = load_registry().task(recipe.task.name)
    train_rows, eval_rows, _ = api._read_data(task, recipe)  # the holdout split, the row limits
    options = task.setup(train_rows, recipe.task.options)  # the label names
    source = sources.resolve(recipe.model.name)
    tokenizer = sources.load_tokenizer(source)
    train = list(task.encode(train_rows, tokenizer, options))
    evals = list(task.encode(eval_rows, tokenizer, options))
    return Encoded(str(source.path), task, options, tokenizer, train, evals)


def adapterkit_schedule(recipe: Any, encoded: Encoded) -> list[list[int]]:
    """adapterkit's batches for `recipe.train.max_steps` steps (grad_accum 1), grouped as it groups."""
    from adapterkit.training import optim
    from adapterkit.training.inputs import TrainData

    cfg, train = recipe.train, encoded.train
    data = TrainData(encoded.task, encoded.options, train, None, encoded.tokenizer)
    windows = optim.data_windows(len(train), cfg, 0, 0, optim.grouping_lengths(data, cfg))
    return [next(windows).batches[0] for _ in range(cfg.max_steps)]


def _write(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def _row(example: dict, index: int | None) -> dict:
    row = {"input_ids": example["input_ids"], "labels": example["label"]}
    if "token_type_ids" in example:
        row["token_type_ids"] = example["token_type_ids"]
    return row if index is None else {**row, "index": index}


def prepare(out: Path, recipe: Any) -> EncShared:
    """Encode once, write the peer's train and eval JSONL, and adapterkit's schedule."""
    cfg = recipe.train
    if cfg.grad_accum != 1:
        raise SystemExit("the protocol assumes grad_accum 1 (one batch a step)")
    encoded = _encode(recipe)
    train, evals = encoded.train, encoded.evals
    if len(train) != cfg.max_steps * cfg.batch_size:
        raise SystemExit(
            f"{len(train)} training examples for {cfg.max_steps} steps of {cfg.batch_size}: the "
            "protocol trains exactly one epoch; give --rows a multiple of the batch size, at most "
            "the rows the training file has after the recipe's holdout"
        )
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    return EncShared(
        model_path=encoded.model_path,
        train_file=_write(folder / "train.jsonl", [_row(e, i) for i, e in enumerate(train)]),
        eval_file=_write(folder / "eval.jsonl", [_row(e, i) for i, e in enumerate(evals)]),
        labels=list(encoded.options.labels),
        lengths=[len(e["input_ids"]) for e in train],
        checksums=[sum(e["input_ids"]) for e in train],
        schedule=adapterkit_schedule(recipe, encoded),
        eval_rows=len(evals),
    )


def flops(model_path: str, r: int, lengths: list[int], num_labels: int) -> dict[str, Any]:
    """Model FLOPs of the epoch (every example once; see `flop_formula`), and their terms."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    h, inter, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
    )
    shapes = [(h, h)] * 4 + [(h, inter), (inter, h)]  # q k v attention.output, intermediate, output
    linear = layers * sum(i * o for i, o in shapes)
    lora = layers * sum(r * (i + o) for i, o in shapes)
    per_token = 4 * linear + 6 * lora
    head = 6 * (h * h + h * num_labels)  # pooler + classifier, per row, trained
    attention = sum(12 * n * n * h * layers for n in lengths)
    total = per_token * sum(lengths) + head * len(lengths) + attention
    terms = {"linear": linear, "lora": lora, "per_token_dense": per_token, "head_per_row": head}
    return {"total": total, "per_token": total / sum(lengths), "terms": terms}


def flop_formula() -> str:
    return (
        "Model FLOPs per real token, no padding counted: a frozen base, forward 2N plus the "
        "backward through the activations 2N (no weight gradients), N = the encoder's linear "
        "weights, plus 6 N_lora (forward, input and weight gradients of the adapters); the pooler "
        "and classifier trained whole, 6 x their weights once per row; attention (bidirectional): "
        "12 n d per layer for each token of an n-token row (QK^T and AV, 4 n d forward, twice "
        "that backward). MiniLM-L6, r=8: 4 x 10.62M + 6 x 0.33M = 44.5 MFLOP a token, plus "
        "attention (0.028 MFLOP x n a token in an n-token row) and the head."
    )
