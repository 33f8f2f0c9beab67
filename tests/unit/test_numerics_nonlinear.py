"""Golden models of the non-linear units: error bounds against float64 math, exact special cases,
and input validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hbmforge.numerics.nonlinear import (
    RSQRT_REL_BOUND,
    ActivationSpec,
    NormSpec,
    RsqrtSpec,
    gelu_int,
    gelu_ref,
    layernorm_int,
    layernorm_ref,
    measure_gelu_error,
    measure_layernorm_error,
    measure_rmsnorm_error,
    measure_silu_error,
    norm_int,
    rmsnorm_int,
    rmsnorm_ref,
    rsqrt_int,
    silu_int,
    silu_ref,
)


# -- GELU / SiLU error bounds ------------------------------------------------------------------------

def test_gelu_error_is_below_a_hundredth_over_every_input_in_minus8_8():
    r = measure_gelu_error()
    assert r["n"] == 16 * 1024 + 1                  # every Q5.10 value in [-8, 8]
    assert r["max_abs_err"] <= 0.01
    assert r["max_abs_err"] <= 0.001                # the documented bound of the default format


def test_silu_error_is_below_a_hundredth_over_every_input_in_minus8_8():
    r = measure_silu_error()
    assert r["n"] == 16 * 1024 + 1
    assert r["max_abs_err"] <= 0.01
    assert r["max_abs_err"] <= 0.001


@pytest.mark.parametrize("fmt,bound", [
    (dict(width=16, frac_bits=12), 0.0006),
    (dict(width=12, frac_bits=8), 0.0025),
    (dict(width=16, frac_bits=10, seg_bits=3), 0.0025),
    (dict(width=16, frac_bits=10, seg_bits=2), 0.007),
    (dict(width=8, frac_bits=4), 0.035),    # half an LSB is 0.031
])
def test_activation_error_bounds_of_other_formats(fmt, bound):
    for measure in (measure_gelu_error, measure_silu_error):
        assert measure(**fmt)["max_abs_err"] <= bound


@pytest.mark.parametrize("fn,ref", [(gelu_int, gelu_ref), (silu_int, silu_ref)])
def test_activation_is_accurate_over_the_whole_int16_range(fn, ref):
    x = np.arange(-32768, 32768)
    err = np.abs(fn(x) / 1024 - ref(x / 1024))
    assert err.max() <= 0.001


def test_activation_is_the_identity_and_zero_far_from_the_origin():
    big = np.arange(16 * 1024, 32768)
    assert np.array_equal(gelu_int(big), big)          # t(a) < 2**-15 beyond 8 (GELU) / 16 (SiLU)
    assert np.array_equal(silu_int(big), big)
    assert np.all(gelu_int(-big) == 0)
    assert np.all(silu_int(-big) == 0)
    assert gelu_int(0).item() == 0 and silu_int(0).item() == 0


def test_activation_tables_are_small_and_widths_cover_them():
    g, s = ActivationSpec("gelu"), ActivationSpec("silu")
    assert (g.segments, s.segments) == (128, 256)
    for sp in (g, s):
        assert all(-(1 << (sp.c0_bits - 1)) <= v < (1 << (sp.c0_bits - 1)) for v in sp.c0)
        assert all(-(1 << (sp.c1_bits - 1)) <= v < (1 << (sp.c1_bits - 1)) for v in sp.c1)
    # a narrow format only tabulates its own input range
    assert ActivationSpec("silu", width=8, frac_bits=4).segments == 8 * 16


# -- reciprocal square root ----------------------------------------------------------------------------

def test_rsqrt_relative_error_is_below_2_pow_minus_16():
    sp = RsqrtSpec(49)
    rng = np.random.default_rng(0)
    vs = list(range(1, 5000)) + [int(rng.integers(1, 1 << int(b))) for b in rng.integers(13, 50, 5000)]
    vs += [(1 << 49) - 1, 1 << 48]
    m, e = rsqrt_int(np.array(vs, dtype=object), sp)
    rel = np.array([mi * 2.0 ** -(18 + ei) * math.sqrt(v) - 1 for mi, ei, v in zip(m, e, vs)])
    assert np.abs(rel).max() <= RSQRT_REL_BOUND


def test_rsqrt_of_powers_of_four_is_exact_to_the_mantissa():
    sp = RsqrtSpec(40)
    for k in range(20):
        m, e = rsqrt_int(4 ** k, sp)
        assert e == k and abs(m - (1 << 18)) <= 1


def test_rsqrt_rejects_zero_overflow_and_floats():
    sp = RsqrtSpec(16)
    with pytest.raises(ValueError, match="outside"):
        rsqrt_int(0, sp)
    with pytest.raises(ValueError, match="outside"):
        rsqrt_int(1 << 16, sp)
    with pytest.raises(ValueError, match="NaN"):
        rsqrt_int(np.array([np.nan]), sp)
    with pytest.raises(ValueError, match="integers"):
        rsqrt_int(2.0, sp)


# -- RMSNorm / LayerNorm error bounds ------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 2, 3, 7, 64, 256])
def test_norm_error_is_within_half_an_lsb_plus_the_rsqrt_error(dim):
    for measure in (measure_rmsnorm_error, measure_layernorm_error):
        r = measure(dim=dim, n_vectors=48, seed=dim)
        assert r["max_abs_err_beyond_relative_lsb"] <= 0.5 + 1e-9
        assert r["max_abs_err_lsb"] <= 0.75          # default format: |y| < 32, 2**-16 * 32 * 1024 = 0.5
        assert r["mean_abs_err_lsb"] <= 0.3


@pytest.mark.parametrize("fmt", [
    dict(width=12, frac_bits=6, gamma_width=8, gamma_frac_bits=6, out_width=12, out_frac_bits=8, eps=1e-6),
    dict(out_width=20, out_frac_bits=14),
    dict(gamma_width=10, gamma_frac_bits=0, eps=0.25),
    dict(width=8, frac_bits=0, out_width=8, out_frac_bits=4),
])
def test_norm_error_bound_holds_for_other_formats(fmt):
    for measure in (measure_rmsnorm_error, measure_layernorm_error):
        r = measure(dim=32, n_vectors=48, **fmt)
        assert r["max_abs_err_beyond_relative_lsb"] <= 0.5 + 1e-9


def test_norm_extreme_vectors():
    sp = NormSpec(16, center=True)
    gamma = np.full(16, 1 << 12)                  # 1.0
    beta = np.arange(16) - 8
    # constant vector: variance 0 -> exactly beta
    assert np.array_equal(layernorm_int(np.full((3, 16), 1234), gamma, beta, sp)[0], beta)
    # all zero: RMSNorm gives 0
    assert np.all(rmsnorm_int(np.zeros((1, 16), np.int64), gamma, NormSpec(16)) == 0)
    # one full-scale spike among zeros: y = sqrt(D) = 4.0 at the spike (RMSNorm)
    x = np.zeros(16, np.int64)
    x[5] = 32767
    y = rmsnorm_int(x, gamma, NormSpec(16))
    assert abs(y[5] - 4 * 1024) <= 1 and np.count_nonzero(y) == 1
    # saturation: gamma = 8 and a spike in a long vector -> clipped to the int16 maximum
    y = rmsnorm_int(np.concatenate([x, np.zeros(240, np.int64)]), np.full(256, 32767), NormSpec(256))
    assert y[5] == 32767


def test_norm_golden_models_agree_with_float_math_on_gaussian_data():
    rng = np.random.default_rng(3)
    sp = NormSpec(128, center=True)
    xf = rng.normal(0.3, 1.5, (4, 128))
    x = np.round(xf * 1024).astype(np.int64)
    g = np.round(rng.uniform(0.5, 1.5, 128) * 4096).astype(np.int64)
    b = np.round(rng.normal(0, 0.1, 128) * 1024).astype(np.int64)
    ref = layernorm_ref(x / 1024, g / 4096, b / 1024, 1e-5)
    assert np.abs(layernorm_int(x, g, b, sp) / 1024 - ref).max() <= 0.6 / 1024
    ref = rmsnorm_ref(x / 1024, g / 4096, 1e-5)
    assert np.abs(rmsnorm_int(x, g, NormSpec(128)) / 1024 - ref).max() <= 0.6 / 1024


def test_norm_spec_derived_widths_cover_the_extremes():
    for dim in (1, 3, 4096, 1 << 16):
        for center in (False, True):
            sp = NormSpec(dim, center=center)
            assert sp.eps_q >= 1 << 20
            assert sp.shift_base + sp.pre_shift >= 1
            lo, hi = -(1 << 15), (1 << 15) - 1
            s1 = dim * lo
            assert -(1 << (sp.sum_bits - 1)) <= s1
            assert (dim * lo * lo).bit_length() <= sp.sumsq_bits
            num = dim * hi - (dim * lo if center else 0)
            assert num < 1 << (sp.num_bits - 1)


# -- input validation ------------------------------------------------------------------------------------

def test_golden_functions_refuse_floats_nan_and_out_of_range_values():
    with pytest.raises(ValueError, match="integer"):
        gelu_int(np.array([1.5]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        silu_int(np.array([np.nan]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        gelu_int([np.inf])
    with pytest.raises(ValueError, match="does not fit signed 16 bits"):
        gelu_int([40000])
    with pytest.raises(ValueError, match="dtype"):
        silu_int(np.array(["1"]))
    with pytest.raises(ValueError, match="bool"):
        gelu_int(True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gelu_ref([np.nan])
    with pytest.raises(ValueError, match="NaN or Inf"):
        silu_ref([1.0, -np.inf])
    with pytest.raises(ValueError, match="NaN or Inf"):
        rmsnorm_ref([[np.nan, 1.0]], [1.0, 1.0], 1e-5)


def test_norm_golden_refuses_bad_shapes_and_parameters():
    sp = NormSpec(8)
    g = np.ones(8, np.int64)
    with pytest.raises(ValueError, match=r"x must have shape \[..., 8\]"):
        rmsnorm_int(np.zeros(7, np.int64), g, sp)
    with pytest.raises(ValueError, match=r"gamma must have shape \(8,\)"):
        rmsnorm_int(np.zeros(8, np.int64), g[:4], sp)
    with pytest.raises(ValueError, match="gamma value"):
        rmsnorm_int(np.zeros(8, np.int64), g << 20, sp)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rmsnorm_int(np.full(8, np.nan), g, sp)
    with pytest.raises(ValueError, match="beta is a LayerNorm parameter"):
        norm_int(np.zeros(8, np.int64), g, g, sp)
    with pytest.raises(ValueError, match="center=True"):
        layernorm_int(np.zeros(8, np.int64), g, g, sp)
    with pytest.raises(ValueError, match=r"beta must have shape"):
        layernorm_int(np.zeros(8, np.int64), g, g[:3], NormSpec(8, center=True))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: ActivationSpec("tanh"), ValueError, "function"),
    (lambda: ActivationSpec(width=40), ValueError, "width"),
    (lambda: ActivationSpec(frac_bits=15), ValueError, "frac_bits"),
    (lambda: ActivationSpec(seg_bits=-1), ValueError, "seg_bits"),
    (lambda: ActivationSpec(width=16.0), TypeError, "width"),
    (lambda: RsqrtSpec(0), ValueError, "in_bits"),
    (lambda: RsqrtSpec(32, iterations=9), ValueError, "iterations"),
    (lambda: NormSpec(0), ValueError, "dim"),
    (lambda: NormSpec(8, eps=-1.0), ValueError, "eps"),
    (lambda: NormSpec(8, eps=float("inf")), ValueError, "eps"),
    (lambda: NormSpec(8, eps="1e-5"), TypeError, "eps"),
    (lambda: NormSpec(8, out_frac_bits=16), ValueError, "out_frac_bits"),
    (lambda: NormSpec(8, center=1), TypeError, "center"),
])
def test_specs_refuse_unsupported_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# -- big sweeps ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("width,frac_bits", [(16, 8), (16, 10), (16, 12), (16, 13), (12, 8), (20, 14)])
@pytest.mark.parametrize("seg_bits", [3, 4, 5])
def test_activation_error_sweep(width, frac_bits, seg_bits):
    for measure in (measure_gelu_error, measure_silu_error):
        r = measure(width=width, frac_bits=frac_bits, seg_bits=seg_bits)
        assert r["max_abs_err"] <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("dim", [768, 2048, 4096, 5120])
def test_norm_error_sweep_large_dims(dim):
    for measure in (measure_rmsnorm_error, measure_layernorm_error):
        for eps in (1e-6, 1e-5):
            r = measure(dim=dim, n_vectors=32, seed=dim, eps=eps)
            assert r["max_abs_err_beyond_relative_lsb"] <= 0.5 + 1e-9
            assert r["max_abs_err_lsb"] <= 0.75
