"""The hbmforge command line: each command works, and bad input gives a message, not a traceback."""
from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import invoke
from designs import tiny_config_dict


def test_boards_lists_every_board():
    res = invoke("boards")
    assert res.exit_code == 0
    for name in ("u280", "u55c", "kv260", "zcu102"):
        assert name in res.output


def test_boards_json_is_machine_readable():
    res = invoke("boards", "--json")
    data = json.loads(res.output)
    assert {b["name"] for b in data} == {"u280", "u55c", "kv260", "zcu102"}
    assert all("resources" in b and "memory" in b for b in data)


def test_init_writes_a_valid_config_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "my.yaml"
    assert invoke("init", "--board", "kv260", "-o", out).exit_code == 0
    assert invoke("validate", out).exit_code == 0
    res = invoke("init", "--board", "kv260", "-o", out)
    assert res.exit_code == 2 and "exists" in res.output


def test_init_unknown_board_names_the_known_ones(tmp_path):
    res = invoke("init", "--board", "vcu118", "-o", tmp_path / "x.yaml")
    assert res.exit_code == 2
    assert "known boards: kv260, u280, u55c, zcu102" in res.output
    assert "Traceback" not in res.output


def test_validate_reports_the_bad_field_without_traceback(tmp_path):
    data = tiny_config_dict(lanes=24)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    res = invoke("validate", p)
    assert res.exit_code == 2
    assert "engines.0.lanes" in res.output and "power of two" in res.output
    assert "Traceback" not in res.output


def test_validate_json_gives_estimate(tiny_yaml):
    res = invoke("validate", tiny_yaml, "--json")
    data = json.loads(res.output)
    assert data["valid"] and data["macs_per_cycle"] == 32 and data["estimate"]["dsp"] > 0


def test_validate_missing_file(tmp_path):
    res = invoke("validate", tmp_path / "none.yaml")
    assert res.exit_code == 2 and "cannot read config" in res.output


def test_schema_is_json_schema():
    res = invoke("schema")
    data = json.loads(res.output)
    assert data["title"] == "hbmforge accelerator config" and "properties" in data


@pytest.mark.rtl
def test_gen_writes_verilog_manifest_and_packaging(tiny_yaml, tmp_path):
    out = tmp_path / "design"
    res = invoke("gen", tiny_yaml, "-o", out)
    assert res.exit_code == 0, res.output
    assert (out / "tiny.v").exists() and (out / "manifest.json").exists()
    assert "lint: clean" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kernel"] == "tiny" and manifest["top"] == "tiny"
    assert list((out / "package").iterdir())


@pytest.mark.rtl
def test_run_reports_bit_exact_result_and_figures(tiny_yaml):
    res = invoke("run", tiny_yaml, "--layer", "linear", "--m", 3, "--k", 64, "--n", 5, "--wbits", 4, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["golden_mismatches"] == 0
    assert report["cycles"] > 0 and 0 < report["mac_utilization"] <= 1
    assert report["bytes_read"] > 0 and report["bytes_written"] > 0
    assert report["rel_err_vs_float"] < 0.2


@pytest.mark.rtl
def test_run_rejects_unsupported_weight_bits(tiny_yaml):
    res = invoke("run", tiny_yaml, "--wbits", 2, "--k", 64)
    assert res.exit_code == 2 and "--wbits must be one of" in res.output


def test_run_rejects_unknown_layer(tiny_yaml):
    res = invoke("run", tiny_yaml, "--layer", "conv")
    assert res.exit_code == 2 and "--layer must be one of: linear" in res.output


@pytest.mark.rtl
def test_sim_runs_the_cocotb_regression(tiny_yaml, tmp_path):
    res = invoke("sim", tiny_yaml, "-k", "identity", "--build-dir", tmp_path / "b")
    assert res.exit_code == 0, res.output
    assert "1 passed, 0 failed" in res.output


def test_unwritable_outputs_are_one_line_errors(tmp_path, tiny_yaml):
    missing = tmp_path / "no" / "such" / "dir"
    for args in (("init", "--board", "u280", "-o", missing / "x.yaml"),
                 ("schema", "-o", missing / "s.json"),
                 ("gen", tiny_yaml, "-o", tiny_yaml, "--no-lint")):
        res = invoke(*args)
        assert res.exit_code == 2, args
        assert "error: cannot write" in res.output and "Traceback" not in res.output


def test_sim_filter_that_matches_nothing_fails_before_building(tiny_yaml):
    res = invoke("sim", tiny_yaml, "-k", "no_such_test")
    assert res.exit_code == 2 and "no cocotb test name contains 'no_such_test'" in res.output
