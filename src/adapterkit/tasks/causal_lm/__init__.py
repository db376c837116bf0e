"""Instruction tuning of a causal language model with its own chat template.

Data: JSONL, one example a line, either

    {"instruction": "...", "input": "... (optional)", "output": "..."}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}  # last: assistant

A row may add "references": [...] (what generation metrics score the reply against; default: the
output). Each row is rendered with the tokenizer's chat template, exactly as `generate` renders a
prompt.
Only the final assistant turn's content and its end-of-turn token are trained on; the system
prompt, the user turn, the assistant header and anything the template adds after the end-of-turn
token (ChatML's trailing newline) are masked with -100.

Metrics: `eval_loss` and perplexity over the whole eval set; with `metrics` (bleu, chrf, rouge,
exact_match, f1), also those of the replies generated for the first `max_eval_generate` eval rows
(`generation`, `adapterkit.tasks._text_metrics`). `generate_batch` answers prompts and
`generate_rows` (`adapterkit predict`) the rows of a file, whose response may be missing
(`read_prompts`): batched, left-padded, greedy or with seeded sampling (`adapterkit.sampling`).

Torch and transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast

from pydantic import Field

from adapterkit.errors import ModelError
from adapterkit.sampling import Settings
from adapterkit.strategy import ModelParts
from adapterkit.tasks import _batching, _models
from adapterkit.tasks._loss import IGNORE, count_targets, loss_figures, summed_cross_entropy
from adapterkit.tasks.causal_lm import chat, generation, head_loss, packing
from adapterkit.tasks.causal_lm.chat import end_of_turn_ids

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    from adapterkit.storage.sources import ModelSource

__all__ = ["IGNORE", "CausalLM", "Encoded", "Options", "end_of_turn_ids"]

log = logging.getLogger("adapterkit")
_KIND = "CausalLM"


@dataclass
class Options:
    max_length: Annotated[
        int,
        Field(ge=8, description="Tokens per example (prompt + response); longer ones are cut."),
    ] = 512
    system_prompt: Annotated[
        str | None,
        Field(description="System message for every example; None keeps the template's default."),
    ] = None
    packing: Annotated[
        bool,
        Field(
            description=(
                "Padding-free batches: a step's rows are packed into one sequence with position "
                "ids restarting at each row, and attention never crosses a row (the same loss and "
                "gradients as padded rows, without computing the padding). false: right-padded."
            )
        ),
    ] = True
    metrics: Annotated[
        list[Literal["bleu", "chrf", "rouge", "exact_match", "f1"]],
        Field(
            description=(
                "Metrics of replies generated for the eval rows, besides eval_loss: bleu and chrf "
                "(sacreBLEU, with its signature), rouge (ROUGE-1/2/L F, rouge-score, stemmed), "
                "exact_match and f1 (SQuAD v1.1); all 0-100. Empty: no generation at eval."
            )
        ),
    ] = field(default_factory=list)
    max_eval_generate: Annotated[
        int,
        Field(ge=0, description="Eval rows generated for `metrics` (the first N), to bound time."),
    ] = 64
    max_new_tokens: Annotated[
        int, Field(ge=1, description="Most tokens generated per reply for `metrics` and predict.")
    ] = 128
    num_beams: Annotated[
        int, Field(ge=1, description="Beam search width for generated replies; 1: greedy.")
    ] = 1
    generate_batch_size: Annotated[
        int, Field(ge=1, description="Prompts generated at once (left-padded) for `metrics`.")
    ] = 16


class Encoded(list):
    """The list `encode` returns; `.dropped` counts rows left with no response token to train."""

    dropped: int = 0


def _references(row: dict[str, Any], messages: chat.Messages) -> list[str]:
    return list(row.get("references") or [messages[-1]["content"]])


def _response_example(full: list[int], prompt: list[int], eot: set[int], eos: Any) -> dict:
    """input_ids up to the response's end-of-turn token; labels IGNORE on the prompt."""
    # The response ends at the first end-of-turn token after the prompt; what follows (a newline
    # the template adds) is not something the model should learn to emit.
    end = next((j for j in range(len(prompt), len(full)) if full[j] in eot), None)
    if end is None:  # a template that does not close the turn: teach eos ourselves
        full = [*full, int(eos)]
        end = len(full) - 1
    ids = full[: end + 1]
    return {"input_ids": ids, "labels": [IGNORE] * len(prompt) + ids[len(prompt) :]}


class CausalLM:
    name: ClassVar[str] = "causal_lm"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Instruction tuning of a causal LM with its chat template; loss on the response only."
    )
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForCausalLM` from `config` on the meta device, in float32 (no weights)."""
        return _models.meta_model(_KIND, config)

    def model_parts_of(self, model: nn.Module) -> ModelParts:
        """The output-embeddings module's name on a built model (the pretrained LM head)."""
        head = cast("PreTrainedModel", model).get_output_embeddings()
        for name, module in model.named_modules():
            if module is head and name:
                return ModelParts(head=(name,), new_head=False)
        raise ModelError(f"{type(model).__name__} has no output embeddings to call its LM head")

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        """The LM head's name, found on a weightless (meta device) model."""
        return self.model_parts_of(self.meta_model(_models.config_of(source), options))

    def logits_bytes(
        self,
        batch: int,
        length: int,
        config: PretrainedConfig,
        options: Options,
        hidden_bytes: int = 4,
        head_bytes: int = 4,
        compute_bytes: int = 4,
    ) -> int:
        """What the chunked target-only loss (`head_loss`) holds at its largest, in bytes.

        At most N = batch x (length - 1) positions are targets (packed or padded: each row's first
        token never is). The loss keeps the targets' gathered hidden states [N, H] and their ids
        (int64) for backward; in backward their gradient [N, H] exists beside one chunk's float32
        logits [C, V] (C = min(chunk_rows(V), N); the softmax is taken in place), its [C, H] slice
        of the gradient and the chunk's row indices. Under autocast (`compute_bytes` 2) the
        matmuls run in the half dtype: a chunk's logits exist in it too, and the head's weight is
        cast to it (V x H x 2) unless it is stored in it, and packed once more per matmul by the
        CPU's half-precision kernel (V x H x 2; counted on CUDA too, a small overestimate there).
        Forward's peak is no larger. No [B, L, V] tensor ever exists. `hidden_bytes`: of an element
        of the final hidden states (2 under bf16 autocast behind a frozen bf16 final norm), the
        dtype of the gathered states and of their gradient; `head_bytes`: of the head's weight.
        Without autocast a half head is copied to float32 (V x H x 4). The planner passes all three
        (adapterkit.planning.memory).
        """
        rows = batch * max(length - 1, 0)
        vocab, hidden = int(config.vocab_size), int(config.hidden_size)
        chunk = min(head_loss.chunk_rows(vocab), rows)
        kept = 2 * rows * hidden * hidden_bytes + rows * 8
        per_chunk = chunk * vocab * 4 + chunk * hidden * 4 + chunk * 8
        if compute_bytes == 4:
            head_copy = vocab * hidden * 4 if head_bytes != 4 else 0
            return kept + per_chunk + head_copy
        head_copy = vocab * hidden * compute_bytes if head_bytes != compute_bytes else 0
        packed = vocab * hidden * compute_bytes
        return kept + per_chunk + chunk * vocab * compute_bytes + head_copy + packed

    def packs(self, options: Options) -> bool:
        """With `packing`, a step's rows are one sequence (no padding, attention within each row)."""
        return bool(options.packing)

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        """The model and tokenizer; with `packing`, attention is the per-row causal SDPA (unless
        the strategy chose an attention implementation itself)."""
        extra = {}
        if options.packing and "attn_implementation" not in load_kwargs:
            extra["attn_implementation"] = packing.register()
        return _models.load_pretrained(_KIND, source, "a causal LM", load_kwargs, **extra)

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Rows as chat messages: [{"messages": [...], "line"[, "references"]}, ...]; errors
        name the file and line."""
        return chat.read_rows(Path(path), chat.row_messages)

    def read_prompts(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Rows to generate for (`adapterkit predict`): as `read`, but a row may lack its response
        ("instruction" without "output", or "messages" ending with a user turn)."""
        return chat.read_rows(Path(path), chat.prompt_row_messages)

    def _messages(
        self, row: dict[str, Any], options: Options, index: int = 0, response: bool = True
    ) -> chat.Messages:
        # Rows from `read` are already messages; rows built in Python are checked here.
        check = chat.row_messages if response else chat.prompt_row_messages
        msgs = row["messages"] if "messages" in row else check(row, Path("rows"), index)
        if options.system_prompt is not None and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": options.system_prompt}, *msgs]
        return msgs

    def _render(self, tokenizer: Any, messages: chat.Messages, prompt: bool) -> list[int]:
        return chat.token_ids(tokenizer, chat.chat_text(tokenizer, messages, prompt))

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        return options  # nothing is derived from the data

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> Encoded:
        """Tokenize rows into {"input_ids", "labels"}; returns an `Encoded` list with `.dropped`."""
        eot = set(end_of_turn_ids(tokenizer))
        out = Encoded()
        for i, row in enumerate(rows):
            prompt, full = chat.prompt_and_full(tokenizer, self._messages(row, options, i), i)
            ex = _response_example(full, prompt, eot, tokenizer.eos_token_id)
            ex = {k: v[: options.max_length] for k, v in ex.items()}
            if all(x == IGNORE for x in ex["labels"]):
                out.dropped += 1
                continue
            if options.metrics:  # what the generated reply is scored against
                ex["references"] = _references(row, self._messages(row, options, i))
            out.append(ex)
        if out.dropped:
            log.warning(
                "%d of %d examples dropped: their prompt fills max_length=%d, leaving no response "
                "token to train on; raise max_length or shorten the prompts",
                out.dropped,
                len(rows),
                options.max_length,
            )
        return out

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """Packed into one row (`packing`), or right-padded: padding is marked by the attention
        mask and -100 labels, never by token id."""
        if options.packing:
            return packing.pack(examples)
        return _batching.pad_batch(examples, tokenizer, {"labels": IGNORE})

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        # Position t predicts token t+1, so the first label is never a target.
        return count_targets(batch["labels"][:, 1:])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the shifted targets, in float32.

        The LM head runs on the target positions only, in chunks (`head_loss`); a model it does not
        apply to (a quantized or adapted head, logit soft-capping) takes the full logits.
        """
        head = head_loss.lm_head(model)
        if head is not None:
            return head_loss.target_loss(model, head, batch)
        mask = {"attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:  # transformers' own packed-sequence mask, from position_ids
            mask = {"position_ids": batch["position_ids"]}
        out = model(input_ids=batch["input_ids"], use_cache=False, **mask)
        return summed_cross_entropy(out.logits[:, :-1, :].float(), batch["labels"][:, 1:])

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """Mean loss per target token over the whole set (so batch size does not change it)."""
        sums = _batching.map_batches(
            model, batches, lambda b: (float(self.loss(model, b)), self.targets(b))
        )
        return loss_figures(sum(s for s, _ in sums), sum(n for _, n in sums))

    def generated_metrics(
        self, model: nn.Module, tokenizer: Any, examples: list[dict], options: Options
    ) -> dict[str, Any]:
        """`metrics` of the greedy (or beam) replies to the first `max_eval_generate` examples,
        against their references; `generated_rows` says how many. {} without `metrics`."""
        return generation.generated_metrics(model, tokenizer, examples, options)

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {
            "prompt_format": "chat_template",
            "chat_template": tokenizer.chat_template,
            "system_prompt": options.system_prompt,
            "eos_token": tokenizer.eos_token,
        }

    def generation_settings(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        """An exported model stops at every token that ends an assistant turn (eos first, then
        the template's end-of-turn specials), and pads with the pad token (`Task` protocol)."""
        return {"eos_token_id": end_of_turn_ids(tokenizer), "pad_token_id": tokenizer.pad_token_id}

    # ---- inference ------------------------------------------------------------------------------

    def generate_batch(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: list[str],
        options: Options,
        settings: Settings,
    ) -> list[str]:
        """The reply to each prompt (a user turn, rendered as in training), greedy or sampled as
        `settings` say; batched, left-padded, stopping at the end-of-turn token."""
        turns = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
        ids = [self._render(tokenizer, self._messages(t, options), prompt=True) for t in turns]
        return generation.generate_replies(model, tokenizer, ids, options, settings)

    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str,
        options: Options,
        max_new_tokens: int = 128,
    ) -> str:
        """Greedy reply to `prompt`, rendered as in training; stops at the end-of-turn token."""
        settings = Settings(max_new_tokens=max_new_tokens, batch_size=1)
        return self.generate_batch(model, tokenizer, [prompt], options, settings)[0]

    def generate_rows(
        self,
        model: nn.Module,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        options: Options,
        settings: Settings,
    ) -> list[dict[str, Any]]:
        """Per row: {"line", "prompt" (the last user turn), "prediction" (the reply: greedy with
        `num_beams`, or sampled, as `settings` say), "references" (the row's, else its response;
        left out for a row with neither)}; batched and left-padded like eval."""
        msgs = [self._messages(row, options, i, response=False) for i, row in enumerate(rows)]
        return generation.row_predictions(model, tokenizer, rows, msgs, options, settings)

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        options: Options,
        batch_size: int = 16,
    ) -> list[dict[str, Any]]:
        """`generate_rows` with the task's own search (greedy, or `num_beams`)."""
        return self.generate_rows(model, tokenizer, rows, options, Settings(batch_size=batch_size))
