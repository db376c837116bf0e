"""The seq2seq task's options: what is read, how long it may be, and how the model generates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

MetricName = Literal["bleu", "chrf", "rouge", "exact_match", "f1"]
"""The generation metrics `_text_metrics.score` computes (sacreBLEU, rouge-score, SQuAD)."""


@dataclass
class Options:
    max_length: Annotated[
        int, Field(ge=4, description="Source tokens (prefix included); longer sources are cut.")
    ] = 256
    max_target_length: Annotated[
        int,
        Field(
            ge=2,
            description="Target tokens trained on (end token included); longer targets are cut. "
            "Metrics compare with the whole reference.",
        ),
    ] = 128
    prefix: Annotated[
        str,
        Field(
            description="Text put before every source, as T5 was trained with "
            "('translate English to German: '); empty for none."
        ),
    ] = ""
    source_field: Annotated[
        str, Field(min_length=1, description="JSONL field / TSV column of the source text.")
    ] = "source"
    target_field: Annotated[
        str,
        Field(
            min_length=1,
            description="JSONL field / TSV column of the target; in JSONL it may be a list "
            "(several references, the first is trained on).",
        ),
    ] = "target"
    source_file: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Two aligned plain-text files, one sentence a line: the source file's "
            "extension (en reads train.en when the data path is train.en or train.de).",
        ),
    ] = None
    target_file: Annotated[
        str | None,
        Field(min_length=1, description="... and the target file's extension (de: train.de)."),
    ] = None
    num_beams: Annotated[
        int, Field(ge=1, description="Beam search width when generating; 1: greedy.")
    ] = 1
    max_new_tokens: Annotated[
        int, Field(ge=1, description="Most tokens generated per row (eval, predict).")
    ] = 128
    length_penalty: Annotated[
        float,
        Field(
            description="Beam search: scores are divided by length**length_penalty; > 0 favours "
            "longer outputs, < 0 shorter ones (no effect with num_beams=1)."
        ),
    ] = 1.0
    metrics: Annotated[
        list[MetricName],
        Field(
            description="Generation metrics at each eval, on the test set and in `adapterkit "
            "eval`: bleu, chrf (sacreBLEU), rouge (rouge-score), exact_match, f1 (SQuAD)."
        ),
    ] = field(default_factory=lambda: ["bleu", "chrf"])
    max_eval_generate: Annotated[
        int,
        Field(
            ge=0,
            description="Eval rows the metrics generate for (the first ones); 0: eval_loss only.",
        ),
    ] = 200
