"""hbmforge.numerics.tlmm: the half-table index mapping, table construction and sizes, and the
table-lookup matmul equal to the exact golden model."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from hbmforge.numerics import tlmm
from hbmforge.numerics.matmul import matmul_accumulate

GROUPS = [2, 3, 4, 5]


@pytest.mark.parametrize("g", GROUPS)
def test_index_mapping_is_a_bijection_onto_signed_half_table_entries(g):
    e = tlmm.table_entries(g)
    seen = {}
    for trits in itertools.product((-1, 0, 1), repeat=g):
        neg, idx = tlmm.index_of(trits)
        assert 0 <= idx < e
        # the unsigned (v, centre) form of the mapping agrees
        assert tlmm.sign_index_from_unsigned(tlmm.unsigned_index(trits), g) == (neg, idx)
        # the entry's pattern times the sign is the vector itself
        pattern = np.array(tlmm.trits_of(idx, g))
        assert list(-pattern if neg else pattern) == list(trits)
        seen[(neg, idx)] = trits
    assert len(seen) == 3 ** g                       # every vector has its own (sign, entry)
    assert (True, 0) not in seen                     # zero is never negated
    assert len({i for _, i in seen}) == e == (3 ** g + 1) // 2


def test_table_sizes_per_group():
    assert [tlmm.table_entries(g) for g in GROUPS] == [5, 14, 41, 122]
    assert [tlmm.entry_bits(g) for g in GROUPS] == [9, 10, 10, 11]
    assert tlmm.table_entries(1) == 2


@pytest.mark.parametrize("g", GROUPS)
def test_entry_bits_hold_the_extreme_entries(g):
    bits = tlmm.entry_bits(g)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for x in itertools.product((-128, 127), repeat=g):
        t = tlmm.build_table(x)
        assert lo <= t.min() and t.max() <= hi
    # all -128 gives -128 g at the all-(+1) entry, which one bit less could not hold
    assert tlmm.build_table([-128] * g).min() == -128 * g < lo // 2


def test_centre_and_negation_of_the_unsigned_index():
    for g in GROUPS:
        c = (3 ** g - 1) // 2
        assert tlmm.unsigned_index([0] * g) == c
        assert tlmm.sign_index_from_unsigned(c, g) == (False, 0)
        for trits in itertools.product((-1, 0, 1), repeat=g):
            v = tlmm.unsigned_index(trits)
            assert tlmm.unsigned_index([-t for t in trits]) == 3 ** g - 1 - v


@pytest.mark.parametrize("g", GROUPS)
def test_table_lookup_equals_exact_dot_product_for_every_weight_vector(g):
    rng = np.random.default_rng(g)
    x = rng.integers(-128, 128, g)
    x[0] = -128
    table = tlmm.build_table(x)
    for trits in itertools.product((-1, 0, 1), repeat=g):
        neg, idx = tlmm.index_of(trits)
        got = -table[idx] if neg else table[idx]
        assert got == int(np.dot(trits, x))


def test_partial_group_pads_with_zero_activations():
    table = tlmm.build_table([5, -7], g=4)
    assert len(table) == 41
    # vectors that only use the two present lanes live in the first (3^2 + 1) / 2 entries
    assert list(table[:5]) == list(tlmm.build_table([5, -7]))


def test_bank_layout_cuts_spans_into_groups():
    assert tlmm.bank_layout(16, 16, 4) == [(0, 4), (4, 4), (8, 4), (12, 4)]
    assert tlmm.bank_layout(16, 64, 5) == [(0, 5), (5, 5), (10, 5), (15, 1)]
    assert tlmm.bank_layout(32, 16, 3) == [(0, 3), (3, 3), (6, 3), (9, 3), (12, 3), (15, 1),
                                           (16, 3), (19, 3), (22, 3), (25, 3), (28, 3), (31, 1)]
    sh = tlmm.TlmmShape(rows=4, lanes=64, group_size=128, g=5, max_k=4096)
    assert sh.banks_per_fire == 13 and sh.bank_entries[-1] == 41      # 12 x 5 lanes + one of 4
    assert sh.word_bits == 44
    assert sh.table_bits() == 64 * (12 * 122 + 41) * 44


@pytest.mark.parametrize("g,lanes,group_size", [(2, 16, 16), (3, 16, 64), (4, 32, 16), (5, 16, 32),
                                                (5, 64, 128), (3, 8, 16)])
def test_table_lookup_matmul_equals_golden_accumulator(g, lanes, group_size):
    rng = np.random.default_rng(100 * g + lanes)
    m, k, n = 5, 2 * max(lanes, group_size), 7
    x = rng.integers(-128, 128, (m, k))
    w = rng.integers(-1, 2, (n, k))
    s = rng.integers(0, 1 << 16, (n, k // group_size))
    x[0] = -128
    w[0] = 1
    w[1] = -1
    x[-1, ::3] = 127
    s[0] = (1 << 16) - 1
    expected = matmul_accumulate(x, w, s, group_size)
    got = tlmm.tlmm_accumulate(x, w, s, group_size, lanes=lanes, g=g, rows=2)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("g", GROUPS)
def test_tlmm_dot_on_extremes(g):
    k = 60
    x = np.full((3, k), -128)
    x[1] = 127
    x[2, ::2] = 127
    w = np.stack([np.ones(k, int), -np.ones(k, int), np.resize([1, -1, 0], k)])
    np.testing.assert_array_equal(tlmm.tlmm_dot(x, w, g), x @ w.T)


def test_lookup_sums_are_the_array_outputs():
    sh = tlmm.TlmmShape(rows=2, lanes=32, group_size=16, g=3, max_k=64)
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (2, 64))
    w = rng.integers(-1, 2, (3, 64))
    sums = tlmm.lookup_sums(x, w, sh)
    assert sums.shape == (2, 3, 2, 2)
    for r, n, line, j in itertools.product(range(2), range(3), range(2), range(2)):
        sl = slice(line * 32 + j * 16, line * 32 + (j + 1) * 16)
        assert sums[r, n, line, j] == int(np.dot(x[r, sl], w[n, sl]))


def test_cycle_formulas():
    # GEMV K = N = 4096, L = 64, g = 5: build 64 * 122 cycles, fires 4096 * 64
    assert tlmm.build_cycles(4096, 64, 5) == 64 * 122
    assert tlmm.fire_cycles(4096, 4096, 64) == 4096 * 64
    assert tlmm.cycles_per_output(4096, 4096, 64, 5) == pytest.approx(64 * (1 + 122 / 4096))
    assert tlmm.build_cycles(256, 16, 2, latency=3) == 16 * 5 + 3


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="tlmm group"):
        tlmm.bank_layout(16, 16, 6)
    with pytest.raises(ValueError, match="trits"):
        tlmm.index_of([2, 0])
    with pytest.raises(ValueError, match="ternary"):
        tlmm.lookup_sums(np.zeros((1, 16), int), np.full((1, 16), 2),
                         tlmm.TlmmShape(rows=1, lanes=16, group_size=16, g=2, max_k=16))
    with pytest.raises(ValueError, match="entry"):
        tlmm.trits_of(5, 2)
