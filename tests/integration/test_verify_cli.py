"""`hbmforge verify CONFIG`: proofs, the covered regression and functional coverage in one table
and one JSON report (a tiny design; the starter config under -m slow)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import invoke
from designs import tiny_config_dict

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.rtl


def _tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))
    return path


def test_verify_prints_one_table_and_writes_the_reports(tmp_path):
    out = tmp_path / "rep"
    res = invoke("verify", _tiny(tmp_path), "-o", out, "--depth", "4", "--cases", "2")
    assert res.exit_code == 0, res.output
    for part in ("formal control", "formal port_data", "regression", "code coverage", "functional coverage",
                 "proved, unbounded", "proved to depth 4"):
        assert part in res.output, f"{part!r} missing from\n{res.output}"
    rep = json.loads((out / "report.json").read_text())
    assert rep["ok"] and rep["formal_properties_proved"] == rep["formal_properties"] > 50
    assert rep["regression"]["failed"] == 0 and rep["regression"]["passed"] >= 10
    assert rep["rtl_line_coverage"] >= 0.95, rep["modules_below_target"]
    assert 0.2 < rep["rtl_toggle_coverage"] < 1.0
    assert rep["functional_coverage_bins_hit"] > 0.8
    assert set(rep["functional_bins"]["missing"]) == set((out / "fcov_missing.txt").read_text().split("\n")) - {""}
    for f in ("coverage/coverage.dat", "coverage/coverage.info", "coverage/html/index.html",
              "coverage/modules.txt", "coverage/uncovered.txt", "summary.txt", "fcov.yml"):
        assert (out / f).is_file(), f
    # --json prints the same report (no coverage run this time: only the proofs)
    res = invoke("verify", _tiny(tmp_path), "-o", tmp_path / "j", "--json", "--no-coverage", "--depth", "3")
    assert res.exit_code == 0, res.output
    j = json.loads(res.output)
    assert j["rtl_line_coverage"] is None and [f["name"] for f in j["formal"]] == ["control", "port_data",
                                                                                  "port_w0", "port_w1"]


def test_verify_rejects_bad_options_with_one_line(tmp_path):
    cfg = _tiny(tmp_path)
    for args, words in ((["--scale", "big"], "--scale"), (["--min-line", "2"], "--min-line"),
                        (["--no-formal", "--no-coverage"], "nothing to verify"), (["--depth", "0"], "depth"),
                        (["--seed", "-1"], "--seed"), (["--cases", "0"], "--cases")):
        res = invoke("verify", cfg, "-o", tmp_path / "x", *args)
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output


@pytest.mark.slow
def test_verify_starter_example_reaches_the_line_target(tmp_path):
    res = invoke("verify", "examples/u280_starter.yaml", "-o", tmp_path / "s", "--min-line", "0.95")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("knob, value, words", [("seed", -1, "seed must be in"), ("cases", 0, "cases must be in"),
                                                ("busy", 1.0, "busy must be"), ("seed", True, "seed must be an integer")])
def test_the_regression_and_verify_apis_refuse_bad_bench_knobs_before_generating(tmp_path, knob, value, words):
    from hbmforge.config import load_config
    from hbmforge.flows.regression import run_regression
    from hbmforge.flows.verify import verify

    cfg = load_config(ROOT / "examples" / "u280_starter.yaml")
    for fn, out in ((run_regression, "build_dir"), (verify, "out_dir")):
        with pytest.raises((ValueError, TypeError), match=words):
            fn(cfg, **{knob: value, out: tmp_path / fn.__name__})
        assert not (tmp_path / fn.__name__).exists()
