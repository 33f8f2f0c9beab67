"""The cocotb regression of a kernel with the ALLREDUCE engine (hbmforge.flows.tb_network): the
kernel as one worker of a job with the golden switch and peers behind its stream ports, packets
lost, duplicated and reordered, random back-pressure on every AXI port and both streams."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows.regression import run_regression

from designs import tiny_network_config_dict

pytestmark = pytest.mark.rtl


def test_kernel_with_network_engine_passes_regression(tmp_path):
    res = run_regression(parse_config(tiny_network_config_dict()), build_dir=tmp_path, seed=31, cases=3,
                         test_filter="network")
    assert res.failed == 0, res.summary
    assert res.passed == 2, res.summary
