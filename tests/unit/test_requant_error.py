"""Dyadic (HAWQ-V3) requantization: the stated worst-case error against float holds.

``y = sat8(rshift_round(acc * mult, shift))`` with ``(mult, shift)`` from
``dyadic_multiplier(real)`` is compared with the exact rational ``acc * real``
(``real`` taken exactly as the float it is) over random and extreme inputs.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hbmforge.numerics import dyadic_multiplier, matmul_int8, requant_error_bound
from hbmforge.numerics.fixed import rshift_round, saturate


def _round_half_up(v: Fraction) -> int:
    return (v + Fraction(1, 2)).__floor__()


def _measure(acc: list[int], real: float, mult: int, shift: int) -> tuple[int, Fraction]:
    """Largest |y - sat8(round(acc*real))| and |y - acc*real| (unsaturated outputs) over ``acc``."""
    r = Fraction(real)
    worst_lsb, worst_abs = 0, Fraction(0)
    for a in acc:
        y = int(saturate(rshift_round(a * mult, shift), 8))
        exact = a * r
        worst_lsb = max(worst_lsb, abs(y - int(saturate(_round_half_up(exact), 8))))
        if -128 <= _round_half_up(exact) <= 127:
            worst_abs = max(worst_abs, abs(y - exact))
    return worst_lsb, worst_abs


ACC_MAX = (1 << 43) - 1        # the starter engine's accumulator: 44 signed bits


def _accs(rng, real: float) -> list[int]:
    """Extremes, values around every rounding boundary near the int8 range, and random ones."""
    accs = [0, 1, -1, ACC_MAX, -ACC_MAX - 1]
    for target in np.arange(-130.5, 131, 1.0):               # half-way points: the worst case for rounding
        c = int(round(target / real))
        accs += [c + d for d in (-2, -1, 0, 1, 2) if abs(c + d) <= ACC_MAX]
    span = min(ACC_MAX, int(200 / real) + 1)
    accs += [int(v) for v in rng.integers(-span, span + 1, 300)]
    return accs


@pytest.mark.parametrize("seed", range(4))
def test_dyadic_requant_stays_within_the_stated_bound(seed):
    rng = np.random.default_rng(seed)
    reals = list(np.exp(rng.uniform(np.log(1e-12), np.log(0.5), 12)))
    reals += [2.0 ** -20, 1 / 3, 0.1, 2.0 ** -40 * 1.7]
    for real in reals:
        bound = requant_error_bound(real, ACC_MAX)
        mult, shift = (int(v[0]) for v in dyadic_multiplier(real))
        assert (mult, shift) == (bound.mult, bound.shift)
        assert bound.rel_mult_error <= 2.0 ** -31               # mult_bits = 32
        assert bound.lsb_vs_rounded <= 1 and bound.abs_vs_float < 0.5 + 1e-6
        lsb, ab = _measure(_accs(rng, real), real, mult, shift)
        assert lsb <= bound.lsb_vs_rounded, (real, lsb)
        assert ab <= Fraction(bound.abs_vs_float) + Fraction(1, 1 << 60), (real, float(ab))


def test_exact_power_of_two_scales_are_exact():
    for e in (1, 7, 20, 40):
        b = requant_error_bound(2.0 ** -e, ACC_MAX)
        assert b.mult_error == 0 and b.lsb_vs_rounded == 0
        lsb, _ = _measure([(1 << e) * v + h for v in range(-130, 131) for h in (0, 1 << (e - 1))], 2.0 ** -e,
                          b.mult, b.shift)
        assert lsb == 0


def test_the_bound_grows_with_a_narrow_multiplier():
    b = requant_error_bound(1 / 3, ACC_MAX, mult_bits=8)
    assert 2.0 ** -9 < b.rel_mult_error <= 2.0 ** -7
    assert b.lsb_vs_rounded >= 1
    lsb, _ = _measure(list(range(-400, 401)), 1 / 3, b.mult, b.shift)
    assert lsb <= b.lsb_vs_rounded


def test_matmul_int8_output_is_within_one_lsb_of_float():
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (8, 256))
    w = rng.integers(-2, 2, (16, 256))
    s = rng.integers(1, 1 << 16, (16, 2))
    real = rng.uniform(1e-7, 1e-6, 16)
    mult, shift = dyadic_multiplier(real)
    y = matmul_int8(x, w, s, 128, mult, shift)
    acc = x @ (w * np.repeat(s, 128, axis=1)).T
    for n in range(16):
        ref = [int(saturate(_round_half_up(int(a) * Fraction(real[n])), 8)) for a in acc[:, n]]
        assert np.max(np.abs(y[:, n].astype(int) - np.array(ref))) <= requant_error_bound(real[n], ACC_MAX).lsb_vs_rounded


def test_bound_refuses_bad_arguments():
    with pytest.raises(ValueError, match="acc_max"):
        requant_error_bound(0.1, -1)
    with pytest.raises(ValueError, match="NaN/Inf"):
        requant_error_bound(float("nan"), 10)
