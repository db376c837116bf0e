"""Tiny random models, and a conformance kit for plugin authors; nothing is downloaded.

    from adapterkit.testing import check_strategy, check_task

    def test_my_strategy():
        check_strategy(MyStrategy, {"rank": 4})                # every built-in task, tiny models
        check_strategy(MyStrategy, tasks=["causal_lm"])        # only the tasks it supports

    def test_my_task():
        check_task(MyTask, data=Path("tests/tiny.jsonl"))      # read ... evaluate, meta_model

Both raise AssertionError (`ConformanceError`) naming the check that failed and why. The tiny
models (`tiny_llama`, `save_tiny_bert_dir`, ...) build from configs in milliseconds.
"""

from __future__ import annotations

from adapterkit.testing._report import ConformanceError
from adapterkit.testing.fixtures import TASK_CASES, TaskCase
from adapterkit.testing.memory_profile import profiled_tensor_peak
from adapterkit.testing.strategy_check import check_strategy
from adapterkit.testing.task_check import check_task
from adapterkit.testing.tiny import (
    CHATML_TEMPLATE,
    save_tiny_bert_dir,
    save_tiny_llama_dir,
    tiny_bert,
    tiny_bert_config,
    tiny_bert_tokenizer,
    tiny_bert_vocab,
    tiny_llama,
    tiny_llama_config,
    tiny_tokenizer,
)

__all__ = [
    "CHATML_TEMPLATE",
    "TASK_CASES",
    "ConformanceError",
    "TaskCase",
    "check_strategy",
    "check_task",
    "profiled_tensor_peak",
    "save_tiny_bert_dir",
    "save_tiny_llama_dir",
    "tiny_bert",
    "tiny_bert_config",
    "tiny_bert_tokenizer",
    "tiny_bert_vocab",
    "tiny_llama",
    "tiny_llama_config",
    "tiny_tokenizer",
]
