"""The README's Python example runs as written, and `import adapterkit` stays light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a scratch folder that sees the repo's recipes and data, so runs/ lands there."""
    for name in ("recipes", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_example(), "README.md (Python)", "exec"), {})
    merged = tmp_path / "runs" / "readme-sst2-merged"
    assert (merged / "config.json").is_file() and (merged / "verify.json").is_file()
    assert (tmp_path / "runs" / "readme-sst2" / "adapterkit.json").is_file()


def test_import_adapterkit_loads_no_torch_and_offers_the_api() -> None:
    code = (
        "import sys, adapterkit\n"
        "names = ['train', 'load', 'evaluate', 'predict', 'generate', 'merge', 'plan', 'compare',"
        " 'sweep']\n"
        "assert all(callable(getattr(adapterkit, n)) for n in names), names\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_the_top_level_functions_survive_importing_the_subpackages() -> None:
    """`adapterkit.train` is the function even after the training package is imported."""
    import adapterkit
    import adapterkit.comparison.runs
    import adapterkit.planning.memory
    import adapterkit.search
    import adapterkit.training.trainer

    for name in ("train", "plan", "compare", "sweep"):
        assert getattr(adapterkit, name).__module__ == "adapterkit._public", name
