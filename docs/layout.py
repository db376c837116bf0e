"""Print the README's "Layout" block from the tree: every package and module with the first line
of its docstring. `python docs/layout.py --write` rewrites the block in README.md in place;
tests/unit/core/test_docs.py fails when the README's block is not what this prints.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- layout:begin -->", "<!-- layout:end -->"
WIDTH = 40  # the name column
TOP = {
    "benchmarks/": "side-by-side measurements against the peers a user would otherwise run",
    "data/": "small dataset subsets with attribution (data/README.md)",
    "docs/": "architecture.md, errors.md, plugins.md; this layout's generator",
    "examples/": "third-party plugins as their own installable packages",
    "recipes/": "YAML recipes, each opening with the exact command to run it",
    "tests/": "unit/ per subsystem, system/ for CLI, crash and end-to-end; conftest fixtures",
}


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring (a package's `__init__.py`)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].split("; ")[0]
    return sentence.rstrip(".:")


def _entries(package: Path, prefix: str, depth: int) -> list[tuple[str, str]]:
    out = []
    for child in sorted(package.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        if child.name.startswith(("__", ".")) or child.name.endswith(".egg-info"):
            continue
        if child.is_dir() and (child / "__init__.py").is_file():
            out.append((f"{prefix}{child.name}/", _summary(child / "__init__.py")))
            if depth > 0:
                out += _entries(child, prefix + "  ", depth - 1)
        elif child.suffix == ".py":
            out.append((f"{prefix}{child.name}", _summary(child)))
    return out


def layout() -> str:
    rows = [("src/adapterkit/", _summary(ROOT / "src/adapterkit/__init__.py"))]
    rows += _entries(ROOT / "src/adapterkit", "  ", 1)
    for plugin in sorted((ROOT / "plugins").iterdir()):
        if (plugin / "__init__.py").is_file():
            rows.append((f"plugins/{plugin.name}/", _summary(plugin / "__init__.py")))
            rows += _entries(plugin, "  ", 0)
    rows += [(name, text) for name, text in TOP.items() if (ROOT / name).is_dir()]
    lines = [f"{name:<{WIDTH}}{text}".rstrip() for name, text in rows]
    return "```\n" + "\n".join(lines) + "\n```"


def readme_block(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if "--write" in sys.argv[1:]:
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        readme.write_text(text[:start] + "\n" + layout() + "\n" + text[end:], encoding="utf-8")
    else:
        print(layout())
    return 0


if __name__ == "__main__":
    sys.exit(main())
