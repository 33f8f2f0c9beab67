"""`hbmforge run --layer attention`: a bit-exact report on the co-sim, one-line errors for bad input."""
from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import invoke
from designs import tiny_attention_config_dict, tiny_config_dict


@pytest.fixture
def attn_yaml(tmp_path):
    p = tmp_path / "attn.yaml"
    p.write_text(yaml.safe_dump(tiny_attention_config_dict()))
    return p


@pytest.mark.rtl
def test_run_attention_reports_bit_exact_result_and_figures(attn_yaml):
    res = invoke("run", attn_yaml, "--layer", "attention", "--ctx", 30, "--n-q", 3, "--q-heads", 4,
                 "--kv-heads", 2, "--kv-bits", 4, "--window", 9, "--sink", 2, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["golden_mismatches"] == 0
    assert report["cycles"] > 0 and 0 < report["kv_efficiency"] <= 1
    assert report["kv_bytes_read"] == report["kv_bytes_expected"] > 0
    assert report["rel_err_vs_float"] < 0.3


@pytest.mark.parametrize("args, message", [
    (("--ctx", 65), "max_context"),
    (("--kv-bits", 3), "kv_bits"),
    (("--q-heads", 3, "--kv-heads", 2), "multiple of --kv-heads"),
    (("--sink", 2), "sink"),
    (("--mode", "encoder"), "--mode must be 'causal' or 'bidirectional'"),
    (("--valid-len", 5), "valid_len applies to bidirectional attention"),
    (("--mode", "bidirectional", "--window", 4), "bidirectional attention takes no window or sink"),
    (("--mode", "bidirectional", "--n-q", 30, "--valid-len", 31), "--valid-len must be an integer in [1, ctx=30]"),
])
def test_run_attention_rejects_bad_shapes_in_one_line(attn_yaml, args, message):
    res = invoke("run", attn_yaml, "--layer", "attention", "--ctx", 30, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 2


def test_run_attention_needs_an_attention_engine(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_config_dict()))
    res = invoke("run", p, "--layer", "attention")
    assert res.exit_code == 2 and "no attention engine" in res.output
