"""Plugin discovery: a real installed distribution, inline plugins, and every way a plugin can break."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapterkit import hookimpl
from adapterkit.errors import PluginError
from adapterkit.plugins import build_registry, get_plugin_manager

HERE = Path(__file__).resolve().parents[2]  # tests/


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install tests/plugin_dist (a real distribution with an entry point) into a folder."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(HERE / "plugin_dist", src)  # build in a copy: keep the repo clean
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert (target / "adapterkit_norms-0.3.1.dist-info" / "entry_points.txt").is_file()
    return target


def _cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    for var in ("ADAPTERKIT_PLUGINS", "ADAPTERKIT_DISABLE_PLUGINS"):
        if var not in env:
            environ.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "adapterkit", *args], env=environ, capture_output=True, text=True
    )


def test_installed_distribution_is_discovered(installed_plugin: Path) -> None:
    out = _cli(installed_plugin, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["norms"]["distribution"] == "adapterkit-norms"
    assert plugins["norms"]["version"] == "0.3.1"
    assert plugins["norms"]["hooks"] == ["register_strategies"]
    # built-ins come first, always
    assert list(plugins)[:2] == ["adapterkit_strategies", "adapterkit.tasks"]

    out = _cli(installed_plugin, "strategies", "--json")
    norms = next(s for s in json.loads(out.stdout) if s["name"] == "norms")
    assert norms["distribution"] == "adapterkit-norms"
    assert norms["options"] == [
        {"name": "train_head", "type": "bool", "default": False, "help": "also train the task head"}
    ]


@pytest.mark.parametrize(
    ("env", "loaded"),
    [
        ({}, True),
        ({"ADAPTERKIT_PLUGINS": ""}, False),
        ({"ADAPTERKIT_PLUGINS": "norms"}, True),
        ({"ADAPTERKIT_PLUGINS": "other,another"}, False),
        ({"ADAPTERKIT_DISABLE_PLUGINS": "norms"}, False),
        ({"ADAPTERKIT_PLUGINS": "norms", "ADAPTERKIT_DISABLE_PLUGINS": "norms"}, False),
    ],
)
def test_environment_selects_plugins(installed_plugin: Path, env: dict, loaded: bool) -> None:
    out = _cli(installed_plugin, "strategies", "--json", **env)
    assert out.returncode == 0, out.stderr
    names = {s["name"] for s in json.loads(out.stdout)}
    assert ("norms" in names) is loaded
    assert {"full", "head", "last_n", "lora", "qlora"} <= names  # built-ins always load


def _fake_distribution(root: Path, dist: str, version: str, ep_name: str, module: str, code: str):
    """A real (unpacked) distribution: dist-info with an entry point, plus its module."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[adapterkit]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(code))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_broken_import_names_plugin_distribution_and_version(site: Path) -> None:
    _fake_distribution(
        site, "broken-dist", "1.2.3", "broken", "broken_mod", "import nonexistent_xyz"
    )
    with pytest.raises(PluginError) as exc:
        get_plugin_manager()
    msg = str(exc.value)
    assert "'broken'" in msg and "broken-dist 1.2.3" in msg and "nonexistent_xyz" in msg
    assert "ADAPTERKIT_DISABLE_PLUGINS=broken" in msg


def test_broken_plugin_is_skipped_when_disabled(site: Path, monkeypatch) -> None:
    _fake_distribution(site, "broken-dist", "1.2.3", "broken", "broken_mod2", "raise RuntimeError")
    monkeypatch.setenv("ADAPTERKIT_DISABLE_PLUGINS", "broken")
    assert "lora" in build_registry(get_plugin_manager()).names("strategy")


DUPLICATE = """
    from dataclasses import dataclass
    from adapterkit import hookimpl

    @dataclass
    class Opts:
        r: int = 4

    class Mine:
        name = "lora"
        Options = Opts
        def load_kwargs(self, o, p): return {}
        def apply(self, m, o, p): return m
        def adapter_state_dict(self, m, o): return {}
        def load_adapter_state_dict(self, m, t, o): return None

    @hookimpl
    def register_strategies(register):
        register(Mine)
"""


def test_duplicate_name_names_both_distributions(site: Path) -> None:
    _fake_distribution(site, "copycat", "0.9", "copycat", "copycat_mod", DUPLICATE)
    with pytest.raises(PluginError) as exc:
        build_registry(get_plugin_manager())
    msg = str(exc.value)
    assert "'lora' is registered twice" in msg
    assert "adapterkit_strategies' (adapterkit" in msg and "'copycat' (copycat 0.9)" in msg


def test_protocol_violation_names_plugin(site: Path) -> None:
    code = """
        from adapterkit import hookimpl

        class NoApply:
            name = "noapply"
            Options = dict  # not a dataclass

        @hookimpl
        def register_strategies(register):
            register(NoApply)
    """
    _fake_distribution(site, "sloppy", "2.0", "sloppy", "sloppy_mod", code)
    with pytest.raises(PluginError) as exc:
        build_registry(get_plugin_manager())
    msg = str(exc.value)
    assert "'sloppy' (sloppy 2.0)" in msg and "missing 'apply'" in msg
    assert "'Options' must be a dataclass" in msg


class _InlinePlugin:
    @hookimpl
    def register_strategies(self, register):
        from dataclasses import dataclass

        @dataclass
        class Opts:
            pass

        class Echo:
            name = "echo"
            Options = Opts
            description = "test"

            def load_kwargs(self, o, p):
                return {}

            def apply(self, m, o, p):
                return m

            def adapter_state_dict(self, m, o):
                return {}

            def load_adapter_state_dict(self, m, t, o):
                return None

        register(Echo)


def test_inline_plugin() -> None:
    pm = get_plugin_manager()
    pm.register(_InlinePlugin(), name="inline-test")
    registry = build_registry(pm)
    assert "echo" in registry.names("strategy")
    owner = registry.owners[("strategy", "echo")]
    assert owner.name == "inline-test" and owner.distribution == "(registered in-process)"


def test_cli_reports_broken_plugin_without_traceback(site: Path) -> None:
    _fake_distribution(site, "broken-dist", "1.2.3", "broken", "broken_cli", "import nope_nope")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-m", "adapterkit", "strategies"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "broken-dist 1.2.3" in out.stderr and "Traceback" not in out.stderr


def test_register_commands_adds_a_cli_command(site: Path) -> None:
    code = """
        import click
        from adapterkit import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("name")
            def hello(name):
                \"\"\"Say hello (from a plugin).\"\"\"
                click.echo(f"hello {name}")
    """
    _fake_distribution(site, "hello-cmd", "0.1", "hello", "hello_cmd", code)
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "adapterkit"]
    out = subprocess.run([*cmd, "hello", "world"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"
    helptext = subprocess.run([*cmd, "--help"], env=env, capture_output=True, text=True).stdout
    assert "Say hello (from a plugin)." in helptext


# ---- docs/plugins.md, built, installed and tested exactly as written ----------------------------

DOC = HERE.parent / "docs" / "plugins.md"
DOC_FILES = [
    "my_adapterkit_plugin/__init__.py",
    "my_adapterkit_plugin/bitfit.py",
    "my_adapterkit_plugin/commands.py",
    "my_adapterkit_plugin/text_lm.py",
    "pyproject.toml",
    "tests/test_my_plugin.py",
]


def _doc_files() -> dict[str, str]:
    """The guide's files: each code block whose first line is `# file: <path>`."""
    files = {}
    for block in re.findall(r"^```\w*\n(.*?)^```", DOC.read_text(), re.S | re.M):
        first, _, body = block.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ").strip()] = body
    return files


def test_the_plugin_guide_builds_an_installable_plugin_that_passes_its_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _doc_files()
    assert sorted(files) == DOC_FILES
    folder = tmp_path / "my-adapterkit-plugin"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(folder)],
        check=True, capture_output=True,
    )  # fmt: skip

    plugins = {p["name"]: p for p in json.loads(_cli(site, "plugins", "--json").stdout)}
    assert plugins["mine"]["distribution"] == "my-adapterkit-plugin"
    assert plugins["mine"]["hooks"] == [
        "register_commands",
        "register_strategies",
        "register_tasks",
    ]
    strategies = {s["name"]: s for s in json.loads(_cli(site, "strategies", "--json").stdout)}
    assert strategies["bitfit"]["distribution"] == "my-adapterkit-plugin"
    assert "text_lm" in {t["name"] for t in json.loads(_cli(site, "tasks", "--json").stdout)}
    out = _cli(site, "rows", str(HERE.parent / "recipes" / "smollm2" / "lora.yaml"))
    assert (out.returncode, out.stdout) == (0, "train: 400 rows\neval: 100 rows\n"), out.stderr

    # The guide's own tests, against the installed plugin (check_strategy trains text_lm by name).
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    from adapterkit import plugins as plugin_module

    plugin_module.load_registry.cache_clear()
    plugin_module.plugin_manager.cache_clear()
    spec = importlib.util.spec_from_file_location("test_my_plugin", folder / DOC_FILES[-1])
    assert spec is not None and spec.loader is not None
    guide_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guide_tests)
    guide_tests.test_bitfit_meets_the_strategy_contract()
    guide_tests.test_text_lm_meets_the_task_contract(tmp_path)
    guide_tests.test_the_builtin_strategies_train_text_lm()
