"""Shared cases of the extractive QA tests (test_extractive_qa*.py): the task, tiny options,
SQuAD writers and the official script's scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from adapterkit.tasks.extractive_qa import ExtractiveQA, Options

ROOT = Path(__file__).resolve().parents[3]
OFFICIAL = ROOT / "tests" / "data" / "squad" / "evaluate-v1.1.py"  # byte for byte, see its README
DEV_SAMPLE = ROOT / "tests" / "data" / "squad" / "dev_sample.json"
TASK = ExtractiveQA()
OPTS = Options(max_length=32, doc_stride=8, max_question_length=8, max_answer_length=4)
# 60 one-token words of the tiny BERT vocabulary: w0 ... w59 of a long context.
WORDS = (
    "the a an is are was be to of and in on for with it this that you i he she we they what how "
    "why who when where write give list name tell explain describe make find answer question yes "
    "no good bad one two three four five six seven eight nine ten hello world cat dog sun moon"
).split()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def squad(paragraphs: list[dict], version: str = "1.1") -> str:
    return json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]})


def official(data: Path, predictions: dict[str, str], tmp_path: Path) -> dict[str, float]:
    """evaluate-v1.1.py's figures for a prediction file {id: answer text}."""
    pred = write(tmp_path / "predictions.json", json.dumps(predictions))
    out = subprocess.run(
        [sys.executable, str(OFFICIAL), str(data), str(pred)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


class FakeQA(nn.Module):
    """Start/end logits per token id from a table: the span a rule picks, whatever the window."""

    def __init__(self, tok, start: dict[str, float], end: dict[str, float]) -> None:
        super().__init__()
        vocab = tok.get_vocab()
        self.table = nn.Embedding(max(vocab.values()) + 1, 2)
        with torch.no_grad():
            self.table.weight.zero_()
            self.table.weight[vocab["[CLS]"]] = torch.tensor([0.5, 0.5])  # the null score: 1
            for word, value in start.items():
                self.table.weight[vocab[word], 0] = value
            for word, value in end.items():
                self.table.weight[vocab[word], 1] = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.table(input_ids)
        return SimpleNamespace(start_logits=logits[..., 0], end_logits=logits[..., 1])


def long_rows() -> list[dict]:
    """One 60-word context (one token a word) and a question per answer span of 1 to 3 words."""
    context = " ".join(WORDS)
    starts = [len(" ".join(WORDS[:i])) + (1 if i else 0) for i in range(len(WORDS))]
    rows = []
    for i, (first, size) in enumerate(
        [(0, 1), (5, 2), (22, 3), (23, 2), (30, 1), (39, 2), (59, 1)]
    ):
        text = " ".join(WORDS[first : first + size])
        assert context[starts[first] :].startswith(text)
        answers = [{"text": text, "start": starts[first]}]
        rows.append({"id": str(i), "question": "what is the cat ?", "context": context,
                     "answers": answers, "impossible": False, "where": f"row {i}"})  # fmt: skip
    return rows
