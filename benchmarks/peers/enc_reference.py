"""The encoder benchmark's reference child: the two initial models compared, first-step losses.

    PYTHONPATH=benchmarks .venv/bin/python -m peers.enc_reference --spec SPEC.json
        --overrides OVERRIDES.json --batches BATCHES.json --out FILE.json

Construction: adapterkit's initial model (`build_model`, seeded as `adapterkit train` seeds it,
float32) and the peer script's (peers/enc_hf.py `build_model`, float32 base) must have the same
parameter names, the same trainable set and bit-identical values: the same new head, the same
LoRA initialisation (B = 0), the same frozen weights. Then neither side's first-step loss can
differ from the other's by its model, only by its batch, its precision and its dropout.

First-step losses: for each named batch (adapterkit's first step, each peer run's first step),
that model's mean cross entropy per row in float32, eval mode (no dropout), LoRA B = 0. A
freshly initialised head puts every loss near ln 2 whatever the input, so this check is weak by
nature; the data checks (token ids per step) and the construction check carry the weight.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from peers import common, enc_hf, enc_prepare


def adapterkit_model(overrides: list[str], labels: list[str]) -> Any:
    """adapterkit's initial model as `adapterkit train` builds it, but in float32."""
    import dataclasses

    from adapterkit.build import build_model
    from adapterkit.plugins import load_registry
    from adapterkit.storage import sources

    recipe = enc_prepare.resolve(overrides)
    registry = load_registry()
    task, strategy = registry.task(recipe.task.name), registry.strategy(recipe.strategy.name)
    options = dataclasses.replace(recipe.task.options, labels=labels)
    source = sources.resolve(recipe.model.name)
    built = build_model(
        source, task, options, strategy, recipe.strategy.options, seed=recipe.train.seed
    )
    return built.model


def compare(ours: Any, theirs: Any) -> dict[str, Any]:
    """Names, trainable set and values of two models' parameters."""
    import torch

    a, b = dict(ours.named_parameters()), dict(theirs.named_parameters())
    trainable = {n for n, p in a.items() if p.requires_grad}
    shared = sorted(set(a) & set(b))
    differing = [n for n in shared if a[n].shape != b[n].shape or not torch.equal(a[n], b[n])]
    result = {
        "only_adapterkit": sorted(set(a) - set(b))[:10],
        "only_peer": sorted(set(b) - set(a))[:10],
        "trainable_differs": sorted(trainable ^ {n for n, p in b.items() if p.requires_grad})[:10],
        "differing_values": differing[:10],
        "trainable_params": sum(a[n].numel() for n in trainable),
    }
    result["identical"] = not any(v for k, v in result.items() if k != "trainable_params")
    return result


def first_step_losses(
    model: Any, tokenizer: Any, train_file: str, batches: dict[str, list[int]]
) -> dict:
    """Each batch's mean loss per row, collated and scored by adapterkit's task (eval mode)."""
    import torch

    from adapterkit.plugins import load_registry

    task = load_registry().task("sequence_classification")
    examples = [
        {**{k: v for k, v in r.items() if k not in ("labels", "index")}, "label": r["labels"]}
        for r in common.read_jsonl(train_file)
    ]
    model.eval()
    out = {}
    with torch.no_grad():
        for name, indices in batches.items():
            batch = task.collate([examples[i] for i in indices], tokenizer, None)
            out[name] = float(task.loss(model, batch)) / task.targets(batch)
    return out


def main(argv: list[str] | None = None) -> dict:
    common.offline()
    parser = argparse.ArgumentParser()
    for name in ("--spec", "--overrides", "--batches", "--out"):
        parser.add_argument(name, type=Path, required=True)
    args = parser.parse_args(argv)
    spec = enc_hf.EncSpec.load(args.spec)
    common.set_threads(spec.threads)
    overrides = json.loads(args.overrides.read_text())
    ours = adapterkit_model(overrides["overrides"], overrides["labels"])
    theirs = enc_hf.build_model(spec, bf16_base=False)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    batches = json.loads(args.batches.read_text())
    result = {
        "construction": compare(ours, theirs),
        "first_step_loss": first_step_losses(theirs, tokenizer, spec.train_data, batches),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
