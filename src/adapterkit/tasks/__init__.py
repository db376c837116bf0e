"""Built-in tasks, registered through the same hook a third-party plugin uses.

Task modules import torch lazily; importing this package only names the classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapterkit.hookspecs import hookimpl
from adapterkit.task import Task


@hookimpl
def register_tasks(register: Callable[[type[Any]], None]) -> None:
    from adapterkit.tasks.causal_lm import CausalLM
    from adapterkit.tasks.extractive_qa import ExtractiveQA
    from adapterkit.tasks.masked_lm import MaskedLM
    from adapterkit.tasks.seq2seq import Seq2Seq
    from adapterkit.tasks.seq2seq.span_corruption import SpanCorruption
    from adapterkit.tasks.sequence_classification import SequenceClassification
    from adapterkit.tasks.text import TextLM
    from adapterkit.tasks.token_classification import TokenClassification

    # Typed as the protocol, so the type checker proves each built-in meets it.
    builtins: tuple[type[Task], ...] = (
        CausalLM,
        SequenceClassification,
        TokenClassification,
        TextLM,
        MaskedLM,
        ExtractiveQA,
        Seq2Seq,
        SpanCorruption,
    )
    for cls in builtins:
        register(cls)
