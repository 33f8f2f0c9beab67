"""The cocotb regression of a kernel with matmul, attention and vector engines: every kind of VECTOR
descriptor and a norm -> matmul -> SwiGLU -> matmul -> residual chain in one program, random
back-pressure and latency on every AXI port, memory and counters bit for bit against hbmforge.numerics."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows.regression import run_regression

from designs import tiny_vector_config_dict

pytestmark = pytest.mark.rtl

VECTOR_TESTS = 3        # hbmforge.flows.tb_vector (the kernel and attention benches run in their own tests)


def test_kernel_with_vector_engine_passes_regression(tmp_path):
    res = run_regression(parse_config(tiny_vector_config_dict()), build_dir=tmp_path, seed=23, cases=3,
                         test_filter="vector")
    assert res.failed == 0, res.summary
    assert res.passed == VECTOR_TESTS, res.summary
