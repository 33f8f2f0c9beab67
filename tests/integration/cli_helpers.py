"""Running the hbmforge CLI in-process, for the CLI tests."""
from __future__ import annotations

from typer.testing import CliRunner

from hbmforge.flows.cli import app

runner = CliRunner()


def invoke(*args):
    """``hbmforge ARGS...`` (each argument stringified); returns typer's Result."""
    return runner.invoke(app, [str(a) for a in args])
