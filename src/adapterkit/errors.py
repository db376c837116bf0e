"""The one family of user errors.

Anything the user can fix (a recipe key, a data line, a plugin, a model path) raises a subclass of
`UserError`. The CLI prints its message and exits with status 2; a traceback is shown only with
`--debug`. Anything else is a bug in adapterkit or a plugin and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The message says where (file, line, key) and what to do."""

    exit_code = 2


class RecipeError(UserError):
    """One or more problems in a recipe; `problems` lists each one, all reported together."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


class PluginError(UserError):
    """A plugin failed to load or registered something invalid; the message names the plugin."""


class DataError(UserError):
    """A data file is missing, empty or malformed; the message names the file and line."""


class ModelError(UserError):
    """A model path or name does not resolve to a loadable model."""


class AdapterError(UserError):
    """An adapter directory is incomplete, corrupt, or made for another base model."""


class TrainingError(UserError):
    """Training cannot go on (diverged, out of memory); the message says what to try."""


class GGUFError(UserError):
    """A model cannot be exported as GGUF (not a Llama-family causal LM, a tokenizer or chat template
    llama.cpp/Ollama cannot carry, a bad --out path), or the file read back differs beyond its
    tolerance; the message names the model, file or setting."""


class MergeError(UserError):
    """A merged model cannot be written (its --out exists, or its parent is a file), or finds no
    rows to verify it on; the message names the directory or file and what to pass instead."""


class VerificationFailed(MergeError):
    """The merged model differs from base + adapter beyond its dtype's tolerance; nothing was kept
    (unless forced). `report` is the verification report (what verify.json holds)."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


class OutOfMemoryError(TrainingError):
    """A training step could not allocate memory; the message says what to change."""


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM stopped training after a step; a checkpoint was written to resume from.

    The exit status is the shell's convention for death by that signal (128 + its number), so
    scripts can tell an interruption from a finished run and from a user error.
    """

    def __init__(self, message: str, signum: int, checkpoint: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
