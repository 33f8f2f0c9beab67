"""The cocotb regression of a kernel with an attention engine: ATTENTION and MATMUL
descriptors in one program, random back-pressure and latency on every AXI port,
outputs and counters compared bit for bit with hbmforge.numerics."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows.regression import run_regression

from designs import tiny_config_dict

pytestmark = pytest.mark.rtl

KERNEL_TESTS = 6        # hbmforge.flows.tb_kernel
ATTENTION_TESTS = 2     # hbmforge.flows.tb_attention


def _config(**attention):
    cfg = tiny_config_dict()
    att = {"kind": "attention", "name": "attn0", "head_dim": 16, "rows": 2, "kv_bits": [4, 8],
           "kv_group_size": 8, "page_tokens": 4, "max_context": 64, "kv_ports": 2}
    att.update(attention)
    cfg["engines"].append(att)
    return parse_config(cfg)


# kv_ports 1 (K and V sharing w0) is the amaranth.sim default in tests/gateware/test_attention_engine.py;
# its kernel regression is slow-only (a Verilator build of its own)
@pytest.mark.parametrize("kv_ports", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_kernel_with_attention_passes_regression(tmp_path, kv_ports):
    res = run_regression(_config(kv_ports=kv_ports), build_dir=tmp_path, seed=11 + kv_ports, cases=3)
    assert res.failed == 0, res.summary
    assert res.passed == KERNEL_TESTS + ATTENTION_TESTS, res.summary
