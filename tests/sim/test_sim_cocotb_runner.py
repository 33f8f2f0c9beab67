"""run_cocotb: a cached Verilator build, cocotb tests run against it, results parsed."""
from __future__ import annotations

from pathlib import Path

import pytest

from hbmforge.sim.cocotb_runner import run_cocotb

from sim_fixture import FIXTURE_RTL

pytestmark = pytest.mark.rtl

HERE = Path(__file__).resolve().parent


def _run(fixture_manifest, tmp_path, **kw):
    env = {"FIXTURE_HASH64": fixture_manifest["hash64"], **kw.pop("extra_env", {})}
    return run_cocotb([FIXTURE_RTL], "fixture", "fixture_cocotb_tests", module_dirs=[HERE],
                      extra_env=env, test_dir=tmp_path, progress=False, **kw)


def test_fixture_passes_under_cocotbext_axi_with_backpressure(fixture_manifest, tmp_path):
    res = _run(fixture_manifest, tmp_path / "a")
    assert res.ok, res.summary()
    assert (res.passed, res.failed, res.skipped) == (2, 0, 1)
    assert {t.name for t in res.tests if t.status == "passed"} == {"reads_identity_registers",
                                                                   "copies_under_backpressure"}
    assert res.results_xml.parent == tmp_path / "a"
    # a second run reuses the build
    again = _run(fixture_manifest, tmp_path / "b", testcase="reads_identity_registers")
    assert again.build_cached and again.build_seconds < 2
    assert (again.passed, again.failed) == (1, 0)


def test_failures_come_back_as_results_not_exits(fixture_manifest, tmp_path):
    res = _run(fixture_manifest, tmp_path, testcase="fails_on_purpose",
               extra_env={"FIXTURE_EXPECT_FAILURE": "1"})
    assert not res.ok
    assert res.failed == 1 and res.passed == 0
    assert "fails on purpose" in res.summary() or res.tests[0].status == "failed"
