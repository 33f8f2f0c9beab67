"""Linear on the golden device: bit-exact device integers, bounded float error, clear input errors.

Quantization error measured here (Gaussian w [256, 1024] / sqrt(K), x [16, 1024],
group 128, relative Frobenius error vs float64 x @ w.T):
int8 weights ~1.0 % (int8 output mode ~1.4 %), int4 weights ~12 % (RTN absmax int4
is ~0.115 sigma per weight; the per-token int8 activations add ~0.5 %).
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.host import Linear
from hbmforge.host.linear import choose_out_shift
from hbmforge.layout import DesignLayout
from hbmforge.numerics import matmul_accumulate

from golden_kernel import GoldenDevice


@pytest.fixture(scope="module")
def wide_dev():
    """The starter U280 engine (256-bit ports, group 128) with max_k 1024."""
    cfg = starter_config("u280")
    cfg["engines"][0]["max_k"] = 1024
    with GoldenDevice(DesignLayout(parse_config(cfg))) as dev:
        yield dev


def rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("bits", [4, 8])
def test_device_integers_match_the_golden_model(golden_dev, bits):
    rng = np.random.default_rng(bits)
    for m, k, n in [(1, 16, 1), (3, 40, 24), (5, 256, 9)]:
        lin = Linear.from_float(rng.standard_normal((n, k)), bits=bits, device=golden_dev)
        xq = rng.integers(-128, 128, (m, k))
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        assert np.array_equal(lin.forward_int(xq, out_shift=3), lin.golden_int(xq, out_shift=3))
        mult, shift = rng.integers(-(1 << 31), 1 << 31, n), rng.integers(0, 128, n)
        y8 = lin.forward_int(xq, requant=(mult, shift))
        assert y8.dtype == np.int8 and np.array_equal(y8, lin.golden_int(xq, requant=(mult, shift)))
        lin.close()


@pytest.mark.parametrize("bits, bound, bound_int8_out", [(8, 0.02, 0.025), (4, 0.15, 0.15)])
def test_float_error_against_numpy_is_bounded(wide_dev, bits, bound, bound_int8_out):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 1024)) / np.sqrt(1024)
    x = rng.standard_normal((16, 1024))
    ref = x @ w.T
    with Linear.from_float(w, bits=bits, device=wide_dev) as lin:
        y = lin(x)
        assert y.dtype == np.float32 and y.shape == (16, 256)
        assert rel_err(y, ref) < bound
        # the device result equals the float model of the quantized operands (rounding only)
        assert rel_err(y, x @ lin.dequantized_weight().T) < 0.01
        y8 = lin(x, out_scale=float(np.abs(ref).max()) / 127)
        assert rel_err(y8, ref) < bound_int8_out
        assert lin.last_run.out_mode == "int8"


def test_out_shift_keeps_the_worst_case_from_saturating(golden_dev):
    k, n = 256, 4
    w = np.full((n, k), -1.0)
    with Linear.from_float(w, bits=8, device=golden_dev) as lin:
        xq = np.full((2, k), 127)
        shift = choose_out_shift(lin.acc_bound(xq))
        acc = matmul_accumulate(lin._int_input(xq), lin.weight_q, lin.scale_mantissas, lin.group_size)
        assert int(np.abs(acc).max()) == lin.acc_bound(xq)        # the bound is tight here
        y = lin.forward_int(xq)
        assert -(1 << 31) < int(y.min()) and lin.last_run.out_shift == shift
        assert np.allclose(lin(np.full(k, 3.0)), -3.0 * k, rtol=1e-3)


def test_choose_out_shift_is_the_smallest_safe_shift():
    assert choose_out_shift(0) == 0
    assert choose_out_shift((1 << 31) - 1) == 0
    assert choose_out_shift(1 << 31) == 1
    assert choose_out_shift((1 << 32) - 2) == 1
    assert choose_out_shift((1 << 32) - 1) == 2               # round half up: (2^32 - 1 + 1) >> 1 = 2^31


def test_one_dimensional_input_and_padding_of_k(golden_dev):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 37))
    x = rng.standard_normal(37)
    with Linear.from_float(w, bits=8, device=golden_dev) as lin:
        y = lin(x)
        assert y.shape == (5,) and lin.k_padded == 48
        assert rel_err(y, w @ x) < 0.03


def test_large_m_is_split_into_several_runs(tiny_layout):
    rng = np.random.default_rng(8)
    with GoldenDevice(tiny_layout) as dev:
        lin = Linear.from_float(rng.standard_normal((6, 32)), bits=4, device=dev, workspace_bytes=120)
        xq = rng.integers(-128, 128, (11, 32))
        assert lin.rows_per_run() == 2
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        assert lin.last_run.runs == 6 and lin.last_run.rows == 11
        assert lin.last_run.counters["mac_ops"] == 11 * 32 * 6


def test_last_run_reports_cycles_and_counters(golden_dev):
    rng = np.random.default_rng(9)
    with Linear.from_float(rng.standard_normal((8, 64)), bits=4, device=golden_dev) as lin:
        lin(rng.standard_normal((3, 64)))
        run = lin.last_run
        assert run.runs == 1 and run.cycles > 0 and run.out_mode == "int32"
        assert run.counters["ports"]["w0"]["bytes_read"] > 0


def test_zero_weights_give_zero_output(golden_dev):
    w = np.zeros((3, 32))
    w[1, :16] = 1.0
    with Linear.from_float(w, bits=4, device=golden_dev) as lin:
        y = lin(np.ones((2, 32)))
        assert np.array_equal(y[:, [0, 2]], np.zeros((2, 2)))
        assert np.allclose(y[:, 1], 16.0, rtol=1e-2)


def test_close_frees_device_memory(golden_dev):
    before = len(golden_dev.live_buffers())
    lin = Linear.from_float(np.ones((4, 32)), device=golden_dev)
    lin(np.ones(32))
    assert len(golden_dev.live_buffers()) > before
    lin.close()
    assert len(golden_dev.live_buffers()) == before
    with pytest.raises(ValueError, match="closed"):
        lin(np.ones(32))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(bits=2), ValueError, r"bits must be one of the engine's weight_bits \[4, 8\], got 2"),
    (dict(group_size=64), ValueError, r"group_size must equal the engine's group_size \(16\).*got 64"),
    (dict(w=np.ones((2, 3, 4))), ValueError, "weights must be 2-D"),
    (dict(w=np.array([[1.0, np.nan]])), ValueError, "1 NaN/Inf"),
    (dict(w=np.ones((2, 4100))), ValueError,
     r"in_features 4100 \(padded to 4112\) exceeds the engine's largest K 4096 \(split_k 16 slices of max_k 256\)"),
    (dict(bias=np.ones(3)), ValueError, r"bias must be 2 finite floats \(one per output\), got shape \(3,\)"),
    (dict(bias=np.array([1.0, np.inf])), ValueError, "bias contains 1 NaN/Inf"),
    (dict(w=np.ones((0, 16))), ValueError, "both >= 1"),
    (dict(w=np.array([["a"]])), TypeError, "weights must be a real float"),
    (dict(device="sim"), TypeError, "device must be an open hbmforge Device"),
])
def test_bad_weights_and_options_are_refused(golden_dev, kwargs, exc, match):
    args = dict(w=np.ones((2, 16)), bits=4, device=golden_dev)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        Linear.from_float(args.pop("w"), **args)


def test_bad_inputs_are_refused(golden_dev):
    with Linear.from_float(np.ones((2, 20)), device=golden_dev) as lin:
        with pytest.raises(ValueError, match=r"x must be \[M >= 1, in_features=20\] or \[20\], got shape \(3, 21\)"):
            lin(np.ones((3, 21)))
        with pytest.raises(ValueError, match="2 NaN/Inf"):
            lin(np.array([np.inf, np.nan] + [0.0] * 18))
        with pytest.raises(TypeError, match="complex128"):
            lin(np.ones(20, dtype=complex))
        with pytest.raises(ValueError, match=r"xq has 20 value\(s\) outside \[-128, 127\]"):
            lin.forward_int(np.full((1, 20), 128))
        with pytest.raises(TypeError, match="xq must be an int8-valued integer array, got dtype float64"):
            lin.forward_int(np.ones((1, 20)))
        with pytest.raises(ValueError, match="out_scale must be a finite float > 0"):
            lin(np.ones(20), out_scale=0.0)
        with pytest.raises(ValueError, match="requant mult and shift must each have 2 entries"):
            lin.forward_int(np.ones((1, 20), np.int8), requant=([1], [1]))


def test_from_quantized_checks_ranges(golden_dev):
    with pytest.raises(ValueError, match=r"weight_q has 16 value\(s\) outside \[-8, 7\]"):
        Linear.from_quantized(np.full((1, 16), 9), np.ones((1, 1), int), bits=4, device=golden_dev)
    with pytest.raises(ValueError, match=r"mantissas must be an integer array of shape \[N, ceil\(K/G\)\] = \(1, 1\)"):
        Linear.from_quantized(np.ones((1, 16), int), np.ones((1, 2), int), bits=4, device=golden_dev)
    lin = Linear.from_quantized(np.ones((1, 16), int), np.full((1, 1), 2), bits=4, device=golden_dev)
    assert lin.forward_int(np.ones((1, 16), np.int8)).tolist() == [[32]]


# -- bias and K above one pass ---------------------------------------------------------------

def test_k_above_max_k_is_split_on_the_device_bit_exactly(golden_dev):
    rng = np.random.default_rng(11)
    lay = golden_dev.layout
    k = 2 * lay.matmul.k_slice + 40                           # three slices, the last one short
    w = rng.standard_normal((7, k))
    before = len(golden_dev.live_buffers())
    with Linear.from_float(w, bits=8, device=golden_dev) as lin:
        assert lin.k_padded == lay.matmul.pad_k(k) and lay.matmul.slices(lin.k_padded) == 3
        xq = rng.integers(-128, 128, (9, k))
        xq[0] = -128
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        mult, shift = rng.integers(1, 1 << 20, 7), rng.integers(20, 40, 7)
        assert np.array_equal(lin.forward_int(xq, requant=(mult, shift)), lin.golden_int(xq, requant=(mult, shift)))
        x = rng.standard_normal((4, k))
        ref = x @ w.T
        assert rel_err(lin(x), ref) < 0.02
        # the partial-sum scratch is part of the workspace, nothing else stays allocated
        assert lin.last_run.runs == 1
    assert len(golden_dev.live_buffers()) == before


def test_bias_is_added_on_the_device_with_per_tensor_activations(wide_dev):
    rng = np.random.default_rng(12)
    w = rng.standard_normal((64, 512)) / np.sqrt(512)
    b = rng.standard_normal(64) * 3.0
    x = rng.standard_normal((6, 512))
    ref = x @ w.T + b
    with Linear.from_float(w, bits=8, bias=b, device=wide_dev) as lin:
        assert np.array_equal(lin.bias, b)
        y = lin(x)                                             # per-token activations: bias in float64
        assert rel_err(y, ref) < 0.02
        np.testing.assert_allclose(y - lin(x * 1.0), 0.0)
        out_scale = float(np.abs(ref).max()) / 100
        y8 = lin(x, out_scale=out_scale)                       # int8 output: the device adds the bias
        assert np.abs(y8 - ref).max() <= 1.5 * out_scale
        act_scale = float(np.abs(x).max()) / 127
        values, shift = lin.int_bias(act_scale)
        assert values.dtype == np.int64 and np.abs(values).max() < 1 << 31
        np.testing.assert_allclose(values * 2.0 ** shift * act_scale * lin.row_scale, b,
                                   atol=2.0 ** shift * act_scale * float(lin.row_scale.max()))
        xq = rng.integers(-128, 128, (6, 512))
        for bias in ((values, shift), (np.full(64, -(1 << 31)), wide_dev.layout.matmul.widths.max_bias_shift)):
            assert np.array_equal(lin.forward_int(xq, bias=bias), lin.golden_int(xq, bias=bias))
            mult, rshift = rng.integers(1, 1 << 20, 64), rng.integers(30, 60, 64)
            assert np.array_equal(lin.forward_int(xq, requant=(mult, rshift), bias=bias),
                                  lin.golden_int(xq, requant=(mult, rshift), bias=bias))
        with pytest.raises(ValueError, match=r"bias shift must be in \[0, \d+\], got 99"):
            lin.forward_int(xq, bias=(values, 99))
        with pytest.raises(ValueError, match="bias values must have 64 entries"):
            lin.forward_int(xq, bias=(values[:3], 0))
        with pytest.raises(TypeError, match=r"bias must be a pair \(values, shift\)"):
            lin.forward_int(xq, bias=values)


@pytest.mark.parametrize("n", [7, 8])
def test_sparse24_linear_on_a_pair_fire_engine_pads_an_odd_n_and_drops_the_extra_column(n):
    """A 2:4 W2 layer on an engine with the pair fire: an odd N runs with a zero column added on the
    device (N even: pair fires), and every int32 / int8 / biased result equals the golden model."""
    from designs import tiny_config_dict

    cfg = tiny_config_dict(weight_bits=[2, 4, "ternary"], lanes=32, max_k=32, sparse24=[2, "ternary"],
                           sparse24_pairs=True)
    rng = np.random.default_rng(n)
    with GoldenDevice(DesignLayout(parse_config(cfg))) as dev:
        w = rng.normal(0, 0.1, (n, 64))
        lin = Linear.from_float(w, bits=2, device=dev, sparse24=True, bias=rng.normal(0, 0.1, n))
        assert lin.out_features == n
        xq = rng.integers(-128, 128, (3, 64))
        assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
        rq = (rng.integers(1, 1 << 20, n), np.full(n, 24))
        bias = (rng.integers(-1000, 1000, n), 2)
        assert np.array_equal(lin.forward_int(xq, requant=rq, bias=bias), lin.golden_int(xq, requant=rq, bias=bias))
        y = lin(rng.normal(0, 1, (2, 64)))
        assert y.shape == (2, n)
        with pytest.raises(ValueError, match="takes 2:4 weights of"):
            Linear.from_float(w, bits=4, device=dev, sparse24=True)
        lin.close()
