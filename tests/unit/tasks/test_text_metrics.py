"""Generation metrics against the reference implementations, on prediction files.

BLEU and chrF against sacreBLEU (its API and its command line), ROUGE against rouge-score, exact
match and F1 against the official SQuAD v1.1 `evaluate-v1.1.py` (tests/data/squad/).
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from adapterkit.errors import RecipeError
from adapterkit.tasks import _text_metrics as tm

ROOT = Path(__file__).resolve().parents[3]
SQUAD = ROOT / "tests" / "data" / "squad"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def degraded(refs: list[str], seed: int) -> list[str]:
    """A system's output: each reference with seeded word drops, swaps and substitutions."""
    rng = random.Random(seed)
    out = []
    for ref in refs:
        words = ref.split()
        for _ in range(rng.randrange(4)):
            op, i = rng.randrange(3), rng.randrange(len(words))
            if op == 0 and len(words) > 2:
                del words[i]
            elif op == 1 and i + 1 < len(words):
                words[i], words[i + 1] = words[i + 1], words[i]
            else:
                words[i] = rng.choice(["der", "die", "das", "und", "Mann"])
        out.append(" ".join(words))
    return out


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def sacrebleu_cli(hyp: Path, refs: list[Path]) -> dict[str, dict]:
    """sacreBLEU's command line (6 decimals) on the files: {"BLEU": {...}, "chrF2": {...}}."""
    cmd = [sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(hyp)]
    done = subprocess.run(
        [*cmd, "-m", "bleu", "chrf", "-w", "6"], capture_output=True, text=True, check=True
    )
    return {r["name"]: r for r in json.loads(done.stdout)}


# ---- BLEU and chrF ----------------------------------------------------------------------------


def test_bleu_and_chrf_equal_sacrebleu_on_a_multi30k_prediction_file(tmp_path):
    import sacrebleu

    rows = jsonl(ROOT / "data" / "multi30k_en_de" / "eval.jsonl")[:60]
    refs = [r["output"] for r in rows]
    ref_file = write_lines(tmp_path / "ref.de", refs)
    hyp_file = write_lines(tmp_path / "hyp.de", degraded(refs, seed=13))
    hyps = read_lines(hyp_file)

    got = tm.score(["bleu", "chrf"], hyps, [[r] for r in refs])

    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert 20 < float(got["bleu"]) < 90  # a real mixture of matches and misses
    cli = sacrebleu_cli(hyp_file, [ref_file])
    assert got["bleu"] == pytest.approx(cli["BLEU"]["score"], abs=1e-5)
    assert got["chrf"] == pytest.approx(cli["chrF2"]["score"], abs=1e-5)
    assert got["bleu_signature"] == cli["BLEU"]["signature"]
    assert got["chrf_signature"] == cli["chrF2"]["signature"]
    assert "tok:13a" in str(got["bleu_signature"])


def test_variable_references_equal_sacrebleu_with_the_missing_ones_repeated(tmp_path):
    # A reference given twice changes neither BLEU (clipped counts, closest length) nor chrF (best
    # reference), so rows padded by repeating their first reference are the same test set.
    rows = jsonl(ROOT / "data" / "scitldr" / "test.jsonl")[:20]
    refs = [r["references"] for r in rows]
    assert len({len(r) for r in refs}) > 1
    hyps = degraded([r[-1] for r in refs], seed=5)
    width = max(len(r) for r in refs)
    files = [
        write_lines(tmp_path / f"ref{k}", [r[k] if k < len(r) else r[0] for r in refs])
        for k in range(width)
    ]
    got = tm.score(["bleu", "chrf"], hyps, refs)
    cli = sacrebleu_cli(write_lines(tmp_path / "hyp", hyps), files)
    assert got["bleu"] == pytest.approx(cli["BLEU"]["score"], abs=1e-5)
    assert got["chrf"] == pytest.approx(cli["chrF2"]["score"], abs=1e-5)
    assert str(got["bleu_signature"]).startswith("nrefs:var|")


# ---- ROUGE ------------------------------------------------------------------------------------


def test_rouge_equals_rouge_score_on_the_lead_baseline():
    from rouge_score import rouge_scorer

    rows = jsonl(ROOT / "data" / "scitldr" / "test.jsonl")[:25]
    leads = [r["input"].split(". ")[0] + "." for r in rows]  # the first sentence of the abstract
    refs = [r["references"] for r in rows]
    got = tm.score(["rouge"], leads, refs)

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        best = [
            max(scorer.score(ref, lead)[key].fmeasure for ref in rr)
            for lead, rr in zip(leads, refs, strict=True)
        ]
        assert got[key] == pytest.approx(100 * sum(best) / len(best), abs=1e-9)
    assert 10 < float(got["rouge1"]) < 60
    assert set(got) == {"rouge1", "rouge2", "rougeL"}


def test_rouge_stems():
    assert tm.score(["rouge"], ["the cats were running"], [["the cat was run"]])["rouge1"] == (
        pytest.approx(75.0)  # cats~cat, running~run; were/was differ
    )


# ---- exact match and F1 (SQuAD v1.1) ----------------------------------------------------------


def squad_predictions(data: dict) -> tuple[dict, dict[str, str]]:
    """The dataset with a second answer on every third question, and varied predictions."""
    preds: dict[str, str] = {}
    n = 0
    for article in data["data"]:
        for par in article["paragraphs"]:
            context = par["context"]
            for qa in par["qas"]:
                gold = qa["answers"][0]
                end = gold["answer_start"] + len(gold["text"])
                after = " ".join(context[end:].split()[:3])
                if n % 3 == 0:  # a longer span as another gold answer
                    qa["answers"].append(
                        {"answer_start": gold["answer_start"], "text": gold["text"] + " " + after}
                    )
                preds[qa["id"]] = [
                    gold["text"],
                    "The " + gold["text"].upper() + ".",
                    gold["text"].split()[0],
                    gold["text"] + " " + after,
                    qa["question"],
                    "",
                ][n % 6]
                n += 1
    return data, preds


def load_official():
    spec = importlib.util.spec_from_file_location("squad_v11", SQUAD / "evaluate-v1.1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_match_and_f1_equal_the_official_script_on_a_prediction_file(tmp_path):
    data, preds = squad_predictions(json.loads((SQUAD / "dev_sample.json").read_text()))
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    done = subprocess.run(
        [sys.executable, str(SQUAD / "evaluate-v1.1.py"), "data.json", "pred.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    official = json.loads(done.stdout)

    qas = [qa for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    got = tm.score(
        ["exact_match", "f1"],
        [preds[qa["id"]] for qa in qas],
        [[a["text"] for a in qa["answers"]] for qa in qas],
    )
    assert got["exact_match"] == pytest.approx(official["exact_match"], abs=1e-9)
    assert got["f1"] == pytest.approx(official["f1"], abs=1e-9)
    assert 0 < official["exact_match"] < official["f1"] < 100


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("an apple, a pear", "apple pear"),
        ("Théâtre  du   Soleil", "théâtre du soleil."),
        ("theatre", "the atre"),
        ("", "anything"),
        ("a the an", ""),
        ("1,000 points", "1000 points"),
    ],
)
def test_squad_functions_are_the_official_ones(pred, gold):
    official = load_official()
    assert tm.normalize_answer(pred) == official.normalize_answer(pred)
    assert tm.squad_exact_match(pred, gold) == official.exact_match_score(pred, gold)
    assert tm.squad_f1(pred, gold) == pytest.approx(official.f1_score(pred, gold), abs=1e-12)


# ---- names and shapes -------------------------------------------------------------------------


def test_unknown_metric_is_a_recipe_error_naming_the_key_and_the_choices():
    with pytest.raises(RecipeError) as err:
        tm.score(["bleu", "blue"], ["a"], [["a"]])
    text = str(err.value)
    assert "task.options.metrics" in text and "'blue'" in text
    assert all(name in text for name in tm.METRICS)


def test_the_causal_lm_option_allows_exactly_these_names():
    import typing

    from adapterkit.tasks.causal_lm import Options

    hint = typing.get_type_hints(Options, include_extras=True)["metrics"]
    (item,) = typing.get_args(typing.get_args(hint)[0])
    assert set(typing.get_args(item)) == set(tm.METRICS)


def test_rows_must_line_up_and_have_references():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        tm.score(["bleu"], ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        tm.score(["bleu"], ["a"], [[]])
    with pytest.raises(ValueError, match="one sequence of reference strings"):
        tm.score(["bleu"], ["a"], ["a"])  # type: ignore[list-item]
    assert tm.score(["bleu", "rouge"], [], []) == {}
