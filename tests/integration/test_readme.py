"""The README's commands and Python tour stay true."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hbmforge.flows.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"
CI_RUN = Path(__file__).resolve().parents[2] / ".ci" / "run"


def _block_after(heading: str, lang: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    return m.group(1)


def test_ci_runs_the_readme_test_command():
    assert "# run the test suite" in README.read_text()
    assert "grep -A1 '^# run the test suite' README.md" in CI_RUN.read_text()


def _command_after(comment: str) -> str:
    return README.read_text().split(comment + "\n", 1)[1].splitlines()[0]


def test_quick_start_has_the_two_commands():
    main_job = _command_after("# install everything and run the main job")
    tests = _command_after("# run the test suite")
    for cmd in (main_job, tests):
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/pip install -e")
    assert main_job.endswith("hbmforge quickstart --board u280")
    assert "pytest" in tests


@pytest.mark.rtl
def test_python_tour_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init", "--board", "u280", "-o", "my.yaml"]).exit_code == 0
    code = _block_after("## A short tour", "python")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    y, dev = scope["y"], scope["dev"]
    assert y.shape == (8, 512)
    c = dev.counters()
    assert {"cycles", "bytes_read", "bytes_written", "mac_ops"} <= set(c) and c["cycles"] > 0
    ref = scope["x"] @ scope["w"].T
    assert ((y - ref) ** 2).sum() ** 0.5 / ((ref ** 2).sum() ** 0.5) < 0.2
    dev.close()
