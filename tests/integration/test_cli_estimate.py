"""`hbmforge estimate`: bad input is a one-line error (the real run's CLI test is in tests/unit/test_estimate.py)."""
from __future__ import annotations

import pytest
import yaml

import hbmforge.flows.estimate as est
from cli_helpers import invoke
from designs import tiny_config_dict


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


# The real-Yosys CLI run (tables, -o JSON, --json from the cache) is in tests/unit/test_estimate.py:
# test_cli_prints_the_tiny_estimate_tables_and_writes_json, after the module's one Yosys run.
