"""The README describes the tree as it is: its Layout block is what docs/layout.py prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _layout_module():
    spec = importlib.util.spec_from_file_location("layout", ROOT / "docs" / "layout.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_layout_is_generated_from_the_tree() -> None:
    layout = _layout_module()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert layout.readme_block(readme) == layout.layout(), (
        "README.md's Layout block is stale: run `python docs/layout.py --write`"
    )


def test_layout_lists_every_package_and_module() -> None:
    text = _layout_module().layout()
    for path in (ROOT / "src" / "adapterkit").rglob("*.py"):
        if (
            path.name.startswith("__")
            or len(path.relative_to(ROOT / "src" / "adapterkit").parts) > 2
        ):
            continue
        assert path.name in text, f"{path} is missing from the layout"
    for name in ("training/", "storage/", "planning/", "comparison/", "search/", "export/"):
        assert name in text, name


def test_every_module_says_what_it_is() -> None:
    missing = [
        str(p.relative_to(ROOT))
        for base in (ROOT / "src", ROOT / "plugins")
        for p in base.rglob("*.py")
        if not _layout_module()._summary(p) and p.name != "__main__.py"
    ]
    assert not missing, f"modules without a docstring: {missing}"
