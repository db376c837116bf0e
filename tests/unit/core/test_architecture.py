"""The layer rule, enforced: the core and the machinery never import or name a built-in plugin.

The built-in strategies (plugins/adapterkit_strategies) and tasks (adapterkit.tasks) register
through the same hooks a third party uses; everything else reaches them only through the registry
and the protocol members. So this scan fails when a module outside them imports one, or names a
built-in strategy or task in a string (a branch on `name == "qlora"`, a default list of names).
Docstrings and comments may talk about them; code may not. The one place allowed to name the
built-in plugin *modules* is `plugins.BUILTINS`, which loads them. `adapterkit.testing`, the
conformance kit, carries a table of tiny example cases for the built-in tasks (data in each
task's format, like peft's TEST_CASES); it may name them, and imports none of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from adapterkit.plugins import BUILTINS, load_registry

SRC = Path(__file__).resolve().parents[3] / "src" / "adapterkit"
PLUGIN_PACKAGES = ("adapterkit_strategies", "adapterkit.tasks")
WORDS_TOO_COMMON = {"full", "head", "text"}  # ordinary words: only an exact string counts


def _core_modules(*, kit: bool = True) -> list[Path]:
    skip = {"tasks"} if kit else {"tasks", "testing"}
    return sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in skip)


def _builtin_names() -> set[str]:
    registry = load_registry()
    names: set[str] = set()
    for kind in ("strategy", "task"):
        for name in registry.names(kind):
            owner = registry.owners[(kind, name)]
            if owner.name in BUILTINS:
                names.add(name)
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.add(id(value))
    return out


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _named_plugins(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    words = sorted(names - WORDS_TOO_COMMON)
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, words)) + r")(?![\w]|\.yaml)")
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
            if text in names or pattern.search(text):
                found.append((node.lineno, text))
    return found


def test_the_scan_knows_every_builtin_plugin() -> None:
    names = _builtin_names()
    assert {"full", "head", "last_n", "lora", "qlora"} <= names
    assert {"causal_lm", "sequence_classification", "token_classification"} <= names


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_and_machinery_never_import_a_builtin_plugin(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = [
        f"line {line}: imports {module}"
        for line, module in _imports(tree)
        if module.startswith(PLUGIN_PACKAGES)
    ]
    assert not bad, f"{path.relative_to(SRC)} imports a built-in plugin: {bad}"


@pytest.mark.parametrize("path", _core_modules(kit=False), ids=lambda p: str(p.relative_to(SRC)))
def test_core_and_machinery_never_name_a_builtin_plugin(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    found = _named_plugins(tree, _builtin_names() | set(PLUGIN_PACKAGES))
    if path.name == "plugins.py":  # BUILTINS loads the built-in plugin modules by name
        found = [(line, text) for line, text in found if text not in PLUGIN_PACKAGES]
    assert not found, (
        f"{path.relative_to(SRC)} names a built-in plugin (ask the plugin through a protocol "
        f"member instead): {found}"
    )


def test_the_scan_catches_a_name_and_an_import() -> None:
    code = 'import adapterkit_strategies.qlora\nif s.name == "qlora":\n    x = f"{n}=lora"\n'
    tree = ast.parse(code)
    assert [m for _, m in _imports(tree)] == ["adapterkit_strategies.qlora"]
    assert [t for _, t in _named_plugins(tree, {"qlora", "lora"})] == ["qlora", "=lora"]
    assert not _named_plugins(ast.parse('"""Docs may say lora."""\npath = "lora.yaml"'), {"lora"})
