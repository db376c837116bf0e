"""examples/adapterkit-ia3 installed for real: `adapterkit` lists it, plans and compares it (and
the LayerNorm plugin of tests/plugin_dist) from its own recipe, and `pip uninstall` removes it.

Both go into a throwaway virtual environment: one without pip of its own, whose single .pth line
adds this project's site-packages (adapterkit, torch, pip, setuptools), so nothing is downloaded;
pip installs from the local folders (--no-index --no-deps --no-build-isolation) into the venv,
where it can uninstall them again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from adapterkit.testing import save_tiny_llama_dir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "adapterkit-ia3"
RECIPE = EXAMPLE / "recipes" / "smollm2-ia3.yaml"
SOURCES = {"adapterkit-ia3": EXAMPLE, "adapterkit-norms": ROOT / "tests" / "plugin_dist"}
# The recipe's run, made small: the tiny Llama for SmolLM2, 2 steps on 8 rows.
SMALL = [
    "train.max_steps=2", "train.batch_size=2", "train.eval_every=null",
    "data.max_train_rows=8", "data.max_eval_rows=4", "task.options.max_length=64",
]  # fmt: skip


class Env:
    """The throwaway environment: its python, a work folder, and the tiny model."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.python = work / "venv" / "bin" / "python"
        self.tiny = work / "tiny-llama"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERKIT_")}
        return subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, env=env, cwd=self.work
        )

    def adapterkit(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("-m", "adapterkit", *args)

    def pip(self, *args: str) -> None:
        out = self.run("-m", "pip", *args)
        assert out.returncode == 0, out.stdout + out.stderr

    def install(self, dist: str) -> None:
        copy = self.work / f"src-{dist}"  # pip builds in the folder: build in a copy
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(SOURCES[dist], copy, ignore=shutil.ignore_patterns("*.egg-info", "build"))
        self.pip("install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(copy))

    def strategies(self) -> dict[str, dict]:
        out = self.adapterkit("strategies", "--json")
        assert out.returncode == 0, out.stderr
        return {s["name"]: s for s in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    env = Env(tmp_path_factory.mktemp("example-plugin"))
    venv = env.work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = env.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout
    project = sysconfig.get_paths()["purelib"]
    (Path(site.strip()) / "adapterkit_project.pth").write_text(
        f"import site; site.addsitedir({project!r})\n"
    )
    for dist in SOURCES:
        env.install(dist)
    save_tiny_llama_dir(env.tiny)
    return env


def test_strategies_lists_the_installed_example_plugin(env: Env) -> None:
    listed = env.strategies()
    assert listed["ia3"]["distribution"] == "adapterkit-ia3"
    options = [o["name"] for o in listed["ia3"]["options"]]
    assert options == ["target_modules", "feedforward_modules"]
    assert listed["norms"]["distribution"] == "adapterkit-norms"
    out = env.adapterkit("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["ia3"]["distribution"] == "adapterkit-ia3"
    assert plugins["ia3"]["version"] == "0.1.0"
    assert plugins["ia3"]["hooks"] == ["register_strategies"]
    out = env.adapterkit("recipes", "validate", str(RECIPE))  # its recipe, as shipped
    assert out.returncode == 0, out.stderr


def test_plan_plans_the_example_and_the_layernorm_strategy(env: Env) -> None:
    out = env.adapterkit(
        "plan", str(RECIPE), "--model", str(env.tiny), "--strategies", "ia3,norms", "--json"
    )
    assert out.returncode == 0, out.stderr
    plans = {p["strategy"]: p for p in json.loads(out.stdout)}
    # Tiny Llama, 2 blocks: IA3 scales k_proj's 16 and v_proj's 16 outputs and down_proj's 64
    # inputs per block; the norms are 2 per block plus the final one, 32 weights each.
    assert plans["ia3"]["trainable_params"] == 2 * (16 + 16 + 64)
    assert plans["norms"]["trainable_params"] == (2 * 2 + 1) * 32
    assert all(p["total"] > 0 for p in plans.values())


def test_compare_trains_saves_and_compares_both_from_the_recipe(env: Env) -> None:
    out_dir = env.work / "compare"
    args = [str(RECIPE), f"model.name={env.tiny}", *SMALL, "--strategies", "ia3,norms"]
    out = env.adapterkit("compare", *args, "--out", str(out_dir), "--json", "--no-progress")
    assert out.returncode == 0, out.stderr
    rows = {r["strategy"]: r for r in json.loads(out.stdout)}
    assert [rows[s]["error"] for s in ("ia3", "norms")] == [None, None]
    assert rows["ia3"]["steps"] == rows["norms"]["steps"] == 2
    assert rows["ia3"]["trainable_params"] == 192 and rows["norms"]["trainable_params"] == 160

    run = out_dir / "runs" / "ia3"  # each compare run is an `adapterkit train` of the recipe
    manifest = json.loads((run / "adapterkit.json").read_text())
    assert manifest["strategy"]["name"] == "ia3"
    _loads_with_plain_peft(env.tiny, run)


def _loads_with_plain_peft(base: Path, run: Path) -> None:
    """The run directory is a peft adapter: peft loads exactly the trained vectors from it."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run)
    saved = load_file(str(run / "adapter_model.safetensors"))
    vectors = {n: p for n, p in model.named_parameters() if "ia3_l" in n}
    assert len(vectors) == len(saved) == 6
    for name, tensor in saved.items():
        loaded = vectors[name.replace("ia3_l", "ia3_l.default")]
        assert torch.equal(loaded, tensor)
    assert not all(torch.equal(t, torch.ones_like(t)) for t in saved.values())  # it trained


def test_the_packages_own_tests_pass_installed(env: Env) -> None:
    out = env.run("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(EXAMPLE / "tests"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 passed" in out.stdout


def test_uninstalling_removes_it(env: Env) -> None:
    env.pip("uninstall", "-y", "-q", "adapterkit-ia3")
    listed = env.strategies()
    assert "ia3" not in listed and "norms" in listed
    out = env.adapterkit("recipes", "validate", str(RECIPE))
    assert out.returncode == 2 and "unknown strategy 'ia3'" in out.stderr

    env.install("adapterkit-ia3")  # and back, for whatever runs next in this environment
    assert "ia3" in env.strategies()
