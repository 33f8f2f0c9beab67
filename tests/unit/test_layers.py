"""The layers of DESIGN.md hold: the import-linter contracts in pyproject.toml pass.

The package maps ``hbmforge.generators`` etc. to top-level folders (``package-dir``), which
import-linter cannot walk in place; the test copies the sources into the package layout a
wheel would have and lints that copy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _package_tree(out: Path) -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pkg, src in cfg["tool"]["setuptools"]["package-dir"].items():
        dst = out.joinpath(*pkg.split("."))
        for f in (ROOT / src).rglob("*.py"):
            target = dst / f.relative_to(ROOT / src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)


def _lint(tree: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(exe), str(ROOT / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_linter_layers_contract_holds(tmp_path):
    _package_tree(tmp_path)
    res = _lint(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_a_contract_module_importing_the_host_breaks_the_contract(tmp_path):
    """The lint can fail: the same check on a tree where the layout imports the host."""
    _package_tree(tmp_path)
    layout = tmp_path / "hbmforge" / "layout.py"
    layout.write_text(layout.read_text() + "\nfrom hbmforge.host import device  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout


def test_the_shell_names_no_engine_family():
    """A new family plugs in through the engine contract: the shell's code never names one."""
    from hbmforge.engines import FAMILIES

    shell = ROOT / "generators" / "shell"
    for f in shell.glob("*.py"):
        text = f.read_text().lower()
        for kind in FAMILIES:
            assert f"{kind} engine" not in text and f'"{kind}"' not in text and f"{kind}_" not in text, \
                (f.name, kind)
