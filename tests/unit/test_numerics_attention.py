"""Attention golden model: approximation errors against float64, masks, cache packing, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hbmforge.encodings import ErrorCode
from hbmforge.engines.attention import (attention_geometry, job_ranges, key_limit, segments, token_ranges,
                                       validate_attention, visible)
from hbmforge.config import parse_config
from hbmforge.layout import DesignLayout
from hbmforge.numerics.attention import (AttentionCase, _read_segment, attention_float, dequantize_kv,
                                         decode_attention_rel_err, encoder_attention_rel_err, kv_head_scale,
                                         mask_matrix, pack_block_table, quantize_kv, score_multiplier,
                                         write_kv_token)
from hbmforge.numerics.program import SparseMemory
from hbmforge.numerics.softmax import (exp2_max_abs_err, exp2_max_rel_err, exp2_neg, reciprocal,
                                       reciprocal_max_rel_err, softmax_max_abs_err)

from designs import tiny_config_dict


def _layout(**att):
    cfg = tiny_config_dict()
    a = {"kind": "attention", "head_dim": 32, "rows": 4, "kv_bits": [4, 8], "kv_group_size": 8,
         "page_tokens": 4, "max_context": 256}
    a.update(att)
    cfg["engines"].append(a)
    return DesignLayout(parse_config(cfg))


# -- units ------------------------------------------------------------------------------------

def test_exp2_error_bounds():
    assert exp2_neg(0) == 1 << 15
    assert exp2_neg(256) == 1 << 14
    assert exp2_neg(17 << 8) == 0
    assert exp2_max_rel_err() < 0.004          # true value >= 2**-8
    assert exp2_max_abs_err() < 2 ** -15


def test_reciprocal_error_bound():
    y, n = reciprocal(1 << 15)
    assert n == 16 and abs(y - (1 << 17)) <= 4
    assert reciprocal(0) == (0, 0)
    assert reciprocal_max_rel_err(samples=5000) < 2 ** -15


def test_softmax_probabilities_within_1_over_256_of_float():
    assert softmax_max_abs_err(trials=60) <= 1 / 256


def test_decode_attention_relative_error_kv8_and_kv4():
    kv8 = decode_attention_rel_err(8, ctx_len=512)
    kv4 = decode_attention_rel_err(4, ctx_len=512)
    assert kv8 <= 0.02, kv8
    assert kv4 <= 0.25, kv4
    assert decode_attention_rel_err(8, ctx_len=300, window=64, sink=4) <= 0.02


def test_prefill_golden_close_to_float_with_masks():
    rng = np.random.default_rng(3)
    case = AttentionCase(rng, n_q=12, ctx_len=40, kv_heads=2, q_per_kv=2, head_dim=32, group_size=8, kv_bits=8)
    for window, sink in ((0, 0), (8, 0), (8, 3)):
        got = case.golden(rows=4, page_tokens=4, window=window, sink=sink)
        ref = case.reference(window=window, sink=sink)
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02


# -- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("window,sink", [(0, 0), (5, 0), (5, 2), (3, 9), (20, 4)])
def test_token_ranges_are_exactly_the_union_of_row_masks(window, sink):
    ctx = 37
    for p_min in range(0, ctx):
        for p_max in range(p_min, min(ctx, p_min + 5)):
            union = mask_matrix(range(p_min, p_max + 1), ctx, window, sink).any(axis=0)
            got = np.zeros(ctx, bool)
            for lo, hi in token_ranges(p_min, p_max, window, sink):
                assert not got[lo:hi].any()
                got[lo:hi] = True
            np.testing.assert_array_equal(got, union)


def test_segments_never_cross_pages():
    for j0, n in segments([(0, 3), (6, 19)], 4):
        assert n >= 1 and j0 // 4 == (j0 + n - 1) // 4
    assert segments([(0, 3), (6, 19)], 4) == [(0, 3), (6, 2), (8, 4), (12, 4), (16, 3)]


def test_visible_rules():
    assert visible(10, 10, 0, 0) and not visible(10, 11, 0, 0)
    assert visible(10, 6, 5, 0) and not visible(10, 5, 5, 0)
    assert visible(10, 1, 5, 2) and not visible(10, 2, 5, 2)


def test_bidirectional_rows_see_exactly_the_valid_keys():
    d = {"ctx_len": 12, "window": 0, "sink": 0, "mode": 1, "valid_len": 9}
    assert key_limit(d) == 9 and key_limit({**d, "valid_len": 0}) == 12
    assert key_limit({**d, "mode": 0, "valid_len": 0}) is None
    assert job_ranges(d, 0, 3) == job_ranges(d, 10, 11) == [(0, 9)]
    mask = mask_matrix(range(12), 12, 0, 0, keys=9)
    assert mask[:, :9].all() and not mask[:, 9:].any()        # padded query rows too see the valid keys
    assert visible(0, 8, 0, 0, keys=9) and not visible(11, 9, 0, 0, keys=9)


def test_bidirectional_golden_matches_float_and_differs_from_causal():
    rng = np.random.default_rng(4)
    case = AttentionCase(rng, n_q=20, ctx_len=20, kv_heads=2, q_per_kv=2, head_dim=32, group_size=8, kv_bits=8)
    got = case.golden(rows=4, page_tokens=4, bidirectional=True, valid_len=13)
    ref = case.reference(bidirectional=True, valid_len=13)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02
    # padded keys change nothing: the float reference over the 13 valid tokens only
    short = attention_float(case.qf, case.kf[:13], case.vf[:13], ctx_len=13, q_per_kv=2, bidirectional=True)
    np.testing.assert_allclose(ref, short, rtol=1e-12, atol=1e-12)
    causal = case.golden(rows=4, page_tokens=4)
    assert np.abs(causal[:12] - got[:12]).max() > 0.05       # the mask really differs
    assert encoder_attention_rel_err(8, tokens=32, valid_len=27, heads=1, head_dim=32, group_size=8,
                                     page_tokens=4, rows=4) < 0.02


# -- cache packing ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_on_append_round_trips_through_the_page_layout(bits):
    lay = _layout()
    geom = attention_geometry(lay)
    rng = np.random.default_rng(bits)
    kvh = 3
    x = rng.normal(0, 1, (6, kvh, 32))
    hs = kv_head_scale(np.abs(x).max(axis=(0, 2)), bits)
    mem = SparseMemory()
    pool, page = 0x10000, 5
    toks = []
    for slot in range(4):
        q, mant = quantize_kv(x[slot], bits, 8, hs)
        write_kv_token(mem, geom, pool, page, slot, q, mant, bits)
        toks.append((q, mant))
    for h in range(kvh):
        vals, mant, _ = _read_segment(mem, geom, pool, page, h, kvh, bits, 1, 3)
        for t in range(3):
            np.testing.assert_array_equal(vals[t], toks[t + 1][0][h])
            np.testing.assert_array_equal(mant[t], toks[t + 1][1][h])
    q, mant = toks[0]
    deq = dequantize_kv(q, mant, hs, 8)
    step = np.repeat(mant * hs[:, None], 8, axis=1)
    assert np.all(np.abs(deq - x[0]) <= 0.5 * step + 1e-12)


def test_block_table_and_score_multiplier():
    assert pack_block_table([3, 1, 2], 8) == bytes([3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]) + bytes(4)
    mult, shift = score_multiplier(0.01, 0.002, 128)
    real = 0.01 * 0.002 / math.sqrt(128) * math.log2(math.e) * 256
    assert 1 << 15 <= mult[0] < 1 << 16
    assert abs(mult[0] / 2.0 ** shift[0] / real - 1) < 2 ** -15


# -- validation ---------------------------------------------------------------------------------

def test_validate_attention_error_codes():
    lay = _layout(max_context=64)
    good = {"head_dim": 32, "kv_heads": 2, "q_per_kv": 2, "n_q": 1, "ctx_len": 10, "window": 0, "sink": 0,
            "kv_bits": 8, "q_addr": 64, "bt_addr": 128, "k_pool": 4096, "v_pool": 8192, "o_addr": 256}
    assert validate_attention(good, lay) == (0, "")
    assert validate_attention({**good, "mode": 1, "valid_len": 10}, lay) == (0, "")
    assert validate_attention({**good, "mode": 1}, lay) == (0, "")
    bad = [({"head_dim": 64}, ErrorCode.BAD_HEAD_DIM), ({"kv_heads": 0}, ErrorCode.BAD_HEADS),
           ({"q_per_kv": 1025}, ErrorCode.BAD_HEADS), ({"kv_heads": 64, "q_per_kv": 32}, ErrorCode.BAD_HEADS),
           ({"kv_bits": 2}, ErrorCode.BAD_KV_BITS), ({"ctx_len": 65}, ErrorCode.BAD_CONTEXT),
           ({"n_q": 11}, ErrorCode.BAD_CONTEXT), ({"n_q": 0}, ErrorCode.BAD_CONTEXT),
           ({"window": 65}, ErrorCode.BAD_MASK), ({"sink": 4}, ErrorCode.BAD_MASK),
           ({"bt_addr": 130}, ErrorCode.MISALIGNED), ({"head_dim": 0, "bt_addr": 3}, ErrorCode.BAD_HEAD_DIM),
           ({"mode": 2}, ErrorCode.BAD_ATTN_MODE), ({"mode": 1, "valid_len": 11}, ErrorCode.BAD_ATTN_MODE),
           ({"valid_len": 3}, ErrorCode.BAD_ATTN_MODE), ({"mode": 1, "window": 4}, ErrorCode.BAD_ATTN_MODE),
           ({"mode": 1, "window": 4, "sink": 2}, ErrorCode.BAD_ATTN_MODE),
           ({"mode": 1, "valid_len": 11, "q_addr": 3}, ErrorCode.BAD_ATTN_MODE)]
    for change, code in bad:
        got, why = validate_attention({**good, **change}, lay)
        assert got == code, (change, got, why)
        assert why
    assert {int(c) for c in lay.error_names} >= {8, 9, 10, 11, 12, 55}
    assert {8, 9, 10, 11, 12, 55} <= {int(c) for c in lay.family_of(2).errors}
