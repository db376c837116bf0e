"""Text and text-pair classification (sentiment, topic, spam; paraphrase, entailment).

Data: a table with a text column, an optional second text column, and a label column, as

    TSV    tab-separated, a header row naming the columns, NO quote processing (GLUE's files are
           unquoted: a sentence may start with `"` and never close it)
    CSV    comma-separated with standard quoting (Python's csv module), a header row
    JSONL  one JSON object a line

chosen by the file extension (.tsv, .csv, .jsonl/.json) unless `format` says otherwise. Labels are
kept as strings (`1` in JSON and `"1"` in a TSV are the same label). A file may lack the label
column entirely (a file to predict); a file where some rows are labelled and others not is an error.

The model is `AutoModelForSequenceClassification` with a fresh head of one output per label, for
encoders (BERT: `classifier` + `pooler`) and decoders (Llama: `score`, read at each row's last real
token, which is why the pad token is written into the config). Padding is on the right.

Metrics: `eval_loss` (mean cross entropy per labelled row over the whole set), `accuracy`,
`macro_f1`, per class `precision/<label>`, `recall/<label>`, `f1/<label>`, and for two labels `f1`
of the positive class (label "1" when there is one, else the second label), as GLUE reports for
MRPC. A precision, recall or F1 whose denominator is zero (a class never predicted, never present)
is 0, and `macro_f1` is the mean of `f1/<label>` over every label the model knows.

Torch and transformers are imported lazily so that listing tasks stays instant.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from adapterkit.errors import DataError, ModelError
from adapterkit.tasks._common import (
    IGNORE,
    count_targets,
    inference,
    read_text,
    summed_cross_entropy,
    to_device,
)
from adapterkit.tasks._common import line_error as _fail
from adapterkit.tasks._labelled import head_parts, load_labelled_model

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapterkit.storage.sources import ModelSource
    from adapterkit.strategy import ModelParts

_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class Options:
    # Recipes may write numeric labels (`labels: [0, 1]`); they are label names, i.e. strings.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(coerce_numbers_to_str=True)

    text_column: Annotated[
        str, Field(min_length=1, description="Column (or JSON field) holding the text.")
    ] = "sentence"
    text_pair_column: Annotated[
        str | None,
        Field(
            description="Column of a second text for pair tasks (e.g. sentence2 for MRPC/RTE, with "
            "text_column sentence1); None for single texts."
        ),
    ] = None
    label_column: Annotated[
        str, Field(min_length=1, description="Column (or JSON field) holding the label.")
    ] = "label"
    format: Annotated[
        Literal["auto", "tsv", "csv", "jsonl"],
        Field(
            description="File format; auto picks it from the extension (.tsv, .csv, .jsonl/.json)."
        ),
    ] = "auto"
    max_length: Annotated[
        int, Field(ge=8, description="Tokens per example (both texts); longer ones are cut.")
    ] = 128
    labels: Annotated[
        list[str] | None,
        Field(
            description="Label names in head order; None takes the sorted distinct labels of the "
            "training data (numerically when all are integers)."
        ),
    ] = None


# ---- reading ------------------------------------------------------------------------------------


def _format(path: Path, options: Any) -> str:
    if options.format != "auto":
        return options.format
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; "
            "name the file .tsv, .csv or .jsonl, or set task.options.format"
        )
    return fmt


def _columns(options: Any) -> list[tuple[str, str]]:
    """(option name, column) for the text columns every row must have."""
    cols = [("text_column", options.text_column)]
    if options.text_pair_column:
        cols.append(("text_pair_column", options.text_pair_column))
    return cols


def _missing(path: Path, lineno: int, kind: str, column: str, option: str, found: Any) -> DataError:
    listed = ", ".join(repr(str(c)) for c in found) or "none"
    return _fail(
        path,
        lineno,
        f"no {kind} {column!r} ({kind}s found: {listed}); "
        f"set task.options.{option} to the {kind} that holds it",
    )


def _text(path: Path, lineno: int, column: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(path, lineno, f"{column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _fail(path, lineno, f"empty text in {column!r}; remove the line or fill it in")
    return value


def _label(path: Path, lineno: int, column: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise _fail(path, lineno, f"label {column!r} must be a string or a number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 in a JSON file is the label "1"
    text = str(value).strip()
    return text or None


def _row(path: Path, lineno: int, record: dict[str, Any], options: Any) -> dict[str, Any]:
    texts = [_text(path, lineno, col, record[col]) for _, col in _columns(options)]
    return {
        "text": texts[0],
        "text_pair": texts[1] if len(texts) > 1 else None,
        "label": _label(path, lineno, options.label_column, record.get(options.label_column)),
        "line": lineno,
        "where": f"{path}:{lineno}",
    }


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) without line ends; only "\\n" (and "\\r\\n") end a line."""
    return [(i, line.removesuffix("\r")) for i, line in enumerate(text.split("\n"), start=1)]


def _read_table(path: Path, text: str, options: Any, fmt: str) -> list[dict[str, Any]]:
    if fmt == "tsv":
        records = [(n, line.split("\t")) for n, line in _lines(text) if line.strip()]
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        records, start = [], 1
        try:
            for fields in reader:
                if fields and any(f.strip() for f in fields):
                    records.append((start, fields))
                start = reader.line_num + 1  # a quoted field may span lines
        except csv.Error as exc:
            raise _fail(path, reader.line_num, f"malformed CSV ({exc})") from None
    if not records:
        raise DataError(f"{path}: the file is empty; write a header row, then one row a line")
    head_line, header = records[0]
    header = [h.strip() for h in header]
    for option, col in _columns(options):
        if col not in header:
            raise _missing(path, head_line, "column", col, option, header)
    index = {name: i for i, name in enumerate(header)}
    rows = []
    for lineno, fields in records[1:]:
        if len(fields) != len(header):
            sep = "tabs" if fmt == "tsv" else "commas"
            raise _fail(
                path,
                lineno,
                f"{len(fields)} fields, but the header on line {head_line} has {len(header)}; "
                f"check the {sep} on this line"
                + ("" if fmt == "tsv" else " (quote a field that holds a comma)"),
            )
        record = {name: fields[i] for name, i in index.items()}
        rows.append(_row(path, lineno, record, options))
    if not rows:
        raise DataError(f"{path}: only a header row, no data rows")
    return rows


def _read_jsonl(path: Path, text: str, options: Any) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in _lines(text):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = (
                "; a JSON array is not read, write one object a line (JSONL)"
                if line.lstrip().startswith("[")
                else "; each line must be one JSON object"
            )
            raise _fail(
                path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno}){hint}"
            ) from None
        if not isinstance(record, dict):
            raise _fail(path, lineno, f"expected a JSON object, got {type(record).__name__}")
        for option, col in _columns(options):
            if col not in record:
                raise _missing(path, lineno, "field", col, option, record)
        rows.append(_row(path, lineno, record, options))
    if not rows:
        raise DataError(f"{path}: the file is empty; write one JSON object a line")
    return rows


def _check_labelled(path: Path, rows: list[dict[str, Any]], options: Any) -> None:
    """All rows labelled, or none (a file to predict); never a mix."""
    first = rows[0]["label"] is not None
    odd = next((r for r in rows if (r["label"] is not None) != first), None)
    if odd is None:
        return
    col = options.label_column
    if first:
        msg = f"no label in {col!r}, but the rows before it have one"
    else:
        msg = f"a label in {col!r}, but the rows before it (from line {rows[0]['line']}) have none"
    raise _fail(
        path, odd["line"], f"{msg}; label every row, or none (a file to predict labels for)"
    )


def _label_key(label: str) -> tuple:
    """Sort integer labels by value ("2" before "10"), anything else as text."""
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


def positive_label(labels: list[str]) -> str | None:
    """The positive class of a binary task: "1" if it is a label, else the second; None otherwise."""
    if len(labels) != 2:
        return None
    return "1" if "1" in labels else labels[1]


# ---- the task -----------------------------------------------------------------------------------


class SequenceClassification:
    name: ClassVar[str] = "sequence_classification"
    Options: ClassVar[type] = Options
    description: ClassVar[str] = (
        "Text or text-pair classification (TSV/CSV/JSONL) with a new head; accuracy, F1."
    )
    selection_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    # ---- model ----------------------------------------------------------------------------------

    def model_parts(self, source: ModelSource, options: Any) -> ModelParts:
        """The new head (`classifier` + pooler for BERT, `score` for Llama), from the config."""
        return head_parts("SequenceClassification", source, len(options.labels or ["", ""]))

    def load_model(
        self, source: ModelSource, options: Any, load_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, Any]:
        import torch

        if not options.labels:
            raise ModelError(
                "the label names are unknown; set task.options.labels or give training data"
            )
        kwargs = {"dtype": torch.float32, **load_kwargs}
        try:
            return load_labelled_model("SequenceClassification", source, options.labels, kwargs)
        except OSError as exc:
            raise ModelError(
                f"{source.path}: cannot load a sequence classifier from it ({exc})"
            ) from exc

    # ---- data -----------------------------------------------------------------------------------

    def read(self, path: Path, options: Any) -> list[dict[str, Any]]:
        """Rows {"text", "text_pair", "label" (str or None), "line", "where"}; errors name file:line."""
        path = Path(path)
        fmt = _format(path, options)
        # utf-8-sig: a BOM would glue onto the first column's name
        text = read_text(path, f"a {fmt} file", encoding="utf-8-sig")
        if fmt == "jsonl":
            rows = _read_jsonl(path, text, options)
        else:
            rows = _read_table(path, text, options, fmt)
        _check_labelled(path, rows, options)
        return rows

    def setup(self, rows: list[dict[str, Any]], options: Any) -> Any:
        """Fill in the label names from the training rows, or check the rows against given ones."""
        if not rows:
            raise DataError("no training rows")
        if rows[0]["label"] is None:
            raise DataError(
                f"{rows[0].get('where', 'training data')}: training rows need labels, and there "
                f"is no {options.label_column!r} column; set task.options.label_column"
            )
        if options.labels is None:
            labels = sorted({r["label"] for r in rows}, key=_label_key)
            if len(labels) < 2:
                raise DataError(
                    f"{rows[0].get('where', 'training data')}: every training row has the label "
                    f"{labels[0]!r}; a classifier needs at least two labels"
                )
            return dataclasses.replace(options, labels=labels)
        labels = [str(x) for x in options.labels]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise DataError(f"task.options.labels: repeated label(s) {', '.join(dupes)}")
        if len(labels) < 2:
            raise DataError("task.options.labels: a classifier needs at least two labels")
        known = set(labels)
        for r in rows:
            if r["label"] not in known:
                raise DataError(
                    f"{r.get('where', 'training data')}: label {r['label']!r} is not one of "
                    f"task.options.labels ({', '.join(labels)}); add it there or fix the row"
                )
        return dataclasses.replace(options, labels=labels)

    def encode(self, rows: list[dict[str, Any]], tokenizer: Any, options: Any) -> list[dict]:
        """Token ids (+ token type ids for BERT-style pairs) and a label id (-100 when unlabelled).

        A label the model does not know (one the training data never had) is a DataError.
        """
        return self._encode(rows, tokenizer, options, with_labels=True)

    def _encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, options: Any, with_labels: bool
    ) -> list[dict]:
        if not rows:
            return []
        ids = {name: i for i, name in enumerate(options.labels or [])}
        label_ids = []
        for r in rows:
            label = r.get("label") if with_labels else None
            if label is not None and label not in ids:
                raise DataError(
                    f"{r.get('where', 'row')}: label {label!r} is not one the model knows "
                    f"({', '.join(options.labels or [])}); training data had no such label"
                )
            label_ids.append(IGNORE if label is None else ids[label])
        pairs = [r.get("text_pair") for r in rows]
        has_pair = [p is not None for p in pairs]
        if any(has_pair) and not all(has_pair):
            bad = rows[has_pair.index(False)]
            raise DataError(f"{bad.get('where', 'row')}: a second text is missing")
        enc = tokenizer(
            [r["text"] for r in rows],
            pairs if all(has_pair) else None,
            truncation=True,
            max_length=options.max_length,
        )
        keep = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{**{k: enc[k][i] for k in keep}, "label": label_ids[i]} for i in range(len(rows))]

    def collate(
        self, examples: list[dict], tokenizer: Any, options: Any
    ) -> dict[str, torch.Tensor]:
        """Right-pad with the pad token; `attention_mask` marks real tokens; `labels` per row."""
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        n = len(examples)
        ids = torch.full((n, width), int(pad), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        types = (
            torch.zeros((n, width), dtype=torch.long) if "token_type_ids" in examples[0] else None
        )
        for r, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[r, :k] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[r, :k] = 1
            if types is not None:
                types[r, :k] = torch.tensor(e["token_type_ids"], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            batch["token_type_ids"] = types
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return batch

    # ---- loss and metrics -----------------------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float32 logits [rows, labels]; labels are never passed in (the loss is ours)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # Only models with segment embeddings take token types (BERT yes, Llama and RoBERTa no).
        if "token_type_ids" in batch and (getattr(model.config, "type_vocab_size", 0) or 0) > 1:
            inputs["token_type_ids"] = batch["token_type_ids"]
        return model(**inputs).logits.float()

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        return count_targets(batch["labels"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross entropy over the labelled rows, in float32."""
        return summed_cross_entropy(self._logits(model, batch), batch["labels"])

    def evaluate(
        self, model: nn.Module, batches: list[dict[str, torch.Tensor]], options: Any
    ) -> dict:
        """Loss, accuracy and F1 over every labelled row of all batches (batch size does not matter)."""
        total, preds, truths = 0.0, [], []
        with inference(model) as device:
            for batch in batches:
                batch = to_device(batch, device)
                logits = self._logits(model, batch)
                labels = batch["labels"]
                keep = labels != IGNORE
                total += float(summed_cross_entropy(logits, labels))
                preds += logits.argmax(-1)[keep].tolist()
                truths += labels[keep].tolist()
        if not truths:
            raise DataError(
                "the eval data has no labelled rows; evaluation needs the label column "
                f"{options.label_column!r}"
            )
        return {
            "eval_loss": total / len(truths),
            **classification_metrics(preds, truths, options.labels),
        }

    def manifest(self, options: Any, tokenizer: Any) -> dict[str, Any]:
        return {
            "labels": list(options.labels or []),
            "text_column": options.text_column,
            "text_pair_column": options.text_pair_column,
            "label_column": options.label_column,
        }

    # ---- inference ------------------------------------------------------------------------------

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        options: Any,
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """Per row: {"label", "score" (its softmax probability), "line", "text"[, "text_pair"]}."""
        examples = self._encode(rows, tokenizer, options, with_labels=False)
        labels = list(options.labels or [])
        out: list[dict[str, Any]] = []
        with inference(model) as device:
            for start in range(0, len(examples), batch_size):
                batch = self.collate(examples[start : start + batch_size], tokenizer, options)
                probs = self._logits(model, to_device(batch, device)).softmax(-1)
                score, best = probs.max(-1)
                for i, (s, b) in enumerate(zip(score.tolist(), best.tolist(), strict=True)):
                    row = rows[start + i]
                    item = {
                        "label": labels[b] if b < len(labels) else str(b),
                        "score": float(s),
                        "line": row.get("line"),
                        "text": row["text"],
                    }
                    if row.get("text_pair") is not None:
                        item["text_pair"] = row["text_pair"]
                    out.append(item)
        return out


def classification_metrics(preds: list[int], truths: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1, macro F1 (+ positive-class F1 when binary).

    A ratio with a zero denominator is 0: precision of a class never predicted, recall of a class
    never present, F1 when precision + recall is 0. `macro_f1` averages `f1/<label>` over all of
    `labels`, present in this data or not. Plain floats, ready for JSON.
    """
    n = len(labels)
    tp, fp, fn = [0] * n, [0] * n, [0] * n
    for p, t in zip(preds, truths, strict=True):
        if p == t:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    metrics: dict[str, float] = {"accuracy": ratio(sum(tp), len(truths))}
    f1s = []
    for i, name in enumerate(labels):
        p, r = ratio(tp[i], tp[i] + fp[i]), ratio(tp[i], tp[i] + fn[i])
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        metrics[f"precision/{name}"], metrics[f"recall/{name}"], metrics[f"f1/{name}"] = p, r, f1
        f1s.append(f1)
    metrics["macro_f1"] = sum(f1s) / n if n else 0.0
    positive = positive_label(list(labels))
    if positive is not None:
        metrics["f1"] = metrics[f"f1/{positive}"]
    return metrics
