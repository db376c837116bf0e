"""`make demo`: LoRA on the embedded SmolLM2, eval before and after, then one generated answer.

Fails (exit 1) if the held-out loss did not drop. About five minutes on 2 CPU cores.
Extra `key=value` arguments override the recipe (the test suite runs it with train.max_steps=2).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2" / "lora.yaml"
PROMPT = "Give three tips for staying healthy."


def main(argv: list[str] | None = None) -> int:
    from adapterkit import api
    from adapterkit.recipe import resolve

    overrides = list(sys.argv[1:] if argv is None else argv)
    out = Path("runs/demo")
    start = time.perf_counter()
    recipe = resolve(RECIPE, ["data.max_train_rows=160", "data.max_eval_rows=40", *overrides])
    print(f"demo: LoRA on {recipe.model.name}, recipe {RECIPE.name}, output {out}", flush=True)
    metrics = api.train(recipe, out, progress=True, overwrite=True)
    before = metrics["initial_eval"]["eval_loss"]
    after = metrics["final_eval"]["eval_loss"]
    print(api.summary(metrics, out))
    print(f"\neval loss before: {before:.4f}  after: {after:.4f}")
    answer = api.generate(PROMPT, adapter=out, max_new_tokens=64)
    print(f"\nprompt: {PROMPT}\nanswer: {answer}")
    print(f"\ndemo wall time: {time.perf_counter() - start:.0f} s")
    if not after < before:
        print("demo FAILED: the eval loss did not drop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
