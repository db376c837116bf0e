"""SciTLDR-A (abstract -> one-sentence TLDR) as causal-LM instruction JSONL (this folder's files).

Each paper of `<split>.jsonl` becomes
    {"instruction": "Summarise this abstract in one sentence.", "input": " ".join(source),
     "output": target[0], "references": target (dev/test only), "paper_id": ...}
with the text unchanged: `output` (what training learns) is the author's TLDR, `references` every
TLDR of the paper (what ROUGE is scored against). The shipped subset takes, in file order, the
first N papers whose abstract is at most 1,200 characters (from ../shared/datasets/scitldr_a/):

    python data/scitldr/make_jsonl.py SRC train 120 data/scitldr/train.jsonl
    python data/scitldr/make_jsonl.py SRC dev 30 data/scitldr/dev.jsonl --references
    python data/scitldr/make_jsonl.py SRC test 50 data/scitldr/test.jsonl --references

N = all converts a whole split with no length limit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

INSTRUCTION = "Summarise this abstract in one sentence."
MAX_CHARS = 1200


def main(src: str, split: str, count: str, out: str, references: bool) -> None:
    text = (Path(src) / f"{split}.jsonl").read_text(encoding="utf-8")
    papers = [json.loads(line) for line in text.split("\n") if line.strip()]
    if count != "all":
        papers = [p for p in papers if len(" ".join(p["source"])) <= MAX_CHARS][: int(count)]
    rows = []
    for p in papers:
        row = {"instruction": INSTRUCTION, "input": " ".join(p["source"]), "output": p["target"][0]}
        if references:
            row["references"] = list(p["target"])
        rows.append({**row, "paper_id": p["paper_id"]})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--references"]
    if len(args) != 4:
        raise SystemExit("usage: make_jsonl.py SRC_DIR SPLIT N|all OUT.jsonl [--references]")
    main(*args, references="--references" in sys.argv)
