"""Golden tests of hbmforge.numerics.encoded: weights quantized against their encoded group scales
(what Linear.from_float uploads) and scale products without intermediate overflow."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbmforge.numerics import encode_group_scales, quantize_weights_groupwise, weight_range
from hbmforge.numerics.encoded import EncodedWeights, quantize_weights_encoded, scale_product

FORMATS = (2, 4, 8, "ternary")


def reference(w, fmt, g, scale_bits, kp, ternary_scale="group"):
    """The algorithm written out plainly (valid for weights of ordinary magnitude): group scales,
    zero groups, encoded scales, then weights rounded against the encoded scales."""
    n, k = w.shape
    wp = np.zeros((n, kp))
    wp[:, :k] = w
    gq = quantize_weights_groupwise(wp, fmt, g)
    scales, q0 = gq.scales, gq.q
    if fmt == "ternary" and ternary_scale == "tensor":
        mean = float(np.abs(w).mean())
        scales = np.full_like(scales, mean if mean > 0 else 1.0)
        q0 = np.clip(np.rint(wp / scales[0, 0]), -1, 1)
    zero = ~np.any(q0.reshape(n, kp // g, g) != 0, axis=2)
    mant, row = encode_group_scales(np.where(zero, 0.0, scales), scale_bits)
    eff = mant * row[:, None]
    lo, hi = weight_range(fmt)
    q = np.zeros((n, kp // g, g))
    np.divide(wp.reshape(n, kp // g, g), eff[:, :, None], out=q, where=eff[:, :, None] > 0)
    return np.clip(np.rint(q), lo, hi).astype(np.int8).reshape(n, kp), mant, row


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("ternary_scale", ["group", "tensor"])
def test_matches_the_plain_algorithm_bit_for_bit(fmt, ternary_scale):
    rng = np.random.default_rng(1)
    for trial in range(4):
        w = rng.standard_normal((7, 45)) * 10.0 ** rng.integers(-6, 6)
        w[2] = 0.0
        w[3, :16] = 0.0
        q, mant, row = reference(w, fmt, 16, 16, 48, ternary_scale)
        enc = quantize_weights_encoded(w, fmt, 16, 16, k_padded=48, ternary_scale=ternary_scale)
        assert isinstance(enc, EncodedWeights) and enc.q.dtype == np.int8 and enc.mantissas.dtype == np.uint16
        assert np.array_equal(enc.q, q) and np.array_equal(enc.mantissas, mant)
        np.testing.assert_array_equal(enc.row_scale, np.where(mant.any(axis=1), row, 1.0))


def test_zero_groups_get_mantissa_zero_and_zero_rows_a_unit_scale():
    w = np.zeros((3, 32))
    w[1, :16] = 0.5
    enc = quantize_weights_encoded(w, 4, 16, 16)
    assert enc.mantissas.tolist() == [[0, 0], [65535, 0], [0, 0]]
    assert enc.row_scale[0] == enc.row_scale[2] == 1.0 and not enc.q[[0, 2]].any()
    assert np.allclose(enc.dequantize(), w, atol=0.5 / 7)


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(FORMATS), exp=st.integers(-1000, 1000), seed=st.integers(0, 2**16))
def test_a_power_of_two_scale_changes_only_the_row_scale(fmt, exp, seed):
    """Any finite magnitude quantizes like unit scale: same integers, row scale times 2**exp."""
    w = np.random.default_rng(seed).standard_normal((4, 32))
    base = quantize_weights_encoded(w, fmt, 16, 12)
    scaled = np.ldexp(w, exp)
    if np.abs(scaled).max() < 2.0 ** -1000 or not np.all(np.isfinite(scaled)):
        return                                   # beyond float64 (or its normal range) to begin with
    enc = quantize_weights_encoded(scaled, fmt, 16, 12)
    assert np.array_equal(enc.q, base.q) and np.array_equal(enc.mantissas, base.mantissas)
    np.testing.assert_array_equal(enc.row_scale, np.ldexp(base.row_scale, exp))


@pytest.mark.parametrize("fmt, bound", [(8, 0.5 / 127 + 1e-4), (4, 0.5 / 7 + 1e-4)])
def test_the_error_is_half_a_step_of_the_encoded_scale(fmt, bound):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 256))
    enc = quantize_weights_encoded(w, fmt, 64, 16)
    err = np.abs(enc.dequantize() - w).reshape(16, 4, 64).max(axis=2)
    absmax = np.abs(w).reshape(16, 4, 64).max(axis=2)
    assert np.all(err <= bound * absmax)


def test_per_tensor_ternary_uses_one_absmean_of_the_real_weights():
    w = np.random.default_rng(3).standard_normal((8, 40))
    enc = quantize_weights_encoded(w, "ternary", 16, 16, k_padded=48, ternary_scale="tensor")
    s = enc.mantissas.astype(np.float64) * enc.row_scale[:, None]
    np.testing.assert_allclose(s, np.abs(w).mean(), rtol=1e-4)
    assert np.array_equal(enc.q[:, :40], np.clip(np.rint(w / np.abs(w).mean()), -1, 1))
    assert not enc.q[:, 40:].any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(w=np.array([[np.nan] + [1.0] * 15])), "1 NaN/Inf"),
    (dict(w=np.full((1, 16), 1e-310)), "too small to encode"),
    (dict(w=np.ones((2, 3, 4))), "2-D"),
    (dict(bits=3.0), "bits must be one of"),
    (dict(group_size=12), "group_size must be a positive power of two"),
    (dict(scale_bits=0), "scale_bits"),
    (dict(k_padded=8), "k_padded must be a multiple of group_size 16 and >= K"),
    (dict(ternary_scale="row"), "ternary_scale"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = dict(w=np.ones((2, 16)), bits=4, group_size=16, scale_bits=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        quantize_weights_encoded(args.pop("w"), args.pop("bits"), args.pop("group_size"), args.pop("scale_bits"),
                                 **args)


def test_scale_product_rounds_once_without_intermediate_overflow():
    assert scale_product(2**31, 1e300, 1e-300, exp=5) == pytest.approx(2**36)
    assert scale_product(3.0, 1e-300, divisors=(1e-300,)) == 3.0
    assert scale_product(1.0, 1e308, 10.0) == math.inf                    # the exact product is beyond float64
    assert scale_product(1.0, 1e-300, 1e-300) == 0.0
    assert scale_product(np.array([[1.0, 2.0]]), np.array([[3.0], [4.0]])).tolist() == [[3.0, 6.0], [4.0, 8.0]]
    assert scale_product(7.0, 0.0) == 0.0
    for bad in (math.nan, -1.0, math.inf):
        with pytest.raises(ValueError, match="scales must be finite"):
            scale_product(1.0, bad)
    with pytest.raises(ValueError, match="divisors > 0"):
        scale_product(1.0, divisors=(0.0,))


@settings(max_examples=100, deadline=None)
@given(v=st.integers(-2**31, 2**31), a=st.integers(-300, 300), b=st.integers(-300, 300), e=st.integers(0, 63))
def test_scale_product_equals_exact_rational_arithmetic(v, a, b, e):
    from fractions import Fraction

    fa, fb = 1.5 * 10.0 ** a, 0.7 * 10.0 ** b
    exact = Fraction(v) * Fraction(fa) * Fraction(fb) * 2 ** e
    got = scale_product(float(v), fa, fb, exp=e)
    if abs(exact) > Fraction(np.finfo(np.float64).max) or (exact and abs(exact) < Fraction(2.0 ** -1000)):
        return
    assert abs(Fraction(float(got)) - exact) <= abs(exact) * Fraction(1, 2**51)
