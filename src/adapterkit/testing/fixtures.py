"""Tiny workspaces for the conformance checks: a model directory, a data file and a recipe per task.

Each `TaskCase` says which registered task it is for, which tiny model it runs on and how to write
a small data file in that task's format. The built-in tasks have one each (`TASK_CASES`); a plugin
that adds a task can describe its own and pass it to `check_strategy(..., tasks=[case])`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from adapterkit.testing.tiny import save_tiny_bert_dir, save_tiny_llama_dir, save_tiny_t5_dir

_WORDS = "the cat is happy . the dog is sad . a big red sun . the small blue moon".split()


def classification_rows() -> str:
    """12 rows of `sentence<TAB>label` over three labels, every word in the tiny vocabularies."""
    rows = ["sentence\tlabel"]
    for i in range(12):
        text = " ".join(_WORDS[i % 5 : i % 5 + 4 + i % 3])
        rows.append(f"{text}\t{['neg', 'pos', 'mid'][i % 3]}")
    return "\n".join(rows) + "\n"


def conll_rows() -> str:
    """10 CoNLL-2003 style sentences of 5 words (word POS chunk tag), PER and LOC tags."""
    tags = ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    out = ["-DOCSTART- -X- -X- O", ""]
    for i in range(10):
        for j in range(5):
            out.append(f"{_WORDS[(i + j) % len(_WORDS)]} NN O {tags[(i + j) % 5]}")
        out.append("")
    return "\n".join(out) + "\n"


def instruction_rows() -> str:
    """9 JSONL instruction/output rows (three distinct ones, three times)."""
    rows = [
        {"instruction": "write one two three", "output": "one two three ."},
        {"instruction": "name a colour", "output": "blue ."},
        {"instruction": "what is the sun", "output": "the sun is big ."},
    ]
    return "".join(json.dumps(r) + "\n" for r in rows * 3)


def text_rows() -> str:
    """10 plain-text documents of 1 to 3 lines, a blank line between them (the `text` task)."""
    docs = [
        "\n".join(" ".join(_WORDS[(i + j) % 5 : (i + j) % 5 + 4 + j]) for j in range(1 + i % 3))
        for i in range(10)
    ]
    return "\n\n".join(docs) + "\n"


def masked_text_rows() -> str:
    """12 plain-text documents of 6 to 13 words, some of two sub-tokens ("dog ##s"), a blank line
    between them (the `masked_lm` task)."""
    words = [*_WORDS, "dogs", "played", "slowly", "cats"]
    docs = [" ".join(words[(3 * i + j) % len(words)] for j in range(6 + i % 8)) for i in range(12)]
    return "\n\n".join(docs) + "\n"


_QA_NOUNS = "cat dog sun moon tree book".split()
_QA_ATTRS = "red blue green big small happy sad fast slow".split()


def squad_rows() -> str:
    """A SQuAD v1.1 JSON file: 3 paragraphs of 4 to 6 sentences ("the cat is red ."), 3 questions
    each ("what is the cat ?" -> "red"); every word in the tiny vocabularies (the `extractive_qa`
    task). With 32-token windows the first paragraph fits one window, the others take two."""
    paragraphs = []
    for p in range(3):
        nouns = _QA_NOUNS[: 4 + p]
        attrs = [_QA_ATTRS[(n + 2 * p) % len(_QA_ATTRS)] for n in range(len(nouns))]
        context = " ".join(f"the {n} is {a} ." for n, a in zip(nouns, attrs, strict=True))
        qas = []
        for k in range(3):
            n = (p + k) % len(nouns)
            lead = f"the {_QA_NOUNS[n]} is "
            answer = {"text": attrs[n], "answer_start": context.index(lead) + len(lead)}
            question = f"what is the {_QA_NOUNS[n]} ?"
            qas.append({"id": f"q{p}{k}", "question": question, "answers": [answer]})
        paragraphs.append({"context": context, "qas": qas})
    article = {"title": "tiny", "paragraphs": paragraphs}
    return json.dumps({"version": "1.1", "data": [article]}) + "\n"


_PAIRS = [
    ("the cat is happy .", "die katze ist glücklich ."),
    ("the dog is sad .", "der hund ist traurig ."),
    ("one two three", "eins zwei drei"),
    ("a big red sun .", "eine groß rot sonne ."),
    ("the small blue moon", "der klein blau mond"),
    ("four five", "vier fünf"),
]


def seq2seq_rows() -> str:
    """12 JSONL source/target pairs, English to word-for-word German in the tiny T5's vocabulary
    (the `seq2seq` task)."""
    return "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in _PAIRS * 2)


@dataclasses.dataclass(frozen=True)
class TaskCase:
    """How to exercise one registered task: its name, a tiny model, a data file and options.

    model:     "llama" (tiny LlamaForCausalLM files), "bert" (a tiny bare BERT encoder), "t5" (a
               tiny T5ForConditionalGeneration), or the path of a local model directory.
    data_file: the file name to write (its extension may choose the format).
    rows:      returns the file's text.
    options:   the task's options, as a recipe's `task.options` would give them.
    """

    task: str
    model: str
    data_file: str
    rows: Callable[[], str]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


TASK_CASES: dict[str, TaskCase] = {
    case.task: case
    for case in (
        TaskCase("causal_lm", "llama", "train.jsonl", instruction_rows, {"max_length": 48}),
        TaskCase(
            "sequence_classification", "bert", "train.tsv", classification_rows, {"max_length": 32}
        ),
        TaskCase("token_classification", "bert", "train.txt", conll_rows, {"max_length": 32}),
        TaskCase("text", "llama", "train.txt", text_rows, {"block_size": 16}),
        TaskCase(
            "masked_lm",
            "bert",
            "train.txt",
            masked_text_rows,
            {"max_length": 32, "masking": "span"},
        ),
        TaskCase(
            "seq2seq",
            "t5",
            "train.jsonl",
            seq2seq_rows,
            {
                "max_length": 32,
                "max_target_length": 16,
                "max_new_tokens": 8,
                "max_eval_generate": 4,
            },
        ),
        TaskCase(
            "extractive_qa",
            "bert",
            "train.json",
            squad_rows,
            {"max_length": 32, "doc_stride": 8, "max_question_length": 8, "max_answer_length": 4},
        ),
    )
}
"""The built-in tasks, each on the tiny model it is usually used with."""


@dataclasses.dataclass(frozen=True)
class Workspace:
    """A written case: its folder (`root`: data, recipe, run), the model directory, the data file."""

    case: TaskCase
    root: Path
    model_dir: Path
    data: Path


def model_dir(model: str, root: Path) -> Path:
    """The tiny model `model` names, written once under `root` (or `model` itself as a path)."""
    if model not in ("llama", "bert", "t5"):
        return Path(model)
    path = Path(root) / f"tiny-{model}"
    if model == "t5" and not (path / "config.json").is_file():
        save_tiny_t5_dir(path)  # tied, as T5 v1.0: the LM head is the shared embedding
    if not (path / "config.json").is_file():
        # Tied embeddings, as SmolLM2 has: a strategy must handle one tensor under two names.
        save_tiny_llama_dir(path, tied=True) if model == "llama" else save_tiny_bert_dir(path)
    return path


def workspace(case: TaskCase, root: Path) -> Workspace:
    """Write `case`'s data into `root/<task>/`, and its tiny model into `root` (shared by cases)."""
    here = Path(root) / case.task
    here.mkdir(parents=True, exist_ok=True)
    data = here / case.data_file
    data.write_text(case.rows(), encoding="utf-8")
    return Workspace(case, here, model_dir(case.model, Path(root)), data)


def recipe_dict(
    ws: Workspace, strategy: str, strategy_options: dict[str, Any], steps: int
) -> dict[str, Any]:
    """A recipe training `strategy` for `steps` optimizer steps, evaluated once at the end.

    A constant learning rate, so that the last step still moves every tensor that has a gradient.
    """
    return {
        "model": {"name": str(ws.model_dir)},
        "task": {"name": ws.case.task, "options": dict(ws.case.options)},
        "data": {"train": ws.data.name, "eval": ws.data.name},
        "strategy": {"name": strategy, "options": strategy_options},
        "train": {
            "max_steps": steps,
            "batch_size": 4,
            "eval_batch_size": 4,
            "lr": 0.01,
            "schedule": "constant",
            "eval_at_start": False,
            "seed": 0,
        },
    }


def write_recipe(ws: Workspace, recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
    """`recipe` as YAML next to the data (data paths in a recipe are relative to it)."""
    path = ws.root / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
