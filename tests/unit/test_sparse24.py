"""2:4 structured sparsity: magnitude pruning, the packed layout, the golden model and the contract."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, OutMode
from hbmforge.engines.matmul import SPARSE24, is_sparse24
from hbmforge.host.packing import pack_scales, pack_weights, unpack_output, unpack_weights, weight_code
from hbmforge.host.program import ProgramBuilder
from hbmforge.layout import DesignLayout
from hbmforge.numerics import matmul_int32
from hbmforge.numerics.program import SparseMemory, execute
from hbmforge.numerics.quant import storage_range
from hbmforge.numerics.sparse import decode_sparse24_stream, is_2_4, prune_2_4, sparse24_mask

PROGRAM, X, S, Y = 0x0, 0x10_000, 0x20_000, 0x40_000
W = [0x100_000 * (i + 1) for i in range(4)]
FORMATS = (2, 4, 8, "ternary")


def layout(**engine) -> DesignLayout:
    eng = {"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
           "weight_bits": [2, 4, 8, "ternary"], "group_size": 16, "scale_bits": 16, "max_k": 256,
           "sparse24": True}
    eng.update(engine)
    return DesignLayout(parse_config({"version": 1, "name": "tiny", "board": "u280", "clock_mhz": 300,
                                      "axi": {"data_width": 64}, "engines": [eng]}))


def random_sparse(rng, fmt, n, k):
    lo, hi = storage_range(fmt)
    return prune_2_4(rng.integers(lo, hi + 1, (n, k)))


def test_magnitude_pruning_keeps_the_two_largest_of_every_four():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, -1.0]])
    assert prune_2_4(w).tolist() == [[0.0, -3.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]]     # a tie: the earlier ones
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 64))
    p = prune_2_4(w)
    assert is_2_4(p) and not is_2_4(w) and p.dtype == w.dtype
    g, pg = np.abs(w).reshape(7, 16, 4), np.abs(p).reshape(7, 16, 4)
    # what is kept is at least as large as anything dropped, in every group
    kept_min = np.where(pg > 0, pg, np.inf).min(axis=2)
    dropped_max = np.where(sparse24_mask(w).reshape(7, 16, 4), -np.inf, g).max(axis=2)
    assert (kept_min >= dropped_max).all()
    assert np.array_equal(prune_2_4(p), p)                      # idempotent


def test_pruning_rejects_a_k_that_is_not_whole_groups_and_non_finite_weights():
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_2_4(np.ones((2, 6)))
    with pytest.raises(ValueError, match="finite"):
        prune_2_4(np.array([[np.nan, 0, 0, 0]]))


@pytest.mark.parametrize("bad, err, text", [
    (None, TypeError, "NumPy array with at least one axis, got NoneType"),
    ("abcd", TypeError, "NumPy array with at least one axis, got str"),
    (3.0, TypeError, "at least one axis"),
    (np.ones((2, 4), dtype=bool), TypeError, r"integer or float \(not bool\)"),
    (np.ones((2, 4), dtype=complex), TypeError, r"not complex128"),
    (np.array([[1, "a", 2, 3]], dtype=object), TypeError, r"not object"),
    ([[1, 2, 3, 4], [1, 2]], ValueError, "rectangular"),
])
@pytest.mark.parametrize("fn", [prune_2_4, is_2_4, sparse24_mask])
def test_the_2_4_helpers_refuse_what_is_not_a_real_array_by_name(fn, bad, err, text):
    with pytest.raises(err, match=text):
        fn(bad)
    assert is_2_4([[1, 0, 0, 2], [0, 0, 0, 0]]) and prune_2_4([[1, 2, 3, 4]]).tolist() == [[0, 0, 3, 4]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_weights_round_trip_and_take_2b_plus_4_bits_per_group(fmt):
    lay = layout()
    rng = np.random.default_rng(7)
    w = random_sparse(rng, fmt, 5, 64)
    stripes = pack_weights(w, fmt, lay, sparse24=True)
    assert np.array_equal(unpack_weights(stripes, 5, 64, fmt, lay, sparse24=True), w)
    b = 2 if fmt == "ternary" else fmt
    code = weight_code(fmt, lay, sparse24=True)
    assert is_sparse24(code) and code == (3 if fmt == "ternary" else fmt) | SPARSE24
    assert lay.matmul.weight_stream_bytes(5, 64, code) == 5 * 64 // 4 * (2 * b + 4) // 8
    assert sum(s.nbytes for s in stripes) == 2 * lay.matmul.weight_port_bytes(5, 64, code)


def test_hand_packed_groups_decode_by_their_indexes():
    """Independent of the packer: int4 groups (v0, v1, i0, i1) written as bits by hand."""
    def group(v0, v1, i0, i1):
        return [(v0 >> j) & 1 for j in range(4)] + [(v1 >> j) & 1 for j in range(4)] + [i0 & 1, i0 >> 1, i1 & 1, i1 >> 1]
    bits = np.array(group(3, -2 & 15, 1, 3) + group(-8 & 15, 7, 0, 0) + group(5, 6, 2, 1), dtype=np.uint8)
    out = decode_sparse24_stream(bits, 12, 4, False)
    # a repeated index keeps v0 (what the engine's mux does)
    assert out.tolist() == [0, 3, 0, -2, -8, 0, 0, 0, 0, 6, 5, 0]


def test_packing_refuses_dense_weights_and_engines_without_sparse24():
    lay = layout()
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 0, elements 0..3 hold 3"):
        pack_weights(np.array([[1, 1, 1, 0] * 4]), 4, lay, sparse24=True)
    dense_only = layout(sparse24=False)
    with pytest.raises(ValueError, match="sparse24 false"):
        pack_weights(np.zeros((1, 16), dtype=int), 4, dense_only, sparse24=True)
    assert all(not is_sparse24(int(c)) for c in dense_only.matmul.weight_codes)
    assert set(layout().matmul.weight_codes) == {2, 3, 4, 8, 0x12, 0x13, 0x14, 0x18}


def _run(lay, mem, prog):
    mem.write(PROGRAM, prog.to_bytes())
    return execute(mem, PROGRAM, len(prog), lay)


@pytest.mark.parametrize("fmt", FORMATS)
def test_golden_program_of_sparse_weights_equals_the_dense_matmul_and_reads_fewer_bytes(fmt):
    lay = layout()
    rng = np.random.default_rng(11)
    m, k, n = 3, 64, 9
    x = rng.integers(-128, 128, (m, k))
    w = random_sparse(rng, fmt, n, k)
    s = rng.integers(0, 1 << 16, (n, k // 16))
    results = {}
    for sparse in (False, True):
        mem = SparseMemory()
        mem.write(X, x.astype(np.int8).tobytes())
        mem.write(S, pack_scales(s, lay).tobytes())
        for i, stripe in enumerate(pack_weights(w, fmt, lay, sparse24=sparse)):
            mem.write(W[i], stripe.tobytes())
        prog = ProgramBuilder(lay)
        prog.matmul(m=m, k=k, n=n, wbits=weight_code(fmt, lay, sparse24=sparse), x=X, s=S, y=Y, w=W[:2],
                    out_shift=4)
        res = _run(lay, mem, prog)
        assert res.ok, res.detail
        y = unpack_output(mem.read(Y, lay.matmul.out_bytes(m, n, OutMode.INT32)), m, n, OutMode.INT32, lay)
        results[sparse] = (y, sum(res.weight_bytes_read))
    assert np.array_equal(results[True][0], matmul_int32(x, w, s, 16, 4))
    assert np.array_equal(results[True][0], results[False][0])
    b = 2 if fmt == "ternary" else fmt
    assert results[True][1] <= results[False][1] * (2 * b + 4) / (4 * b) + 2 * lay.word_bytes


def test_a_sparse_code_on_a_dense_engine_is_bad_wbits():
    lay = layout(sparse24=False)
    code, why = lay.validate_descriptor({"op": 1, "m": 1, "k": 16, "n": 1, "wbits": 4 | SPARSE24, "out_mode": 0,
                                         "out_shift": 0, "x_addr": X, "s_addr": S, "q_addr": 0, "y_addr": Y,
                                         "w_addr0": W[0], "w_addr1": W[1]})
    assert code == ErrorCode.BAD_WBITS and "sparse24 false" in why
    with pytest.raises(ValueError, match="error code 2.*sparse24 false"):
        ProgramBuilder(lay).matmul(m=1, k=16, n=1, wbits=4 | SPARSE24, x=X, s=S, y=Y, w=W[:2])


@pytest.mark.parametrize("engine,field", [
    ({"sparse24": False}, "sparse24=False"),
    ({"sparse24": [4]}, "sparse24=[4]"),
    ({"weight_bits": [4, 8]}, "a 2-bit format"),
    ({"weight_bits": [2, "ternary"]}, "a 4- or 8-bit format"),
    ({"max_k": 128}, "max_k == lanes"),
])
def test_sparse24_pairs_names_what_it_needs(engine, field):
    base = {"weight_bits": [2, 4], "lanes": 64, "group_size": 64, "max_k": 64, "sparse24": True,
            "sparse24_pairs": True}
    layout(**base)                                   # the base config is valid
    with pytest.raises(Exception, match="sparse24_pairs needs") as info:
        layout(**{**base, **engine})
    assert field in str(info.value)


@pytest.mark.parametrize("engine,field", [
    ({"weight_bits": [4, 8]}, "weight_bits=[4, 8]"),
    ({"weight_bits": [4, "ternary"], "ternary_packing": "5trit"}, "ternary_packing='5trit'"),
    ({"weight_bits": [2, "ternary"]}, "a 4- or 8-bit one"),
    ({"max_k": 128}, "max_k=128"),
    ({"arch": "tlmm", "weight_bits": ["ternary"]}, "arch='tlmm'"),
])
def test_dense_pairs_names_what_it_needs(engine, field):
    base = {"weight_bits": [2, 4], "lanes": 64, "group_size": 64, "max_k": 64, "dense_pairs": True}
    lay = layout(**base)                             # the base config is valid
    assert lay.mm.dense_pair_formats == (2,)
    with pytest.raises(Exception, match="dense_pairs needs") as info:
        layout(**{**base, **engine})
    assert field in str(info.value)


def test_dense_pairs_budget_counts_the_measured_slopes():
    """The analytic estimate adds the Yosys slopes of the dense pair lane and its unpacker
    (hbmforge.budget), and the pair fire's shared datapath when sparse24_pairs is off."""
    from hbmforge import budget
    base = {"weight_bits": [2, 4], "lanes": 64, "group_size": 64, "max_k": 64, "rows": 2}
    plain, pairs, both = (budget.estimate_resources(layout(**base, **extra)).lut for extra in
                          ({}, {"sparse24_pairs": True}, {"sparse24_pairs": True, "dense_pairs": True}))
    dense_only = budget.estimate_resources(layout(**base, dense_pairs=True)).lut
    assert both - pairs == math.ceil(128 * budget.LUT_DENSE_PAIR_LANE + 64 * budget.LUT_DENSE_PAIR_UNPACK_LANE)
    assert dense_only - plain == both - pairs + (pairs - plain) - budget.LUT_PAIR_UNPACK_LANE * 64


def test_dense_pair_slots_read_two_dense_columns():
    """dense_pair_slots + dense_pair_fire_sums (the dense pair fire's golden model) equal the
    product of the two decoded dense columns, every code (ternary's reserved 10 too)."""
    from hbmforge.numerics.sparse import dense_pair_fire_sums, dense_pair_slots
    rng = np.random.default_rng(4)
    lanes, g = 32, 16
    for ternary in (False, True):
        table = np.array([0, 1, 0, -1]) if ternary else np.array([0, 1, -2, -1])
        for _ in range(20):
            bits = rng.integers(0, 2, 4 * lanes).astype(np.uint8)
            dense = table[bits[0::2] + 2 * bits[1::2]].reshape(2, lanes)
            x = rng.integers(-128, 128, (3, lanes))
            sums = dense_pair_fire_sums(x, *dense_pair_slots(bits, lanes, ternary), g)
            for h in range(2):
                want = (x * dense[h]).reshape(3, -1, g).sum(axis=2)
                assert np.array_equal(sums[:, h::2], want)


def test_pair_slots_read_the_groups_as_the_dense_decode_does():
    """pair_slots + pair_fire_sums (the pair fire's golden model) equal the dense product of the
    decoded columns, for random raw streams (reserved ternary codes and repeated indexes too)."""
    from hbmforge.numerics.sparse import pair_fire_sums, pair_slots
    rng = np.random.default_rng(3)
    lanes, g = 32, 16
    for ternary in (False, True):
        for _ in range(20):
            bits = rng.integers(0, 2, 4 * lanes).astype(np.uint8)
            dense = decode_sparse24_stream(bits, 2 * lanes, 2, ternary).reshape(2, lanes)
            x = rng.integers(-128, 128, (3, lanes))
            sums = pair_fire_sums(x, *pair_slots(bits, lanes, ternary), g)
            for h in range(2):
                want = (x * dense[h]).reshape(3, -1, g).sum(axis=2)
                assert np.array_equal(sums[:, h::2], want)


def test_sparse24_lists_the_formats_with_a_2_4_code():
    lay = layout(weight_bits=[2, 4, "ternary"], sparse24=[2, "ternary"])
    assert set(lay.mm.sparse24_formats) == {2, "ternary"}
    assert sorted(lay.matmul.weight_codes) == [2, 3, 4, 2 | SPARSE24, 3 | SPARSE24]
    assert weight_code(2, lay, sparse24=True) == 2 | SPARSE24
    with pytest.raises(ValueError, match=r"takes 2:4 weights of \[.*\] only, not 4"):
        weight_code(4, lay, sparse24=True)
    for bad in ([8], [2, 2], []):
        with pytest.raises(Exception, match="sparse24 must be true, false or a list of distinct formats"):
            layout(weight_bits=[2, 4, "ternary"], sparse24=bad)
