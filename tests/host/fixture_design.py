"""The hand-written fixture kernel of the sim tests (tests/sim/sim_fixture.py) for the host's rtl
tests: its RTL, its layout-derived manifest and its job registers, from that one module."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _sim_fixture():
    module = sys.modules.get("sim_fixture")
    if module is None:
        path = Path(__file__).resolve().parents[1] / "sim" / "sim_fixture.py"
        spec = importlib.util.spec_from_file_location("sim_fixture", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sim_fixture"] = module
        spec.loader.exec_module(module)
    return module


_fx = _sim_fixture()
FIXTURE_CONFIG = _fx.FIXTURE_CONFIG
FIXTURE_LAYOUT = _fx.FIXTURE_LAYOUT
FIXTURE_MANIFEST = _fx.FIXTURE_MANIFEST
FIXTURE_RTL = _fx.FIXTURE_RTL
FIXTURE_REGS = _fx.FIXTURE_REGS
WORD = _fx.WORD
fixture_reg_write = _fx.fixture_reg_write
