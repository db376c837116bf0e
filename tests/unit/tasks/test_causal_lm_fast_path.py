"""The causal LM's fast path against the plain one, in float32 on tiny Llamas.

The chunked target-only head loss equals `model(...).logits` + summed cross entropy, and a packed
(padding-free) batch equals the padded batch: the loss and every gradient (LoRA, the head, the
tied or untied embeddings) to 1e-5, for a frozen head ("lora"), a trained head ("head") and "full".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adapterkit.plugins import load_registry
from adapterkit.storage.sources import ModelSource
from adapterkit.tasks.causal_lm import IGNORE, CausalLM, Options, head_loss, packing
from adapterkit.testing import save_tiny_llama_dir, tiny_llama, tiny_llama_config

TASK = CausalLM()
PACKED, PADDED = Options(), Options(packing=False)
TOL = {"rtol": 1e-5, "atol": 1e-5}

ROWS = [
    {"instruction": "hello", "output": "the cat"},
    {"instruction": "write a list of four big red things", "output": "the sun , the fire ."},
    {"instruction": "why", "input": "the dog is sad", "output": "no"},
    {"instruction": "tell me", "output": "one two three four five six seven eight nine ten"},
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("fast")
    return {tied: save_tiny_llama_dir(root / f"tied-{tied}", tied=tied) for tied in (True, False)}


def build(directory: Path, strategy_name: str, options: Options = PACKED) -> torch.nn.Module:
    """The model as training builds it (task.load_model, then the strategy), LoRA B made nonzero
    so every LoRA matrix has a gradient."""
    strategy = load_registry().strategy(strategy_name)
    fields = getattr(strategy.Options, "__dataclass_fields__", {})
    s_opts = strategy.Options(**({"dropout": 0.0} if "dropout" in fields else {}))  # deterministic
    source = ModelSource("tiny", directory, None)
    parts = TASK.model_parts(source, options)
    model, _ = TASK.load_model(source, options, strategy.load_kwargs(s_opts, parts))
    torch.manual_seed(0)  # LoRA A's initialisation
    model = strategy.apply(model, s_opts, parts)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.train()


def plain_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the task computed before: full logits, shifted, summed cross entropy."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def loss_and_grads(model, loss_fn, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_same(a, b) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **TOL, msg=name)


def examples(tok) -> list[dict]:
    out = TASK.encode(ROWS, tok, PACKED)
    assert len({len(e["input_ids"]) for e in out}) == len(out)  # rows of different lengths
    return out


CASES = [("lora", True), ("lora", False), ("head", True), ("head", False), ("full", True)]


@pytest.mark.parametrize(("strategy", "tied"), CASES)
def test_chunked_target_loss_equals_the_full_logits_loss(tok, dirs, strategy, tied, monkeypatch):
    monkeypatch.setattr(head_loss, "CHUNK", 7)  # fewer rows than the targets: several chunks
    model = build(dirs[tied], strategy, PADDED)
    batch = TASK.collate(examples(tok), tok, PADDED)
    assert TASK.targets(batch) > 2 * head_loss.CHUNK
    assert head_loss.lm_head(model) is not None  # the fast path is the one under test
    fast = loss_and_grads(model, TASK.loss, batch)
    assert_same(fast, loss_and_grads(model, plain_loss, batch))
    head = model.get_output_embeddings().weight
    assert (head.requires_grad and strategy != "lora") or (not head.requires_grad)
    if strategy != "lora":  # the head's (tied: the embedding's) gradient flows
        assert any(g.shape == head.shape for g in fast[1].values())


@pytest.mark.parametrize(("strategy", "tied"), CASES)
def test_packed_batch_equals_the_padded_batch(tok, dirs, strategy, tied, monkeypatch):
    model = build(dirs[tied], strategy)
    seen: list[int] = []
    segments = packing._segments
    monkeypatch.setattr(
        packing, "_segments", lambda pos: seen.append(len(segments(pos)) - 1) or segments(pos)
    )
    assert model.config._attn_implementation == packing.ATTENTION
    exs = examples(tok)
    packed, padded = TASK.collate(exs, tok, PACKED), TASK.collate(exs, tok, PADDED)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in exs))
    assert TASK.targets(packed) == TASK.targets(padded)
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum())
    assert_same(loss_and_grads(model, TASK.loss, packed), loss_and_grads(model, plain_loss, padded))
    assert seen and set(seen) == {len(exs)}  # the per-row attention ran, once per row


def test_the_fast_path_runs_the_whole_model_and_restores_its_head(tok, dirs):
    model = build(dirs[True], "lora")
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))  # a strategy's hook, say
    head = model.get_output_embeddings()
    TASK.loss(model, TASK.collate(examples(tok), tok, PACKED)).backward()
    assert calls == [1] and "forward" not in vars(head)
    with torch.no_grad():
        x = torch.randn(2, head.in_features)
        torch.testing.assert_close(head(x), x @ head.weight.t())


def test_packed_rows_restart_positions_and_mask_each_rows_first_label(tok):
    exs = examples(tok)[:2]
    batch = TASK.collate(exs, tok, PACKED)
    n = len(exs[0]["input_ids"])
    assert batch["position_ids"][0].tolist() == [*range(n), *range(len(exs[1]["input_ids"]))]
    assert batch["labels"][0, n] == IGNORE  # row 2 is never predicted from row 1's last token
    assert batch["labels"][0, n + 1 :].tolist() == exs[1]["labels"][1:]
    assert set(batch["attention_mask"][0].tolist()) == {1}


def per_token_losses(model, batch) -> torch.Tensor:
    with torch.no_grad():
        ids, pos = batch["input_ids"], batch["position_ids"]
        out = model(input_ids=ids, position_ids=pos, use_cache=False)
    return F.cross_entropy(out.logits[0, :-1], batch["labels"][0, 1:], reduction="none")


@pytest.mark.parametrize("attention", ["packed", "transformers"])
def test_no_attention_across_rows(tok, dirs, attention):
    model = build(dirs[True], "lora") if attention == "packed" else tiny_llama()
    exs = examples(tok)[:2]
    changed = [{**exs[0], "input_ids": [(t + 7) % 100 for t in exs[0]["input_ids"]]}, exs[1]]
    a = per_token_losses(model, TASK.collate(exs, tok, PACKED))
    b = per_token_losses(model, TASK.collate(changed, tok, PACKED))
    n = len(exs[0]["input_ids"])
    assert not torch.allclose(a[: n - 1], b[: n - 1])  # row A's losses did change
    torch.testing.assert_close(a[n:], b[n:], **TOL)  # row B's did not


def test_packed_loss_without_the_packed_attention_uses_transformers_mask(tok):
    """A model built elsewhere (default SDPA) still never attends across rows."""
    model = tiny_llama()
    exs = examples(tok)
    packed, padded = TASK.collate(exs, tok, PACKED), TASK.collate(exs, tok, PADDED)
    with torch.no_grad():
        torch.testing.assert_close(TASK.loss(model, packed), plain_loss(model, padded), **TOL)


def test_packed_gradient_checkpointing_and_eval(tok, dirs):
    model = build(dirs[False], "lora")
    exs = examples(tok)
    padded = TASK.collate(exs, tok, PADDED)
    reference = loss_and_grads(model, plain_loss, padded)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    assert_same(loss_and_grads(model, TASK.loss, TASK.collate(exs, tok, PACKED)), reference)
    batches = {
        o.packing: [TASK.collate(exs[i : i + 3], tok, o) for i in (0, 3)] for o in (PACKED, PADDED)
    }
    packed, padded_eval = (
        TASK.evaluate(model, batches[True], PACKED),
        TASK.evaluate(model, batches[False], PADDED),
    )
    assert packed["eval_tokens"] == padded_eval["eval_tokens"]
    assert abs(packed["eval_loss"] - padded_eval["eval_loss"]) < 1e-6
    assert abs(packed["eval_loss"] - float(reference[0]) / TASK.targets(padded)) < 1e-5


def test_packed_qlora_equals_padded(tok, dirs):
    pytest.importorskip("bitsandbytes")
    model = build(dirs[True], "qlora")
    exs = examples(tok)
    packed, padded = TASK.collate(exs, tok, PACKED), TASK.collate(exs, tok, PADDED)
    assert_same(loss_and_grads(model, TASK.loss, packed), loss_and_grads(model, plain_loss, padded))


def test_generate_is_the_same_with_the_packed_attention(tok, dirs):
    a = build(dirs[True], "lora").eval()
    b = build(dirs[True], "lora", PADDED).eval()
    assert b.config._attn_implementation == "sdpa"
    for prompt in ("hello world", "the cat is big"):
        assert TASK.generate(a, tok, prompt, PACKED, 8) == TASK.generate(b, tok, prompt, PADDED, 8)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])  # left padding in row 2
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        out_a = a.generate(input_ids=ids, attention_mask=mask, **kwargs)
        out_b = b.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert out_a.shape == (2, 14) and torch.equal(out_a, out_b)


# ---- the planner's figure -------------------------------------------------------------------


def test_the_causal_lm_logits_bytes_are_one_chunk_of_logits_and_the_targets_hidden_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llama = tiny_llama_config()
    b, length, vocab, hidden = 3, 10, llama.vocab_size, llama.hidden_size
    rows = b * (length - 1)  # every position but each row's first can be a target
    # a chunk's float32 logits and its slice of the gradient, row indices; the targets' states,
    # their gradient and their ids
    full = (rows * vocab + rows * hidden + 2 * rows * hidden) * 4 + rows * 8 + rows * 8
    assert TASK.logits_bytes(b, length, llama, PACKED) == full  # one chunk holds all rows
    monkeypatch.setattr(head_loss, "CHUNK", 4)
    chunked = (4 * vocab + 4 * hidden + 2 * rows * hidden) * 4 + 4 * 8 + rows * 8
    assert TASK.logits_bytes(b, length, llama, PACKED) == chunked
    assert TASK.logits_bytes(b, length, llama, PADDED) == chunked
    # far below the three [B, L, V] float32 copies the full-logits loss held
    assert chunked < (b * length + 2 * b * (length - 1)) * vocab * 4 / 3


@pytest.mark.parametrize("chunk", [8, 1024])
def test_the_causal_lm_logits_bytes_are_what_the_chunked_loss_holds(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss's peak of live tensors (profiled: forward and backward of the head and its cross
    entropy on every target of a real tiny model's hidden states) against the figure."""
    from adapterkit.testing.memory_profile import profiled_tensor_peak

    monkeypatch.setattr(head_loss, "CHUNK", chunk)
    model = tiny_llama()
    head = head_loss.lm_head(model)
    assert head is not None
    head.weight.requires_grad_(False)  # a trained head's dW is its gradient, planned as one
    b, length = 2, 40
    ids = torch.randint(5, 100, (b, length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    states = model.model(input_ids=ids).last_hidden_state.detach().requires_grad_(True)

    def run() -> None:
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        head_loss.chunked_head_ce(states[:, :-1][keep], head, labels[keep]).backward()

    measured, _ = profiled_tensor_peak(run)
    figure = TASK.logits_bytes(b, length, model.config, PACKED)
    assert figure <= measured <= figure * 1.01, (figure, measured)


def test_chunked_loss_under_bf16_autocast_is_float32_and_near_the_plain_loss(tok, dirs):
    """The trainer calls `loss` under autocast: the body in bf16, the head and its loss in fp32."""
    model = build(dirs[False], "head")
    batch = TASK.collate(examples(tok), tok, PACKED)
    padded = TASK.collate(examples(tok), tok, PADDED)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = TASK.loss(model, batch)
        plain = plain_loss(model, padded)
    assert fast.dtype == torch.float32
    assert abs(float(fast) - float(plain)) <= 0.02 * abs(float(plain))
    fast.backward()
    head = model.get_output_embeddings().weight
    assert head.grad is not None and head.grad.dtype == torch.float32
    assert torch.isfinite(head.grad).all() and head.grad.abs().sum() > 0


@pytest.mark.parametrize("head_dtype", [torch.bfloat16, torch.float32])
def test_under_autocast_the_chunked_loss_is_autocasts_head_in_float32_softmax(
    head_dtype: torch.dtype,
) -> None:
    """Under bf16 autocast the head's matmuls run in bf16 (as the plain head would) and the softmax
    in float32: loss and input gradient equal that reference, chunk by chunk or not."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=False).to(head_dtype).requires_grad_(False)
    hidden = torch.randn(50, 32, dtype=torch.bfloat16)
    targets = torch.randint(0, 300, (50,))
    ours = hidden.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_loss.chunked_head_ce(ours, head, targets, chunk=16)
    loss.backward()
    ref = hidden.clone().requires_grad_(True)
    logits = (ref @ head.weight.to(torch.bfloat16).t()).float()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    expected.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    assert ours.grad is not None and ref.grad is not None
    torch.testing.assert_close(ours.grad.float(), ref.grad.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("head_dtype", [torch.bfloat16, torch.float32])
def test_the_logits_bytes_under_autocast_are_what_the_chunked_loss_holds(
    head_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bf16 figure (a half chunk of logits beside the float32 one, the head cast to bf16
    unless stored in it, the CPU kernel's packed copy) against the profiled peak."""
    from types import SimpleNamespace

    from adapterkit.testing.memory_profile import profiled_tensor_peak

    monkeypatch.setattr(head_loss, "CHUNK", 64)
    vocab, hidden_size, n = 4096, 64, 200
    head = torch.nn.Linear(hidden_size, vocab, bias=False).to(head_dtype).requires_grad_(False)
    states = torch.randn(n + 1, hidden_size, dtype=torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, vocab, (n,))

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            head_loss.chunked_head_ce(states[1:] * 1, head, targets).backward()

    measured, _ = profiled_tensor_peak(run)
    config = SimpleNamespace(vocab_size=vocab, hidden_size=hidden_size)
    size = head.weight.element_size()
    figure = TASK.logits_bytes(1, n + 1, config, PACKED, 2, size, compute_bytes=2)
    assert 0.97 * figure <= measured <= 1.03 * figure, (figure, measured)
