"""Multi30k English->German as causal-LM instruction JSONL (the files in this folder).

Each aligned line pair of `<split>.en` / `<split>.de` becomes
    {"instruction": "Translate into German.", "input": <English>, "output": <German>}
with the text unchanged. The shipped subset (from ../shared/datasets/multi30k_en_de/):

    python data/multi30k_en_de/make_jsonl.py SRC train 1000 data/multi30k_en_de/train.jsonl
    python data/multi30k_en_de/make_jsonl.py SRC val 200 data/multi30k_en_de/eval.jsonl

(the first N line pairs). N = all converts a whole split, e.g. the test set sacreBLEU pins:
    python data/multi30k_en_de/make_jsonl.py SRC test_2016_flickr all runs/multi30k/test2016.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

INSTRUCTION = "Translate into German."


def lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def main(src: str, split: str, count: str, out: str) -> None:
    en, de = lines(Path(src) / f"{split}.en"), lines(Path(src) / f"{split}.de")
    if len(en) != len(de):
        raise SystemExit(f"{split}: {len(en)} English but {len(de)} German lines")
    pairs = list(zip(en, de, strict=True))[: None if count == "all" else int(count)]
    rows = [{"instruction": INSTRUCTION, "input": e, "output": d} for e, d in pairs]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit("usage: make_jsonl.py SRC_DIR SPLIT N|all OUT.jsonl")
    main(*sys.argv[1:])
