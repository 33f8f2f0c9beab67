"""The cocotb regression (AxiLiteMaster + AxiRam models, random back-pressure and latency)
on generated kernels, compared bit for bit with hbmforge.numerics."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.flows.regression import run_regression

from designs import tiny_config_dict

pytestmark = pytest.mark.rtl

N_TESTS = 6     # cocotb tests in hbmforge.flows.tb_kernel that run without HBMFORGE_TB_BENCH


def _run(tmp_path, cfg, **kw):
    res = run_regression(cfg, build_dir=tmp_path, **kw)
    assert res.failed == 0, res.summary
    assert res.passed == N_TESTS, res.summary


def test_tiny_kernel_passes_regression_with_two_weight_ports(tmp_path):
    _run(tmp_path, parse_config(tiny_config_dict()), seed=3, cases=4)


def test_kernel_with_groups_smaller_than_lanes_passes_regression(tmp_path):
    cfg = parse_config(tiny_config_dict(rows=3, lanes=32, weight_ports=1, group_size=16, max_k=128,
                                        weight_bits=[4]))
    _run(tmp_path, cfg, seed=5, cases=3)


@pytest.mark.slow
def test_low_bit_kernel_passes_regression(tmp_path):
    # int2, '2bit' ternary and int8 on one engine (8-bit lanes), two weight ports (the same
    # design runs bit-exact on the co-simulation in tests/host/test_linear_lowbit.py)
    cfg = parse_config(tiny_config_dict(weight_bits=[2, "ternary", 8]))
    _run(tmp_path, cfg, seed=9, cases=3)


def test_five_trit_ternary_kernel_passes_regression(tmp_path):
    # 40 trits per 64-bit word for 16 lanes (a non-dividing ratio), int4 beside it
    cfg = parse_config(tiny_config_dict(weight_bits=["ternary", 4], weight_ports=1, ternary_packing="5trit"))
    _run(tmp_path, cfg, seed=11, cases=2)


def test_sparse24_kernel_passes_regression(tmp_path):
    # 2:4 sparse int4 (3 x 16-bit chunks through the bit gearbox), int8 (5 x 16) and ternary beside
    # the dense formats; the random-layers test runs every format both ways under back-pressure
    cfg = parse_config(tiny_config_dict(weight_bits=[4, 8, "ternary"], sparse24=True))
    _run(tmp_path, cfg, seed=17, cases=3)


def test_tlmm_kernel_passes_regression(tmp_path):
    # ternary table-lookup array, g = 3 on 16 lanes (a 1-lane partial bank), one weight port
    cfg = parse_config(tiny_config_dict(weight_bits=["ternary"], arch="tlmm", tlmm_group=3, weight_ports=1,
                                        max_k=64))
    _run(tmp_path, cfg, seed=13, cases=3)


@pytest.mark.slow
def test_starter_kernel_passes_regression(tmp_path):
    from hbmforge.config import starter_config

    _run(tmp_path, parse_config(starter_config("u280")), seed=7, cases=3)
