"""Token classification on Universal Dependencies CoNLL-U files (part-of-speech tagging).

The reader on a real UD English-EWT excerpt (comments, a multi-word token, empty nodes), errors
that name the file and line, the metric chosen by `task.options.metric`, and a short run of the
CLI on a tiny BERT: `train` selects by word accuracy, `eval` and `predict` work on the reloaded
adapter, and the accuracy `eval` reports is sklearn's over the words `predict` wrote.

EXCERPT is three sentences of UD English-EWT v2.16 (train split, lines unchanged), CC BY-SA 4.0:
Silveira et al., A Gold Standard Dependency Corpus for English, LREC 2014; data/README.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adapterkit import task as task_api
from adapterkit.cli import cli
from adapterkit.errors import DataError
from adapterkit.tasks.token_classification import Options, TokenClassification
from adapterkit.testing import check_task

TASK = TokenClassification()
ROOT = Path(__file__).resolve().parents[3]
UD = Options(token_column="FORM", tag_column="UPOS")
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON"}
UPOS |= {"PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}

EXCERPT = """\
# newdoc id = reviews-004940
# sent_id = reviews-004940-0009
# text = They recently surprised me a larger order.
1	They	they	PRON	PRP	Case=Nom|Number=Plur|Person=3|PronType=Prs	3	nsubj	3:nsubj	_
2	recently	recently	ADV	RB	_	3	advmod	3:advmod	_
3	surprised	surprise	VERB	VBD	Mood=Ind|Number=Plur|Person=3|Tense=Past|VerbForm=Fin	0	root	0:root	_
4	me	I	PRON	PRP	Case=Acc|Number=Sing|Person=1|PronType=Prs	3	obj	3:obj	_
4.1	_	with	ADP	IN	Typo=Yes	_	_	7:case	CorrectForm=with
5	a	a	DET	DT	Definite=Ind|PronType=Art	7	det	7:det	_
6	larger	large	ADJ	JJR	Degree=Cmp	7	amod	7:amod	_
7	order	order	NOUN	NN	Number=Sing	3	obl	3:obl:with	SpaceAfter=No
8	.	.	PUNCT	.	_	3	punct	3:punct	_

# sent_id = reviews-263630-0009
# text = Don't go!
1-2	Don't	_	_	_	_	_	_	_	_
1	Do	do	AUX	VB	Mood=Imp|VerbForm=Fin	3	aux	3:aux	_
2	n't	not	PART	RB	Polarity=Neg	3	advmod	3:advmod	_
3	go	go	VERB	VB	VerbForm=Inf	0	root	0:root	SpaceAfter=No
4	!	!	PUNCT	.	_	3	punct	3:punct	_

# sent_id = reviews-338429-0013
# text = Short time later the guy would leave, then the girl.
1	Short	short	ADJ	JJ	Degree=Pos	2	amod	2:amod	_
2	time	time	NOUN	NN	Number=Sing	3	obl:unmarked	3:obl:unmarked	TemporalNPAdjunct=Yes
3	later	late	ADV	RBR	Degree=Cmp	7	advmod	7:advmod	_
4	the	the	DET	DT	Definite=Def|PronType=Art	5	det	5:det	_
5	guy	guy	NOUN	NN	Number=Sing	7	nsubj	7:nsubj	_
6	would	would	AUX	MD	VerbForm=Fin	7	aux	7:aux	_
7	leave	leave	VERB	VB	VerbForm=Inf	0	root	0:root	SpaceAfter=No
8	,	,	PUNCT	,	_	11	punct	11:punct	_
9	then	then	ADV	RB	PronType=Dem	11	orphan	11.1:advmod	_
10	the	the	DET	DT	Definite=Def|PronType=Art	11	det	11:det	_
11	girl	girl	NOUN	NN	Number=Sing	7	parataxis	7:parataxis|11.1:nsubj	SpaceAfter=No
11.1	leave	leave	VERB	VB	VerbForm=Inf	_	_	7:parataxis	CopyOf=7
12	.	.	PUNCT	.	_	7	punct	7:punct	_
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def word_line(i: int, form: str, upos: str, xpos: str = "_") -> str:
    return "\t".join([str(i), form, "_", upos, xpos, "_", "_", "_", "_", "_"])


# ---- the reader -----------------------------------------------------------------------------------


def test_reads_words_skipping_comments_multi_word_tokens_and_empty_nodes(tmp_path: Path) -> None:
    path = write(tmp_path / "ewt.conllu", EXCERPT)
    rows = TASK.read(path, UD)
    assert [r["words"] for r in rows] == [
        ["They", "recently", "surprised", "me", "a", "larger", "order", "."],
        ["Do", "n't", "go", "!"],  # the syntactic words, not the surface token "Don't"
        ["Short", "time", "later", "the", "guy", "would", "leave", ",", "then", "the", "girl", "."],
    ]  # no "_" (empty node 4.1) and no second "leave" (empty node 11.1)
    assert rows[0]["tags"] == ["PRON", "ADV", "VERB", "PRON", "DET", "ADJ", "NOUN", "PUNCT"]
    assert rows[1]["tags"] == ["AUX", "PART", "VERB", "PUNCT"]
    assert [(r["line"], r["where"]) for r in rows] == [
        (4, f"{path}:4"),
        (17, f"{path}:17"),
        (24, f"{path}:24"),
    ]
    assert [r["sent_id"] for r in rows] == [
        "reviews-004940-0009",
        "reviews-263630-0009",
        "reviews-338429-0013",
    ]
    # XPOS, LEMMA, FEATS by name, any case; the format follows the names on any file name.
    xpos = TASK.read(path, Options(token_column="lemma", tag_column="xpos"))
    assert xpos[1]["words"] == ["do", "not", "go", "!"]
    assert xpos[1]["tags"] == ["VB", "RB", "VB", "."]
    renamed = write(tmp_path / "ewt.txt", EXCERPT)
    assert TASK.read(renamed, UD) == [{**r, "where": f"{renamed}:{r['line']}"} for r in rows]
    feats = TASK.read(path, Options(token_column="FORM", tag_column="FEATS"))
    assert feats[1]["tags"][3] == "_"  # the empty feature set: a tag like any other


def test_the_shipped_subset_reads_every_word_line(root: Path) -> None:
    for split in ("train", "dev", "test"):
        path = root / "data" / "ud_english_ewt" / f"{split}.conllu"
        text = path.read_text(encoding="utf-8")
        rows = TASK.read(path, UD)
        assert len(rows) == text.count("\n# sent_id = ") + text.startswith("# sent_id = ")
        assert sum(len(r["words"]) for r in rows) == len(re.findall(r"^\d+\t", text, re.M))
        assert {t for r in rows for t in r["tags"]} <= UPOS
        assert all(r["sent_id"] for r in rows)


def test_bom_crlf_and_a_file_without_the_last_blank_line(tmp_path: Path) -> None:
    text = (
        "\ufeff# sent_id = a\r\n"
        + word_line(1, "the", "DET")
        + "\r\n"
        + word_line(2, "cat", "NOUN")
    )
    rows = TASK.read(write(tmp_path / "x.conllu", text), UD)
    assert [(r["words"], r["tags"], r["sent_id"]) for r in rows] == [
        (["the", "cat"], ["DET", "NOUN"], "a")
    ]


def test_an_unannotated_file_has_no_tags_and_cannot_be_trained_on(tmp_path: Path) -> None:
    text = "\n".join([word_line(1, "the", "_"), word_line(2, "cat", "_"), ""])
    rows = TASK.read(write(tmp_path / "raw.conllu", text), UD)
    assert rows[0]["tags"] is None
    with pytest.raises(DataError, match="needs a tag column"):
        TASK.setup(rows, UD)


GOOD = word_line(1, "the", "DET")
MALFORMED = {
    # name: (text, the line at fault, what the message says)
    "a field short": (GOOD + "\n2\tcat\t_\tNOUN\t_\t_\t_\t_\t_\n", 2, "9 fields, but a CoNLL-U line has 10"),
    "spaces for tabs": (GOOD + "\n2 cat _ NOUN\n", 2, r"1 field, .*spaces where the tabs go"),
    "not an ID": ("# c\n" + word_line(1, "a", "DET").replace("1", "x", 1), 2, "ID 'x' is not a word ID"),
    "a backwards range": (GOOD + "\n3-2" + GOOD[1:] + "\n", 2, "ID '3-2' is not"),
    "no blank line": (GOOD + "\n" + word_line(2, "cat", "NOUN") + "\n" + GOOD, 3, "word ID 1 after word 2"),
    "a gap": (GOOD + "\n" + word_line(3, "cat", "NOUN"), 2, "word ID 3 after word 1"),
    "starts at 2": ("\n" + word_line(2, "cat", "NOUN"), 2, "word ID 2 opening a sentence"),
    "an empty field": (GOOD + "\n" + word_line(2, "cat", ""), 2, "the UPOS field is empty"),
    "some untagged": (GOOD + "\n" + word_line(2, "cat", "_"), 2, "UPOS is '_' .* on this word"),
}  # fmt: skip


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_lines_name_the_file_and_line(name: str, tmp_path: Path) -> None:
    text, line, message = MALFORMED[name]
    path = write(tmp_path / "bad.conllu", text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{line}: {message}"):
        TASK.read(path, UD)


def test_column_options_that_cannot_read_the_file_name_it(tmp_path: Path) -> None:
    path = write(tmp_path / "ewt.conllu", EXCERPT)
    with pytest.raises(DataError) as exc:
        TASK.read(path, Options())  # the defaults are column numbers
    assert str(exc.value) == (
        f"{path}: task.options.token_column=0 is a column number, but the fields of a CoNLL-U "
        "file are named: set it to FORM or LEMMA; task.options.tag_column=-1 is a column number, "
        "but the fields of a CoNLL-U file are named: set it to UPOS or XPOS or FEATS or DEPREL"
    )
    with pytest.raises(DataError, match=rf"{path}: .*tag_column reads UPOS .*, not HEAD"):
        TASK.read(path, Options(token_column="FORM", tag_column="HEAD"))
    with pytest.raises(DataError, match=r"token_column='WORD' is not a CoNLL-U field"):
        TASK.read(path, Options(token_column="WORD", tag_column="UPOS"))
    column_file = write(tmp_path / "x.txt", "the DET\ncat NOUN\n")
    with pytest.raises(DataError, match=rf"{column_file}: .*'FORM' is not a column number"):
        TASK.read(column_file, Options(token_column="FORM", tag_column="UPOS", format="conll"))
    assert TASK.read(column_file, Options(token_column="0", tag_column="1"))[0]["tags"] == [
        "DET",
        "NOUN",
    ]
    with pytest.raises(DataError, match=rf"{path}: no sentences"):
        TASK.read(write(path, "# sent_id = a\n# text = nothing\n\n"), UD)


# ---- the metric ------------------------------------------------------------------------------------


def test_metric_auto_follows_the_tags_and_the_option_overrides_it(tmp_path: Path) -> None:
    pos_rows = TASK.read(write(tmp_path / "ewt.conllu", EXCERPT), UD)
    pos = TASK.setup(pos_rows, UD)
    assert pos.metric == "token_accuracy" and pos.labels is not None and pos.labels[0] == "O"
    assert task_api.selection(TASK, pos) == ("accuracy", True)
    ner_rows = [{"words": ["EU", "rejects"], "tags": ["B-ORG", "O"], "line": 1}]
    ner = TASK.setup(ner_rows, Options())
    assert ner.metric == "entity_f1" and task_api.selection(TASK, ner) == ("f1", True)
    for scheme in (["O", "B-X", "I-X", "E-X", "S-X"], ["O", "U-LOC", "L-LOC"]):
        assert task_api.selection(TASK, Options(labels=scheme)) == ("f1", True)
    for tags in (["NOUN", "VERB"], ["O", "B-X", "NOUN"], ["O", "B"]):
        assert task_api.selection(TASK, Options(labels=tags)) == ("accuracy", True)
    # An explicit choice stays, whatever the tags; auto before the labels are known: entity F1.
    forced = TASK.setup(
        pos_rows, Options(token_column="FORM", tag_column="UPOS", metric="entity_f1")
    )
    assert forced.metric == "entity_f1" and task_api.selection(TASK, forced) == ("f1", True)
    assert TASK.setup(ner_rows, Options(metric="token_accuracy")).metric == "token_accuracy"
    assert task_api.selection(TASK, Options()) == ("f1", True)
    # A task without the member: its class's selection_metric and higher_is_better.
    from adapterkit.plugins import load_registry

    causal = load_registry().task("causal_lm")
    assert not hasattr(causal, "selection")
    assert task_api.selection(causal, None) == (causal.selection_metric, causal.higher_is_better)


# ---- the CLI on a tiny BERT ------------------------------------------------------------------------

# Words of the tiny BERT vocabulary with one UPOS each; sentences with comments, a multi-word token
# line and an empty node, as a UD file has them.
_TAGS = {"the": "DET", "a": "DET", "cat": "NOUN", "dog": "NOUN", "sun": "NOUN", "moon": "NOUN"}
_TAGS |= {"is": "AUX", ".": "PUNCT"} | dict.fromkeys(["happy", "sad", "big", "red", "small"], "ADJ")


def tiny_ud(n: int, odd: bool = False) -> str:
    """`n` sentences; `odd`: the last one tags "is" ADJ, a tag the model never saw on it."""
    dets, nouns = ["the", "a"], ["cat", "dog", "sun", "moon"]
    adjs = ["happy", "sad", "big", "red", "small"]
    out = []
    for i in range(n):
        words = [dets[i % 2], adjs[i % 5], nouns[i % 4], "is", adjs[(i + 2) % 5], "."]
        out += [f"# sent_id = tiny-{i}", f"# text = {' '.join(words)}"]
        for j, word in enumerate(words, 1):
            if j == 3:
                out.append(f"3-4\t{words[2]}'s" + "\t_" * 8)
            tag = "ADJ" if odd and i == n - 1 and word == "is" else _TAGS[word]
            out.append(word_line(j, word, tag, "XX"))
            if j == 4:
                out.append("4.1\tis\t_\tAUX\t_\t_\t_\t_\t_\t_")
        out.append("")
    return "\n".join(out) + "\n"


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def trained(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pos")
    write(root / "train.conllu", tiny_ud(12))
    write(root / "dev.conllu", tiny_ud(7, odd=True))
    recipe = {
        "model": {"name": str(bert_dir)},
        "task": {
            "name": "token_classification",
            "options": {"token_column": "FORM", "tag_column": "UPOS", "max_length": 32},
        },
        "data": {"train": "train.conllu", "eval": "dev.conllu"},
        "strategy": {"name": "full", "options": {}},
        "train": {
            "max_steps": 24,
            "batch_size": 4,
            "eval_every": 8,
            "lr": 0.01,
            "schedule": "constant",
            "seed": 0,
            "precision": "fp32",
            "threads": 1,  # tiny tensors: more threads only contend
        },
    }
    write(root / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    _invoke("train", str(root / "recipe.yaml"), "--out", str(root / "run"), "--no-progress")
    return root


def test_train_selects_by_word_accuracy_and_improves_it(trained: Path) -> None:
    run = trained / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = metrics["initial_eval"], metrics["final_eval"]
    assert "f1" not in after and after["eval_words"] == 7 * 6
    assert after["accuracy"] > before["accuracy"] + 0.3
    assert after["eval_loss"] < before["eval_loss"]
    evals = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "eval" in e and e["step"] > 0]
    assert [e["step"] for e in evals] == [8, 16, 24]
    best = max(evals, key=lambda e: e["eval"]["accuracy"])  # the first of the best, as best/ keeps
    assert metrics["best_step"] == best["step"] and metrics["best_eval"] == best["eval"]
    manifest = json.loads((run / "adapterkit.json").read_text())
    assert manifest["task"]["options"]["metric"] == "token_accuracy"  # `auto`, settled by setup
    assert manifest["task"]["options"]["token_column"] == "FORM"
    from adapterkit.comparison import runs

    assert runs._run_metric(run) == ("accuracy", True)  # what `adapterkit compare` reports


def test_eval_accuracy_is_sklearns_over_the_words_predict_wrote(trained: Path) -> None:
    from sklearn.metrics import accuracy_score

    run, dev = trained / "run", trained / "dev.conllu"
    scores = json.loads(_invoke("eval", "--adapter", str(run), "--data", str(dev), "--json"))
    final = json.loads((run / "metrics.json").read_text())["final_eval"]
    assert scores["accuracy"] == pytest.approx(final["accuracy"], abs=1e-12)
    out = trained / "predictions.jsonl"
    _invoke("predict", "--adapter", str(run), str(dev), "--out", str(out))
    predicted = [json.loads(x) for x in out.read_text().splitlines()]
    gold = [
        (m[1], m[2])  # (FORM, UPOS) of each word line, straight from the file
        for m in re.finditer(r"^\d+\t([^\t]*)\t[^\t]*\t([^\t]*)\t", dev.read_text(), re.M)
    ]
    assert [w for p in predicted for w in p["words"]] == [w for w, _ in gold]
    assert [p["sent_id"] for p in predicted] == [f"tiny-{i}" for i in range(7)]
    reference = accuracy_score([t for _, t in gold], [t for p in predicted for t in p["tags"]])
    assert 0.5 < reference < 1.0  # the odd "is" at least is wrong
    assert scores["accuracy"] == pytest.approx(float(reference), abs=1e-12)
    assert set(scores) == {"eval_loss", "accuracy", "eval_words"}


def test_a_malformed_conllu_line_exits_2_naming_file_and_line(trained: Path) -> None:
    bad = write(trained / "bad.conllu", GOOD + "\n2\tcat\tNOUN\n")
    args = ["train", str(trained / "recipe.yaml"), f"data.train={bad}", "--out", str(trained / "x")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert f"{bad}:2: 3 fields, but a CoNLL-U line has 10" in result.output


def test_conformance_kit_passes_on_conllu_data(bert_dir: Path, tmp_path: Path) -> None:
    data = write(tmp_path / "train.conllu", tiny_ud(6))
    options = {"token_column": "FORM", "tag_column": "UPOS", "max_length": 32}
    check_task(TokenClassification, options, data=data, model=str(bert_dir))
