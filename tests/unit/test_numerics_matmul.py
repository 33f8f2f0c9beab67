"""The matmul golden model: exact integer semantics, rounding, and error against float."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.numerics import (dyadic_multiplier, encode_group_scales, matmul_int32, matmul_int8,
                               quantize_activations_per_token, quantize_weights_groupwise,
                               rshift_round, saturate)
from hbmforge.numerics.matmul import matmul_accumulate


def test_rshift_round_is_round_half_up():
    v = np.array([-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5])
    assert list(rshift_round(v, 1)) == [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3]
    assert rshift_round(7, 0) == 7


def test_saturate_clamps_to_signed_range():
    assert list(saturate(np.array([-1000, -129, -128, 127, 128, 1000]), 8)) == [-128, -128, -128, 127, 127, 127]


def test_accumulate_matches_direct_sum():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (3, 64))
    w = rng.integers(-8, 8, (5, 64))
    s = rng.integers(0, 1 << 16, (5, 4))
    acc = matmul_accumulate(x, w, s, 16)
    for m in range(3):
        for n in range(5):
            expect = sum(int(s[n, g]) * sum(int(x[m, k]) * int(w[n, k]) for k in range(16 * g, 16 * g + 16))
                         for g in range(4))
            assert acc[m, n] == expect


def test_extreme_operands_do_not_overflow():
    k, g = 4096, 128
    x = np.full((1, k), -128)
    w = np.full((1, k), -128)
    s = np.full((1, k // g), (1 << 16) - 1)
    acc = matmul_accumulate(x, w, s, g)
    assert acc[0, 0] == 128 * 128 * k * ((1 << 16) - 1)
    assert matmul_int32(x, w, s, g)[0, 0] == (1 << 31) - 1          # saturates, does not wrap
    assert matmul_int8(x, w, s, g, [1], [0])[0, 0] == 127


def test_int8_output_uses_per_column_requant():
    x = np.array([[1, 2, 3, 4] * 4])
    w = np.ones((2, 16), dtype=np.int64)
    s = np.ones((2, 1), dtype=np.int64)
    out = matmul_int8(x, w, s, 16, mult=[1, 3], shift=[2, 3])
    acc = 40
    assert list(out[0]) == [rshift_round(acc, 2), rshift_round(acc * 3, 3)]


def test_dyadic_multiplier_relative_error():
    reals = np.geomspace(1e-9, 1e3, 200)
    mult, shift = dyadic_multiplier(reals)
    approx = mult / 2.0 ** shift
    assert np.all(np.abs(approx / reals - 1) < 2.0 ** -29)
    assert np.all(mult < 2 ** 31)


@pytest.mark.parametrize("bits, tol", [(8, 0.02), (4, 0.15)])
def test_quantized_linear_error_against_float(bits, tol):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 512))
    x = rng.standard_normal((8, 512))
    gq = quantize_weights_groupwise(w, bits, 128)
    mant, row = encode_group_scales(gq.scales, 16)
    aq = quantize_activations_per_token(x)
    acc = matmul_accumulate(aq.q, gq.q, mant, 128).astype(np.float64)
    y = acc * aq.scale[:, None] * row[None, :]
    ref = x @ w.T
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < tol


def test_quantizers_refuse_nan():
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_weights_groupwise(np.array([[np.nan] * 16]), 4, 16)
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_activations_per_token(np.array([[np.inf, 1.0]]))


def test_group_size_must_divide_k():
    with pytest.raises(ValueError, match="group_size 32 must divide K = 48"):
        quantize_weights_groupwise(np.ones((2, 48)), 4, 32)


def test_bias_joins_the_accumulator_before_the_output_stage():
    from hbmforge.numerics.matmul import add_bias

    rng = np.random.default_rng(5)
    x, w = rng.integers(-128, 128, (3, 32)), rng.integers(-8, 8, (4, 32))
    s = rng.integers(0, 1 << 16, (4, 2))
    bias = np.array([-(1 << 31), (1 << 31) - 1, 0, 12345])
    acc = matmul_accumulate(x, w, s, 16)
    got = add_bias(acc, bias, 7)
    assert all(got[m, n] == acc[m, n] + (int(bias[n]) << 7) for m in range(3) for n in range(4))
    want = np.clip([[(int(v) + (1 << 8)) >> 9 for v in row] for row in got], -(1 << 31), (1 << 31) - 1)
    np.testing.assert_array_equal(matmul_int32(x, w, s, 16, 9, bias=bias, bias_shift=7), want)
    assert add_bias(acc, None) is acc
    with pytest.raises(ValueError, match="bias must have 4 entries"):
        add_bias(acc, bias[:2])
    with pytest.raises(ValueError, match="int32"):
        add_bias(acc, bias + (1 << 40))


def test_split_k_slices_add_up_exactly():
    """The engine's K slices: partial sums (any order, int64) give the one-pass accumulator."""
    rng = np.random.default_rng(6)
    x, w = rng.integers(-128, 128, (5, 96)), rng.integers(-128, 128, (3, 96))
    s = np.full((3, 6), (1 << 16) - 1)
    whole = matmul_accumulate(x, w, s, 16)
    parts = sum(matmul_accumulate(x[:, k0:k0 + 32], w[:, k0:k0 + 32], s[:, k0 // 16:k0 // 16 + 2], 16)
                for k0 in range(0, 96, 32))
    assert np.array_equal(whole, parts)
