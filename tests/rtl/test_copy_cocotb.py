"""The cocotb regression of a kernel with a COPY/FILL engine: COPY, FILL and MATMUL descriptors
in one program, random back-pressure and latency on every AXI port, memory and counters
compared bit for bit with hbmforge.numerics."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows.regression import run_regression

from designs import tiny_copy_config_dict

pytestmark = pytest.mark.rtl

KERNEL_TESTS = 6        # hbmforge.flows.tb_kernel
COPY_TESTS = 2          # hbmforge.flows.tb_copy


def test_kernel_with_copy_engine_passes_regression(tmp_path):
    res = run_regression(parse_config(tiny_copy_config_dict()), build_dir=tmp_path, seed=21, cases=3)
    assert res.failed == 0, res.summary
    assert res.passed == KERNEL_TESTS + COPY_TESTS, res.summary
