"""Linear with int2 and ternary weights: on the Verilator co-simulation bit-exact with the golden
model, bounded float error, and clear errors for formats the engine does not accept.

Quantization error measured here (Gaussian w [128, 512] / sqrt(K), x [8, 512], group 128,
relative Frobenius error vs float64 x @ w.T): int2 (range [-2, 1], MSE-searched group
scale) ~0.38, ternary absmean per group ~0.51 (BitNet-style ternary needs a model trained
for it; these are random weights).
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.host import Linear, open_device
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict
from golden_kernel import GoldenDevice


def _cfg(name, **engine):
    cfg = tiny_config_dict(**engine)
    cfg["name"] = name
    return parse_config(cfg)


@pytest.fixture(scope="module")
def lowbit_dev(tmp_path_factory):
    """int2 + '2bit' ternary + int8 on one engine, two weight ports (64-bit ports)."""
    cfg = _cfg("tiny_lowbit", weight_bits=[2, "ternary", 8], weight_ports=2)
    with open_device(cfg, build_dir=tmp_path_factory.mktemp("lowbit"), progress=False) as dev:
        yield dev


@pytest.fixture(scope="module")
def trit_dev(tmp_path_factory):
    """'5trit' ternary only, one weight port: 40 trits per word for 16 lanes."""
    cfg = _cfg("tiny_trit", weight_bits=["ternary"], weight_ports=1, ternary_packing="5trit")
    with open_device(cfg, build_dir=tmp_path_factory.mktemp("trit"), progress=False) as dev:
        yield dev


def _check_bit_exact(dev, bits, rng):
    for m, k, n in [(1, 16, 1), (3, 40, 24), (5, 256, 9)]:
        with Linear.from_float(rng.standard_normal((n, k)), bits=bits, device=dev) as lin:
            xq = rng.integers(-128, 128, (m, k))
            assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
            mult, shift = rng.integers(-(1 << 31), 1 << 31, n), rng.integers(0, 128, n)
            y8 = lin.forward_int(xq, requant=(mult, shift))
            assert y8.dtype == np.int8 and np.array_equal(y8, lin.golden_int(xq, requant=(mult, shift)))
            assert lin.last_run.counters["mac_ops"] > 0


@pytest.mark.rtl
@pytest.mark.parametrize("bits", [2, "ternary"])
def test_sim_device_integers_match_the_golden_model(lowbit_dev, bits):
    _check_bit_exact(lowbit_dev, bits, np.random.default_rng(1 if bits == 2 else 2))


@pytest.mark.rtl
def test_sim_device_with_five_trit_packing_matches_the_golden_model(trit_dev):
    _check_bit_exact(trit_dev, "ternary", np.random.default_rng(3))
    w = np.random.default_rng(6).choice([-0.3, 0.3], (16, 16))     # absmean represents +-c exactly
    with Linear.from_float(w, bits="ternary", device=trit_dev) as lin:
        # 5 trits per byte: a 16 x 16 matrix is ceil(256 / 5) = 52 bytes -> 7 words of 8 bytes
        assert sum(b.nbytes for b in lin._w_bufs) == 56
        x = np.arange(16, dtype=np.float64) - 8
        np.testing.assert_allclose(lin(x), w @ x, atol=0.05)


@pytest.mark.rtl
def test_float_layers_run_on_the_sim_device(lowbit_dev):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 256)) / 16
    x = rng.standard_normal((3, 256))
    for bits in (2, "ternary"):
        with Linear.from_float(w, bits=bits, device=lowbit_dev) as lin:
            y = lin(x)
            assert np.allclose(y, x @ lin.dequantized_weight().T, rtol=0.02, atol=0.02)


@pytest.fixture(scope="module")
def wide_golden():
    cfg = starter_config("u280")
    cfg["engines"][0].update(weight_bits=[2, "ternary", 4], lanes=128, max_k=1024)
    with GoldenDevice(DesignLayout(parse_config(cfg))) as dev:
        yield dev


@pytest.mark.parametrize("bits, bound", [(2, 0.42), ("ternary", 0.56)])
def test_float_error_against_numpy_is_bounded(wide_golden, bits, bound):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 512)) / np.sqrt(512)
    x = rng.standard_normal((8, 512))
    ref = x @ w.T
    with Linear.from_float(w, bits=bits, group_size=128, device=wide_golden) as lin:
        lo, hi = (-2, 1) if bits == 2 else (-1, 1)
        assert lin.weight_q.min() == lo and lin.weight_q.max() == hi and lin.bits == bits
        err = np.linalg.norm(lin(x) - ref) / np.linalg.norm(ref)
        assert err < bound
        # the device result is the float model of the quantized weights, up to activation rounding
        assert np.linalg.norm(lin(x) - x @ lin.dequantized_weight().T) / np.linalg.norm(ref) < 0.01


def test_per_tensor_ternary_scale_gives_one_scale(wide_golden):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 256))
    with Linear.from_float(w, bits="ternary", ternary_scale="tensor", device=wide_golden) as lin:
        s = lin.scale_mantissas.astype(np.float64) * lin.row_scale[:, None]
        np.testing.assert_allclose(s, np.abs(w).mean(), rtol=1e-4)
        np.testing.assert_array_equal(lin.weight_q, np.clip(np.rint(w / np.abs(w).mean()), -1, 1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=8), r"bits must be one of the engine's weight_bits \['ternary', 2, 4\], got 8"),
    (dict(bits="int2"), r"engine's weight_bits \['ternary', 2, 4\], got 'int2'"),
    (dict(bits=2, group_size=128, w=np.ones((2, 200))), "group_size 128 must divide in_features K = 200"),
    (dict(bits="ternary", w=np.array([[np.inf] + [1.0] * 15])), "1 NaN/Inf"),
    (dict(bits="ternary", ternary_scale="row"), "ternary_scale"),
])
def test_bad_formats_and_inputs_are_refused(wide_golden, kwargs, match):
    args = dict(w=np.ones((2, 128)), device=wide_golden)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Linear.from_float(args.pop("w"), **args)


def test_from_quantized_checks_the_format_range(wide_golden):
    with pytest.raises(ValueError, match=r"weight_q has 1 value\(s\) outside \[-1, 1\] \(min -2, max 1\)"):
        Linear.from_quantized(np.array([[-2, 1] + [0] * 126]), np.ones((1, 1), np.uint16), bits="ternary",
                              device=wide_golden)
    with Linear.from_quantized(np.array([[-2, 1] + [0] * 126]), np.ones((1, 1), np.uint16), bits=2,
                               device=wide_golden) as lin:
        xq = np.full((1, 128), 5)
        assert lin.forward_int(xq)[0, 0] == -5
