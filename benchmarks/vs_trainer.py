"""adapterkit against the usual hand-written Trainer + peft script: vs_peers.py with those two rows.

    .venv/bin/python benchmarks/vs_trainer.py [any vs_peers.py option, e.g. --reps 1]

The former protocol of this script (one run each, max length 256, 20 steps) is gone: the same
token ids, step order, validity check and measurements as vs_peers.py now apply, with
`--peers adapterkit,tutorial` and output under benchmarks/results/vs_trainer/ (a later --peers or
--out on the command line wins).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vs_peers import main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    out = str(ROOT / "benchmarks/results/vs_trainer")
    sys.exit(main(["--peers", "adapterkit,tutorial", "--out", out, *sys.argv[1:]]))
