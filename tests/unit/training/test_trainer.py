"""The training loop on a tiny Llama with the causal LM task and a stand-in strategy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapterkit.errors import PluginError
from adapterkit.strategy import freeze, trainable_state_dict, unfreeze
from adapterkit.tasks.causal_lm import CausalLM, Options
from adapterkit.testing import tiny_llama
from adapterkit.training.inputs import AdapterBinding, TrainData
from adapterkit.training.trainer import (
    TrainConfig,
    accumulate_gradients,
    check_adapter_matches_trainable,
    fit,
)

TASK = CausalLM()
OPTS = Options()
ROWS = [
    {"instruction": "hello", "output": "the cat"},
    {"instruction": "write a list of four big red things", "output": "the sun , the fire ."},
    {"instruction": "why", "input": "the dog is sad", "output": "no"},
    {"instruction": "tell me", "output": "one two three four five six seven eight nine ten"},
]


@pytest.fixture(scope="module")
def examples(tok):
    return TASK.encode(ROWS, tok, OPTS)


def head_only(model):
    """A stand-in strategy: train the LM head only."""
    freeze(model)
    unfreeze(model.lm_head)
    return model


def save_adapter(model, path: Path) -> int:
    """Write the trainable tensors into `path`, leaving other files there alone."""
    tensors = {k: v.detach().contiguous() for k, v in trainable_state_dict(model).items()}
    f = Path(path) / "adapter_model.safetensors"
    save_file(tensors, f)
    return f.stat().st_size


def run(model, tok, train, eval_, out, **cfg):
    return fit(
        model,
        TrainData(TASK, OPTS, train, eval_, tok),
        AdapterBinding(trainable_state_dict, save_adapter),
        TrainConfig(**cfg),
        out,
        progress=False,
    )


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ---- gradient accumulation -------------------------------------------------------------------------


def test_accumulation_gives_the_same_gradient_as_one_big_batch(tok, examples):
    lengths = {len(e["input_ids"]) for e in examples}
    assert len(lengths) == len(examples)  # unequal lengths: padding and target counts differ

    def grads(batch_size: int) -> tuple[float, dict[str, torch.Tensor]]:
        model = tiny_llama(tied=False)
        batches = [
            TASK.collate(examples[i : i + batch_size], tok, OPTS)
            for i in range(0, len(examples), batch_size)
        ]
        loss, _ = accumulate_gradients(model, TASK, batches)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss4, g4 = grads(4)  # batch 4 x accumulation 1
    loss1, g1 = grads(1)  # batch 1 x accumulation 4
    assert abs(loss4 - loss1) < 1e-6
    for name in g4:
        torch.testing.assert_close(g1[name], g4[name], rtol=0, atol=1e-6, msg=name)


def test_fit_step_is_invariant_to_accumulation(tmp_path, tok, examples):
    logs = []
    for bs, accum in ((4, 1), (1, 4)):
        out = tmp_path / f"bs{bs}"
        run(
            tiny_llama(tied=False),
            tok,
            examples,
            None,
            out,
            max_steps=1,
            batch_size=bs,
            grad_accum=accum,
            precision="fp32",  # an fp32 exactness check (the default, auto, is bf16 on AMX CPUs)
        )
        logs.append(read_log(out)[0])
    big, small = logs
    assert big["tokens"] == small["tokens"]
    assert abs(big["loss"] - small["loss"]) < 1e-6
    assert abs(big["grad_norm"] - small["grad_norm"]) < 1e-6


def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path, tok, examples):
    logs = []
    for gc in (False, True):
        out = tmp_path / f"gc{gc}"
        model = tiny_llama(tied=False)
        freeze(model.model.embed_tokens)  # frozen embeddings: the input needs no grad trick
        run(model, tok, examples, None, out, max_steps=1, batch_size=4, gradient_checkpointing=gc)
        assert model.model.layers[0].gradient_checkpointing is gc
        logs.append(read_log(out)[0])
    off, on = logs
    assert abs(off["loss"] - on["loss"]) < 1e-6
    assert abs(off["grad_norm"] - on["grad_norm"]) < 1e-5


# ---- the adapter check -----------------------------------------------------------------------------


def test_adapter_must_be_exactly_the_trainable_parameters():
    model = head_only(tiny_llama(tied=False))
    model.model.norm.weight.requires_grad_(True)
    check_adapter_matches_trainable(model, trainable_state_dict)  # equal: passes

    def one_too_few(m):
        return {k: v for k, v in trainable_state_dict(m).items() if k != "model.norm.weight"}

    with pytest.raises(PluginError, match=r"trainable but not saved: model\.norm\.weight"):
        check_adapter_matches_trainable(model, one_too_few)

    def one_frozen_extra(m):
        return {**trainable_state_dict(m), "embed": m.model.embed_tokens.weight}

    with pytest.raises(PluginError, match="saved but not trained: embed"):
        check_adapter_matches_trainable(model, one_frozen_extra)

    def copies(m):
        return {k: v.detach().clone() for k, v in trainable_state_dict(m).items()}

    with pytest.raises(PluginError, match="trainable but not saved"):
        check_adapter_matches_trainable(model, copies)


def test_tied_weights_count_once():
    model = head_only(tiny_llama(tied=True))  # lm_head.weight is embed_tokens.weight
    both = {"lm_head.weight": model.lm_head.weight, "embed": model.model.embed_tokens.weight}
    check_adapter_matches_trainable(model, lambda m: both)


def test_fit_refuses_a_mismatched_adapter(tmp_path, tok, examples):
    model = head_only(tiny_llama(tied=False))
    with pytest.raises(PluginError):
        fit(
            model,
            TrainData(TASK, OPTS, examples, None, tok),
            AdapterBinding(lambda m: {}, save_adapter),
            TrainConfig(max_steps=1),
            tmp_path,
            progress=False,
        )


def test_memory_meter_sees_a_new_peak_after_reset():
    # In a fresh process: a long test session's allocator may hand back pages that are already
    # resident, which says nothing about the meter.
    code = textwrap.dedent(
        """
        import sys
        from adapterkit.training.measure import MemoryMeter, current_rss_bytes

        meter = MemoryMeter("cpu")
        meter.reset()
        if not meter.reset().reset_done:
            sys.exit(3)  # /proc/self/clear_refs not writable here
        base = current_rss_bytes()
        block = bytearray(b"\\x01") * (200 * 2**20)  # every byte written: every page resident
        high = meter.peak()
        assert high.kind == "process_rss" and high.bytes >= base + 190 * 2**20, (high, base)
        del block
        before = meter.reset()  # the peak so far, then a fresh high-water mark
        assert before.bytes >= base + 190 * 2**20, (before, base)
        assert meter.peak().bytes < high.bytes - 100 * 2**20, (meter.peak(), high)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode == 3:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert out.returncode == 0, out.stderr


# ---- a whole run -----------------------------------------------------------------------------------


def test_fit_writes_log_metrics_checkpoints_and_best(tmp_path, tok, examples):
    model = head_only(tiny_llama(tied=False))
    before = model.lm_head.weight.detach().clone()
    frozen_before = model.model.norm.weight.detach().clone()
    out = tmp_path / "run"
    metrics = run(
        model,
        tok,
        examples,
        examples[:2],
        out,
        max_steps=6,
        batch_size=2,
        eval_every=3,
        checkpoint_every=2,
        keep_checkpoints=2,
        lr=1e-2,
        warmup=2,
    )

    assert not torch.equal(model.lm_head.weight, before)
    assert torch.equal(model.model.norm.weight, frozen_before)

    lines = read_log(out)
    steps = [x for x in lines if "eval" not in x]
    evals = [x for x in lines if "eval" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6]
    assert [x["step"] for x in evals] == [0, 3, 6]  # 0: eval_at_start, the "before" figure
    for x in steps:
        assert {"epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed"} <= set(x)
        assert math.isfinite(x["loss"]) and x["tokens_per_s"] > 0
    assert steps[0]["lr"] == 0.0 and steps[2]["lr"] == pytest.approx(1e-2)  # warmup, then decay
    assert steps[0]["epoch"] == 0.5 and steps[-1]["epoch"] == 3.0

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in (
        "train_loss",
        "tokens_per_s",
        "peak_memory_bytes",
        "load_peak_memory_bytes",
        "trainable_params",
        "total_params",
        "trainable_percent",
        "adapter_bytes",
        "wall_time_s",
        "train_time_s",
    ):
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
        assert metrics[key] > 0, key
    assert metrics["steps"] == 6 and metrics["epochs"] == 3.0
    assert metrics["trainable_params"] == 128 * 32  # the untied head only
    assert metrics["final_dir"] == "." and metrics["best_dir"] == "best"
    assert metrics["final_eval"] == evals[-1]["eval"]
    assert metrics["initial_eval"] == evals[0]["eval"]
    assert metrics["final_eval"]["eval_loss"] < metrics["initial_eval"]["eval_loss"]
    assert metrics["best_step"] in (3, 6)
    assert set(metrics["best_eval"]) == {"eval_loss", "perplexity", "eval_tokens"}
    assert metrics["peak_memory_kind"] == "process_rss"
    assert set(metrics["definitions"]) >= {"tokens_per_s", "peak_memory_bytes", "best_eval"}

    assert (out / "adapter_model.safetensors").is_file()
    best = load_file(out / "best" / "adapter_model.safetensors")
    assert set(best) == {"lm_head.weight"}

    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000006"]  # no temp dirs
    last = ckpts / "step-000006"
    assert {p.name for p in last.iterdir()} == {
        "trainable.safetensors",
        "optimizer.pt",
        "rng.pt",
        "trainer_state.json",
    }
    torch.testing.assert_close(
        load_file(last / "trainable.safetensors")["lm_head.weight"], model.lm_head.weight.detach()
    )
    state = json.loads((last / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["next_batch"]) == (6, 3, 0)
    assert {"optimizer", "scheduler"} <= set(torch.load(last / "optimizer.pt", weights_only=False))


def test_training_on_the_eval_rows_lowers_eval_loss(tmp_path, tok, examples):
    model = tiny_llama(tied=True)
    batches = [TASK.collate(examples, tok, OPTS)]
    start = TASK.evaluate(model, batches, OPTS)["eval_loss"]
    metrics = run(
        model,
        tok,
        examples,
        examples,
        tmp_path,
        max_steps=20,
        batch_size=4,
        lr=3e-3,
        schedule="constant",
    )
    assert metrics["final_eval"]["eval_loss"] < start - 0.5
    assert metrics["best_step"] == 20
    assert not model.training


class ConstantEval(CausalLM):
    """Eval never improves after the first evaluation."""

    def evaluate(self, model, batches, options):
        return {"eval_loss": 1.0}


def test_early_stopping_after_patience_evals(tmp_path, tok, examples):
    metrics = fit(
        head_only(tiny_llama(tied=False)),
        TrainData(ConstantEval(), OPTS, examples, examples[:1], tok),
        AdapterBinding(trainable_state_dict, save_adapter),
        TrainConfig(max_steps=10, batch_size=2, eval_every=1, patience=2),
        tmp_path,
        progress=False,
    )
    assert metrics["stopped_early"] is True
    assert metrics["steps"] == 3 and metrics["best_step"] == 1


def test_bf16_autocast_runs_on_cpu(tmp_path, tok, examples):
    metrics = run(
        head_only(tiny_llama(tied=False)),
        tok,
        examples,
        None,
        tmp_path,
        max_steps=2,
        batch_size=2,
        precision="bf16",
    )
    assert metrics["precision"] == "bf16" and math.isfinite(metrics["train_loss"])
    assert metrics["final_eval"] is None and metrics["best_dir"] is None
    assert not (tmp_path / "best").exists()
