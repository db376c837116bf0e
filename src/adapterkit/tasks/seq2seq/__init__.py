"""Sequence-to-sequence fine-tuning of encoder-decoder models (T5, mT5, BART, Marian).

Data (`readers`): source/target pairs from JSONL (`source_field`, `target_field`), a TSV with a
header naming the two columns, or two aligned plain-text files (`source_file`, `target_file`: the
two extensions, one sentence a line), with an optional task `prefix` before every source
("translate English to German: "). The loss is on the target tokens only (`encoding`), summed; the
trainer groups batches by length on request (`train.group_by_length`), rows are padded.

Eval: `eval_loss` (mean per target token) and `perplexity`, and, on the first `max_eval_generate`
eval rows, the generation `metrics` (BLEU and chrF by sacreBLEU with their signatures, ROUGE,
exact match, F1) of greedy or beam-search outputs (`generation`). `predict` writes the generated
text per row, `generate` answers one prompt. The model and its tied or untied LM head: `models`.
A second task in this package, `span_corruption`, trains the same models on T5's objective.

Torch and transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from adapterkit.sampling import Settings
from adapterkit.tasks import _batching
from adapterkit.tasks._loss import loss_figures
from adapterkit.tasks.seq2seq import encoding, generation, models, readers
from adapterkit.tasks.seq2seq.encoding import Encoded
from adapterkit.tasks.seq2seq.options import Options

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

__all__ = ["Encoded", "Options", "Seq2Seq"]


def loss_metrics(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """eval_loss (mean per target token over the whole set), its perplexity, the token count."""
    sums = _batching.map_batches(
        model, batches, lambda b: (float(encoding.loss(model, b)), encoding.targets(b))
    )
    return loss_figures(sum(s for s, _ in sums), sum(n for _, n in sums))


class Seq2Seq:
    name: ClassVar[str] = "seq2seq"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Encoder-decoder (T5, BART, Marian) on source/target pairs (JSONL, TSV, aligned text "
        "files); loss on the target; BLEU/chrF/ROUGE of greedy or beam-search outputs."
    )
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    # ---- model ----------------------------------------------------------------------------------

    def meta_model(self, config: PretrainedConfig, options: Options) -> nn.Module:
        """`AutoModelForSeq2SeqLM` on the meta device, its LM head tied or not as loading has it."""
        return models.meta_model(config)

    def model_parts_of(self, model: nn.Module) -> ModelParts:
        """The pretrained LM head (`lm_head`; for a tied model, the shared embedding)."""
        return models.parts_of(model)

    def model_parts(self, source: ModelSource, options: Options) -> ModelParts:
        return models.model_parts(source)

    def logits_bytes(
        self, batch: int, length: int, config: PretrainedConfig, options: Options
    ) -> int:
        """The decoder's logits at `max_target_length` target tokens (not the source's length)."""
        return encoding.logits_bytes(batch, min(length, options.max_target_length), config)

    def load_model(
        self, source: ModelSource, options: Options, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        return models.load(source, load_kwargs)

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Options) -> list[dict[str, Any]]:
        """Rows {"source", "references" (None without targets), "line", "where"}."""
        return readers.read_rows(Path(path), options)

    def setup(self, rows: list[dict[str, Any]], options: Options) -> Options:
        return options  # nothing is derived from the data

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Options) -> Encoded:
        """{"input_ids" (prefix + source), "labels" (target), "references", "line"} per row."""
        return encoding.encode_pairs(
            rows, tokenizer, options.prefix, options.max_length, options.max_target_length
        )

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Options
    ) -> dict[str, torch.Tensor]:
        """Right-padded sources (attention mask) and labels (IGNORE on padding)."""
        return encoding.collate(examples, tokenizer)

    # ---- loss and metrics -----------------------------------------------------------------------

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Target tokens in the batch."""
        return encoding.targets(batch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the target tokens, in float32."""
        return encoding.loss(model, batch)

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder logits at the target tokens, [targets, vocabulary] (`Task.logits`)."""
        return encoding.target_logits(model, batch)

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Options
    ) -> dict:
        """eval_loss per target token over the whole set, perplexity, eval_tokens."""
        return loss_metrics(model, batches)

    def generated_metrics(
        self, model: nn.Module, tokenizer: Any, examples: list[dict], options: Options
    ) -> dict[str, Any]:
        """`metrics` of the outputs for the first `max_eval_generate` examples."""
        return generation.generated_metrics(
            model, tokenizer, examples, lambda chunk: encoding.collate(chunk, tokenizer), options
        )

    def manifest(self, options: Options, tokenizer: Any) -> dict[str, Any]:
        return {
            "prompt_format": "seq2seq",
            "prefix": options.prefix,
            "eos_token": tokenizer.eos_token,
        }

    # ---- inference ------------------------------------------------------------------------------

    def _examples(self, tokenizer: Any, sources: list[str], options: Options) -> list[dict]:
        rows = [{"source": s} for s in sources]
        ids, _ = encoding.encode_sources(tokenizer, rows, options.prefix, options.max_length)
        return [{"input_ids": x} for x in ids]

    def generate_batch(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: list[str],
        options: Options,
        settings: Settings,
    ) -> list[str]:
        """The output for each source (the prefix put before it, as in training): the options'
        search (greedy or `num_beams`), or sampled, as `settings` say."""
        return generation.texts_for(
            model,
            tokenizer,
            self._examples(tokenizer, prompts, options),
            lambda chunk: encoding.collate(chunk, tokenizer),
            options,
            settings,
        )

    def generate_rows(
        self,
        model: nn.Module,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        options: Options,
        settings: Settings,
    ) -> list[dict[str, Any]]:
        """The output of each row: [{"line", "source", "prediction", "references"?}]."""
        sources = [row["source"] for row in rows]
        texts = self.generate_batch(model, tokenizer, sources, options, settings)
        out = []
        for row, text in zip(rows, texts, strict=True):
            item = {"line": row.get("line"), "source": row["source"], "prediction": text}
            if row.get("references"):
                item["references"] = list(row["references"])
            out.append(item)
        return out

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        options: Options,
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """`generate_rows` with the options' search."""
        return self.generate_rows(model, tokenizer, rows, options, Settings(batch_size=batch_size))

    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str,
        options: Options,
        max_new_tokens: int = 128,
    ) -> str:
        """The model's output for one source (the prefix is put before it, as in training)."""
        settings = Settings(max_new_tokens=max_new_tokens, batch_size=1)
        return self.generate_batch(model, tokenizer, [prompt], options, settings)[0]
