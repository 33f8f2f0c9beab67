"""The cocotb regression of a kernel with a memory engine (tile cache and oblivious map) beside
matmul and COPY: matmuls and copies through the cache, the map's bulk load, format and queries,
a tampered bin and bad descriptors, under random back-pressure and latency on every AXI port,
compared bit for bit with hbmforge.numerics."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows.regression import run_regression

from designs import tiny_memory_config_dict

pytestmark = pytest.mark.rtl

MEMORY_TESTS = 4        # hbmforge.flows.tb_memory: the tests named test_memory_*


@pytest.mark.slow       # ~2 min of simulation after a ~4 min build: beyond the CI budget; the
                        # co-simulation tests (tests/host/test_*omap*, *tile_cache*) run in CI
def test_kernel_with_memory_engine_passes_regression(tmp_path):
    res = run_regression(parse_config(tiny_memory_config_dict()), build_dir=tmp_path, seed=31, cases=3,
                         test_filter="test_memory_")
    assert res.failed == 0, res.summary
    assert res.passed == MEMORY_TESTS, res.summary
