"""Causal language modelling on raw text of a domain (domain-adaptive pre-training).

Data (`readers`): plain text, one document per blank-line separated paragraph (or per line), or
JSONL with the document in a `text` field. Every document is tokenised and ended with the
end-of-document token (the tokenizer's eos unless `end_token` names another); the documents are
concatenated and cut into blocks of `block_size` tokens (`blocks`), so no padding is trained or
computed. The loss is on every token: each block begins with the last token of the one before, so
every token of the file but the first is predicted exactly once. The short block left at the end
is kept (`remainder: keep`) or dropped.

Eval: `eval_loss`, the mean loss per predicted token over the whole eval file, and `perplexity`,
its exponential; neither depends on the eval batch size. The model, the chunked loss on the LM
head and the packed attention are the causal LM task's (`causal_lm.head_loss`, `packing`).

Torch and transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from adapterkit.errors import RecipeError
from adapterkit.sampling import Settings
from adapterkit.tasks import _batching, _models, causal_lm
from adapterkit.tasks._loss import count_targets, loss_figures
from adapterkit.tasks.causal_lm import CausalLM, generation, packing
from adapterkit.tasks.text import blocks, readers
from adapterkit.tasks.text.blocks import Encoded

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = ["Encoded", "Options", "TextLM"]

log = logging.getLogger("adapterkit")
_KIND = "CausalLM"
_LM = CausalLM()  # the causal LM task's head, chunked loss and logits size serve this one too


@dataclass
class Options:
    block_size: Annotated[
        int,
        Field(
            ge=8,
            description=(
                "Tokens per block: the documents' tokens are concatenated and cut into blocks of "
                "this many (at most the model's positions)."
            ),
        ),
    ] = 512
    format: Annotated[
        Literal["auto", "text", "jsonl"],
        Field(description="File format; auto: .jsonl/.json are JSONL, anything else plain text."),
    ] = "auto"
    documents: Annotated[
        Literal["paragraphs", "lines"],
        Field(
            description=(
                "In plain text, a document is a paragraph (blank lines between documents) or "
                "each non-blank line."
            )
        ),
    ] = "paragraphs"
    text_field: Annotated[
        str, Field(min_length=1, description="The JSONL field holding a document's text.")
    ] = "text"
    end_token: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Token appended to every document; None: the tokenizer's eos token.",
        ),
    ] = None
    remainder: Annotated[
        Literal["keep", "drop"],
        Field(
            description=(
                "The tokens left after the last full block: keep them as one shorter block "
                "(every token is trained and evaluated), or drop them."
            )
        ),
    ] = "keep"

    @property
    def max_length(self) -> int:
        """The tokens per row, under the name the memory planner reads: `block_size`."""
        return self.block_size


def _positions(config: PretrainedConfig) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class TextLM:
    name: ClassVar[str] = "text"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Causal LM on raw domain text (plain text or JSONL): documents concatenated into "
        "fixed-size blocks, loss on every token; eval perplexity."
    )
    # Perplexity is exp(eval_loss): both pick the same checkpoint.
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForCausalLM` from `config` on the meta device, in float32 (no weights)."""
        return _models.meta_model(_KIND, config)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        """The LM head's name, from the config alone; a `block_size` past the model's positions
        is a RecipeError."""
        config = _models.config_of(source)
        positions = _positions(config)
        if positions is not None and options.block_size > positions:
            problem = (
                f"task.options.block_size: {options.block_size} is more than the "
                f"{positions} positions of {source.name}; use at most {positions}"
            )
            raise RecipeError("task.options", [problem])
        return _LM.model_parts_of(self.meta_model(config, options))

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """As the causal LM's: the chunked loss on batch x (length - 1) target positions."""
        return _LM.logits_bytes(batch, length, config, causal_lm.Options())

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        """The model and tokenizer, with the per-block causal attention for a packed batch
        (unless the strategy chose an attention implementation itself)."""
        extra = {}
        if "attn_implementation" not in load_kwargs:
            extra["attn_implementation"] = packing.register()
        return _models.load_pretrained(_KIND, source, "a causal LM", load_kwargs, **extra)

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Documents as rows [{"text": ...}, ...]; errors name the file and line."""
        return readers.read_documents(Path(path), options)

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        return options  # nothing is derived from the data

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> Encoded:
        """The documents as blocks of `block_size` tokens (`blocks.encode`)."""
        out = blocks.encode(rows, tokenizer, options)
        log.info(
            "%d documents, %d tokens: %d blocks of up to %d tokens",
            out.documents,
            out.tokens,
            len(out),
            options.block_size,
        )
        if out.dropped_tokens:
            log.info(
                "the last %d tokens (short of a block) are left out (remainder: drop)",
                out.dropped_tokens,
            )
        return out

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """Full blocks as [B, block_size]; a batch with the short last block packed (no padding)."""
        return blocks.collate(examples)

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Predicted tokens: all but each block's first."""
        return count_targets(batch["labels"][:, 1:])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed next-token cross entropy over every target, in float32 (the causal LM's loss:
        the LM head on the targets only, in chunks, where it applies)."""
        return _LM.loss(model, batch)

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """eval_loss (mean per predicted token over the whole set), perplexity, eval_tokens."""
        sums = _batching.map_batches(
            model, batches, lambda b: (float(self.loss(model, b)), self.targets(b))
        )
        return loss_figures(sum(s for s, _ in sums), sum(n for _, n in sums))

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {
            "prompt_format": "raw_text",
            "end_token": options.end_token or tokenizer.eos_token,
            "eos_token": tokenizer.eos_token,
        }

    def generation_settings(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        """An exported model stops at the end-of-document token (and eos), as `generate` does."""
        stop = sorted({blocks.end_token_id(tokenizer, options), tokenizer.eos_token_id} - {None})
        return {"eos_token_id": stop, "pad_token_id": tokenizer.pad_token_id}

    # ---- inference ------------------------------------------------------------------------------

    def generate_batch(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: list[str],
        options: Options,
        settings: Settings,
    ) -> list[str]:
        """The continuation of each prompt as raw text (no chat template), greedy or sampled as
        `settings` say; batched and left-padded (`causal_lm.generation`), each stopping at the
        end-of-document token (or eos). The new text only, the stop token left out."""
        end = blocks.end_token_id(tokenizer, options)
        # An empty prompt starts a new document: the context is the end of the one before.
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] or [end] for p in prompts]
        search = {
            "max_new_tokens": settings.new_tokens(options),
            "num_beams": 1,
            "eos_token_id": sorted({end, tokenizer.eos_token_id} - {None}),
            "pad_token_id": end if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
        }
        return [
            tokenizer.decode(new, skip_special_tokens=True)
            for new in generation.generate_ids(model, ids, settings, search)
        ]

    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str,
        options: Options,
        max_new_tokens: int = 128,
    ) -> str:
        """The greedy continuation of `prompt` as raw text (no chat template); stops at the
        end-of-document token. Returns the new text only."""
        settings = Settings(max_new_tokens=max_new_tokens, batch_size=1)
        return self.generate_batch(model, tokenizer, [prompt], options, settings)[0]
