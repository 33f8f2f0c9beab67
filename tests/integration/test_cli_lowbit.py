"""``hbmforge run --wbits 2|ternary`` on the co-simulation, and one-line errors for bad --wbits."""
from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import invoke
from designs import tiny_config_dict


@pytest.fixture
def lowbit_yaml(tmp_path):
    cfg = tiny_config_dict(weight_bits=[2, "ternary", 8], weight_ports=2)
    cfg["name"] = "tiny_lowbit"                      # the same design as tests/host/test_linear_lowbit.py
    p = tmp_path / "lowbit.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.rtl
@pytest.mark.parametrize("wbits", ["2", "ternary"])
def test_run_low_bit_linear_matches_golden(lowbit_yaml, wbits):
    res = invoke("run", lowbit_yaml, "--wbits", wbits, "--m", 3, "--k", 64, "--n", 16, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["wbits"] == (2 if wbits == "2" else "ternary")
    assert report["golden_mismatches"] == 0 and report["cycles"] > 0
    assert report["weight_bytes_read"] > 0


@pytest.mark.rtl
def test_run_table_names_the_ternary_format(lowbit_yaml):
    res = invoke("run", lowbit_yaml, "--wbits", "ternary", "--m", 1, "--k", 32, "--n", 8)
    assert res.exit_code == 0, res.output
    assert "ternary on u280" in res.output and "0 of 8" in res.output


@pytest.mark.parametrize("wbits, match", [("3", "--wbits must be one of 2, 4, 8, ternary, got '3'"),
                                          ("int2", "--wbits must be one of 2, 4, 8, ternary, got 'int2'"),
                                          ("4", "--wbits must be one of this design's weight_bits")])
def test_run_rejects_bad_wbits_in_one_line(lowbit_yaml, wbits, match):
    res = invoke("run", lowbit_yaml, "--wbits", wbits, "--k", 64)
    assert res.exit_code == 2 and match in res.output
    assert "Traceback" not in res.output
