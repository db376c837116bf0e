"""The parent's preparation: the shared tokens, the step schedule, the recipe numbers, the FLOPs.

The tokens come from adapterkit's own causal LM task (`encode`, ChatML, labels -100 outside the
response), produced once and written to JSONL, so no peer re-templates the text. The schedule is
adapterkit's data order (each epoch a `torch.randperm` seeded with seed + epoch, cut into batches;
a step never spans two epochs); the train file holds the examples in that step order, so a
sequential sampler with the same batch size gives every peer adapterkit's batches. vs_peers.py
checks adapterkit's logged tokens per step against this schedule, so a change of order in the
trainer shows up as a failed check rather than as a silent mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IGNORE = -100


def recipe_numbers(strategy: str) -> dict[str, Any]:
    """lr, schedule, warmup, seed, batch size and LoRA shape from recipes/smollm2/<strategy>.yaml."""
    import yaml

    recipe = yaml.safe_load((ROOT / f"recipes/smollm2/{strategy}.yaml").read_text())
    train, options = recipe["train"], recipe["strategy"].get("options") or {}
    return {
        "lr": float(train["lr"]),
        "schedule": train.get("schedule", "linear"),
        "warmup": int(train.get("warmup", 0)),
        "seed": int(train.get("seed", 0)),
        "batch_size": int(train.get("batch_size", 8)),
        "grad_accum": int(train.get("grad_accum", 1)),
        "r": int(options.get("r", 8)),
        "alpha": float(options.get("alpha", 16)),
    }


@dataclass
class Shared:
    """The files every peer reads, and what the schedule says each step trains."""

    model_path: str
    train_file: Path
    eval_file: Path
    first_batch_file: Path
    step_tokens: list[int]  # real tokens per step
    step_targets: list[int]  # positions with a next-token target per step
    step_lengths: list[list[int]]  # each step's example lengths (for the attention FLOPs)
    eval_targets: int
    n_examples: int

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shared:
        files = ("train_file", "eval_file", "first_batch_file")
        return cls(**{k: Path(v) if k in files else v for k, v in data.items()})


def encode(rows: int, eval_rows: int, max_length: int) -> tuple[str, list[dict], list[dict]]:
    """(model path, train examples, eval examples) through adapterkit's causal LM task."""
    from adapterkit.plugins import load_registry
    from adapterkit.storage import sources

    source = sources.resolve("smollm2-135m")
    tokenizer = sources.load_tokenizer(source)
    task = load_registry().task("causal_lm")
    options = task.Options(max_length=max_length)
    data = ROOT / "data/instructions"
    train = task.encode(task.read(data / "train.jsonl", options)[:rows], tokenizer, options)
    evals = task.encode(task.read(data / "eval.jsonl", options)[:eval_rows], tokenizer, options)
    return str(source.path), list(train), list(evals)


def schedule(n: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """adapterkit's batches (trainer data order) for the first `steps` steps, grad_accum 1."""
    import torch

    out: list[list[int]] = []
    epoch = 0
    while len(out) < steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out += [order[i : i + batch_size] for i in range(0, n, batch_size)]
        epoch += 1
    out = out[:steps]
    short = [i + 1 for i, b in enumerate(out) if len(b) != batch_size]
    if short:
        raise SystemExit(
            f"step(s) {short} would get a partial batch ({n} examples, batch {batch_size}): a "
            "sequential sampler could not reproduce that; use --rows a multiple of the batch size "
            "or fewer --max-steps"
        )
    return out


def _targets(example: dict) -> int:
    return sum(1 for x in example["labels"][1:] if x != IGNORE)


def _write(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def prepare(
    out: Path, rows: int, eval_rows: int, max_length: int, steps: int, numbers: dict
) -> Shared:
    """Encode once, lay the train examples out in step order, write the three files.

    `numbers`: the recipe numbers of every strategy run; they must share batch size and seed.
    """
    if len({(n["batch_size"], n["seed"], n["grad_accum"]) for n in numbers.values()}) != 1:
        raise SystemExit(f"the recipes differ in batch size, seed or grad_accum: {numbers}")
    numbers = next(iter(numbers.values()))
    if numbers["grad_accum"] != 1:
        raise SystemExit("the protocol assumes grad_accum 1 (one batch a step)")
    model_path, train, evals = encode(rows, eval_rows, max_length)
    batches = schedule(len(train), numbers["batch_size"], numbers["seed"], steps)
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ordered = [{k: train[i][k] for k in ("input_ids", "labels")} for b in batches for i in b]
    return Shared(
        model_path=model_path,
        train_file=_write(folder / "train.jsonl", ordered),
        eval_file=_write(folder / "eval.jsonl", [dict(e) for e in evals]),
        first_batch_file=_write(folder / "first_batch.jsonl", ordered[: len(batches[0])]),
        step_tokens=[sum(len(train[i]["input_ids"]) for i in b) for b in batches],
        step_targets=[sum(_targets(train[i]) for i in b) for b in batches],
        step_lengths=[[len(train[i]["input_ids"]) for i in b] for b in batches],
        eval_targets=sum(_targets(e) for e in evals),
        n_examples=len(train),
    )


def flops_per_step(model_path: str, strategy: str, r: int, lengths: list[list[int]]) -> dict:
    """Model FLOPs of each training step (see `flop_formula`), and the terms they are made of."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    h, inter, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
    )
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    shapes = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h)]
    shapes += [(h, inter), (h, inter), (inter, h)]  # q k v o, gate up down
    linear = layers * sum(i * o for i, o in shapes)
    lora = layers * sum(r * (i + o) for i, o in shapes)
    head = config["vocab_size"] * h
    # full: everything trains; lora, qlora: a frozen base (forward + input gradients) and the
    # adapters' forward, input and weight gradients
    frozen = 4 * (linear + head) + 6 * lora
    per_token = 6 * (linear + head) if strategy == "full" else frozen
    d_attn = heads * hd
    per_step = [
        sum(per_token * n + 6 * n * (n + 1) * d_attn * layers for n in step) for step in lengths
    ]
    terms = {"linear": linear, "lora": lora, "head": head, "d_attn": d_attn, "layers": layers}
    return {"per_step": per_step, "per_token_dense": per_token, "terms": terms}


def flop_formula() -> str:
    return (
        "Model FLOPs per real token, no padding and no recompute counted. Frozen base (lora, "
        "qlora): forward 2N plus the backward through the activations 2N (no weight gradients), "
        "N = the block linear weights plus the LM head (tied embeddings, counted on every real "
        "token), plus 6 N_lora (forward, input and weight gradients of the adapters); full: 6 "
        "(N_linear + N_head). Attention: 12 t d_attn per layer for a token at position t "
        "(QK^T and AV, 4 t d_attn forward, twice that backward), summed over each example's "
        "actual length. SmolLM2-135M, r=8: 4(106.17M + 28.31M) + 6(2.44M) = 0.553 GFLOP a token "
        "plus attention (about 0.012 GFLOP at this data's mean length of 111)."
    )
