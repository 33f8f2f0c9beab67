"""The vector engine's golden model: each stage against float math (measured bounds) and against
the verified golden models it reuses; whole descriptors through numerics.program.execute."""
from __future__ import annotations

import math

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, Opcode, VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from hbmforge.engines.attention import attention_geometry
from hbmforge.layout import DesignLayout
from hbmforge.numerics import vector as V
from hbmforge.numerics.attention import quantize_kv
from hbmforge.numerics.nonlinear import norm_int, gelu_ref, silu_ref
from hbmforge.numerics.program import SparseMemory, execute


@pytest.fixture(scope="module")
def layout():
    return DesignLayout(parse_config(tiny_vector_config_dict()))


def rng_for(seed):
    return np.random.default_rng(seed)


# -- stages ------------------------------------------------------------------------------------

def test_shift_sat_rounds_right_shifts_and_saturates_left_shifts():
    p = np.array([5, -5, 6, -6, 3, -1, 1 << 45, -(1 << 45), 1, -1, 0])
    s = np.array([1, 1, 2, 2, -2, -31, 10, 10, -31, -31, -31])
    got = V.shift_sat(p, s)
    assert got.tolist() == [3, -2, 2, -1, 12, V.I32_MIN, V.I32_MAX, V.I32_MIN, V.I32_MAX, V.I32_MIN, 0]


@pytest.mark.parametrize("amax, a, e", [(0, 0, 0), (1, 1, 0), (65535, 65535, 0), (65536, 32768, 1),
                                        (65537, 32769, 1), (1 << 31, 32768, 16), ((1 << 31) - 1, 32768, 16)])
def test_row_scale_covers_the_absmax_with_a_16_bit_mantissa(amax, a, e):
    ga, ge = V.row_scale(np.array([amax]))
    assert (int(ga[0]), int(ge[0])) == (a, e)
    assert a << e >= amax


def test_act8_quantization_is_absmax_rounding_within_one_step():
    rng = rng_for(1)
    for scale in (1e1, 1e4, 1e8, 2e9):
        v = np.clip(np.rint(rng.normal(0, scale, (64, 96))), V.I32_MIN, V.I32_MAX).astype(np.int64)
        a, e = V.row_scale(np.abs(v).max(axis=1))
        q = V.quantize_group(v, a, e)
        step = (a.astype(np.float64) * 2.0 ** e) / 127
        ideal = v / step[:, None]
        assert np.all(np.abs(q) <= 127)
        bound = 0.5 + 127 * 2.0 ** -15                         # half a step + the reciprocal's 2**-15
        assert np.max(np.abs(q - ideal)) <= bound
        # the stored scale is exact: q * a * 2**e / 127 reconstructs v to that bound (in steps)
        assert np.max(np.abs(q * step[:, None] - v) / step[:, None]) <= bound


def test_dequant_error_is_half_an_lsb_plus_the_multiplier_rounding():
    rng = rng_for(2)
    x = rng.integers(-(1 << 31), 1 << 31, (16, 64))
    amax = rng.integers(1, 1 << 31, 16)
    a, e = V.row_scale(amax)
    real = np.exp(rng.uniform(math.log(1e-9), math.log(1e-4), 64))
    cols = V.column_multipliers(real)
    v = V.dequant(x, VectorIn.ACC32, cols=cols, a=a, e=e)
    exact = x * (a * 2.0 ** e)[:, None] * real[None, :]
    ok = np.abs(exact) < 2 ** 31 - 1
    rel = 2.0 ** -14                                           # c < 2**15, normalized to >= 2**14
    assert np.all(np.abs(v - exact)[ok] <= 0.5 + rel * np.abs(exact)[ok] + 1e-6)
    assert np.all(v[~ok] == np.sign(exact[~ok]) * (2 ** 31) - (exact[~ok] > 0))


def test_rope_is_the_float_rotation_within_the_table_rounding():
    rng = rng_for(3)
    hd, pos = 16, np.array([0, 1, 7, 500])
    x = rng.integers(-(1 << 20), 1 << 20, (4, 32))
    table = V.rope_table(600, hd, 10000.0)[pos]
    got = V.rope(x, table, hd)
    inv = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]
    h = x.reshape(4, 2, hd // 2, 2).astype(np.float64)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    ref = np.stack([h[..., 0] * c - h[..., 1] * s, h[..., 0] * s + h[..., 1] * c], axis=-1).reshape(4, 32)
    # each table entry is within 2**-15 of cos/sin: |err| <= 2 * 2**-15 * |x| + 1/2
    bound = 0.5 + 2 * 2.0 ** -15 * np.abs(x).reshape(4, 2, hd // 2, 2).max(axis=-1).repeat(2, axis=-1).reshape(4, 32)
    assert np.all(np.abs(got - ref) <= bound + 1e-9)


def test_gelu_and_silu_in_the_engine_format_are_within_a_few_lsb_of_float():
    for fn, ref, act in (("gelu", gelu_ref, VectorAct.GELU), ("silu", silu_ref, VectorAct.SILU)):
        x = np.arange(-(12 << 16), 12 << 16, 37, dtype=np.int64)
        y = V.activate(x, act) * 2.0 ** -16
        err = np.abs(y - ref(x * 2.0 ** -16))
        assert err.max() < 4e-4, (fn, err.max())               # measured 2.3e-4 (gelu), 2.7e-4 (silu)


def test_swiglu_product_rounds_once():
    rng = rng_for(4)
    a = rng.integers(-(20 << 16), 20 << 16, 4000)
    b = rng.integers(-(20 << 16), 20 << 16, 4000)
    got = V.combine(V.activate(a, VectorAct.SILU), b, VectorCombine.MUL) * 2.0 ** -16
    ref = silu_ref(a * 2.0 ** -16) * (b * 2.0 ** -16)
    assert np.max(np.abs(got - ref)) < 4e-4 * 20 + 2 ** -16


@pytest.mark.parametrize("center", [False, True])
def test_norm_rows_is_the_verified_norm_golden_with_runtime_constants(center):
    rng = rng_for(5 + center)
    D = 64
    c = V.norm_constants(D, 1e-5, in_frac=16, gamma_frac=20, out_frac=16, center=center)
    x = np.clip(np.rint(rng.normal(3 if center else 0, 2.0, (12, D)) * 2 ** 16), V.I32_MIN, V.I32_MAX).astype(np.int64)
    x[3] = 0
    x[4] = V.I32_MAX
    gamma = np.rint(rng.uniform(-2, 2, D) * 2 ** 20).astype(np.int64)
    beta = np.rint(rng.normal(0, 1, D) * 2 ** 16).astype(np.int64) if center else None
    got = V.norm_rows(x, gamma, beta, norm=VectorNorm.LAYER if center else VectorNorm.RMS,
                      eps_q=c["eps_q"], eps_shift=c["eps_shift"], norm_shift=c["norm_shift"])
    want = norm_int(x, gamma, beta, c["spec"])
    assert np.array_equal(got, want)


def test_qrec_multiplier_is_the_score_scale_to_16_bits():
    rng = rng_for(6)
    amax = rng.integers(1, 1 << 31, 200)
    a, e = V.row_scale(amax)
    real = np.exp(rng.uniform(math.log(1e-12), math.log(1e-8), 200))
    kc, ks = V.head_dyadic(real)
    mult, shift = V.qrec_multiplier(a, e, kc, ks)
    want = a * 2.0 ** e * real
    got = mult * 2.0 ** -shift.astype(np.float64)
    inside = (shift > 0) & (shift < 63)
    assert inside.mean() > 0.9
    assert np.max(np.abs(got / want - 1)[inside]) < 2 ** -14
    assert np.all(mult < 1 << 16)


@pytest.mark.parametrize("bits", [8, 4])
def test_kv_quantization_matches_the_hosts_float_quantizer(bits):
    rng = rng_for(7 + bits)
    G, frac = 8, 16
    x = rng.normal(0, 1.5, (300, 2, 16))
    x[:, :, 3] *= 5
    head_scale = np.abs(x).max(axis=(0, 2)) * 2 / ((1 << (bits - 1)) - 1) / (1 << 15)
    consts = V.kv_constants(head_scale, bits, frac_bits=frac)
    v = np.rint(x * 2 ** frac).astype(np.int64)
    mism = 0
    for h in range(2):
        c = int(consts[h])
        km, ks, hm, hs = c & 0xFFFF, (c >> 16) & 0x3F, (c >> 32) & 0xFFFF, (c >> 48) & 0x3F
        q, mant = V.kv_quantize(v[:, h].reshape(300, 2, G), km, ks, hm, hs, bits)
        ref_q = [quantize_kv((v[t, h] * 2.0 ** -frac)[None], bits, G, head_scale[h:h + 1]) for t in range(300)]
        rq = np.stack([r[0][0] for r in ref_q]).reshape(300, 2, G)
        rm = np.stack([r[1][0] for r in ref_q]).astype(np.int64)
        assert np.max(np.abs(mant - rm)) <= 1                  # the mantissa rounds the same value
        same = mant == rm
        mism += int(np.count_nonzero(np.abs(q - rq)[same] > 0))
        assert np.max(np.abs(q - rq)[same]) <= 1
        deq = q * (mant[..., None] * head_scale[h])
        assert np.max(np.abs(deq - x[:, h].reshape(300, 2, G))) <= 0.5 * (mant.max() * head_scale[h]) * 1.01
    assert mism < 0.01 * v.size


# -- whole descriptors -------------------------------------------------------------------------

def _descriptor(**f):
    d = {name: 0 for name in ("m", "dim", "a_fmt", "a_addr", "a_stride", "a_scale", "a_cols", "b_fmt", "b_addr",
                              "b_stride", "b_cols", "bias", "bias_addr", "act", "combine", "norm", "gamma_addr",
                              "beta_addr", "eps_q", "eps_shift", "norm_shift", "rope", "rope_addr", "pos0",
                              "out_fmt", "y_addr", "y_stride", "y_scale", "consts_addr", "kv_bits", "bt_addr",
                              "pool", "port")}
    d.update(f, op=Opcode.VECTOR)
    return d


def _blocked(x, R):
    m, dim = x.shape
    nb = -(-m // R)
    full = np.zeros((nb * R, dim), dtype=np.int64)
    full[:m] = x
    return full.reshape(nb, R, dim).transpose(0, 2, 1).reshape(-1).astype("<i4").tobytes()


def _run(layout, mem, *descs):
    raw = b"".join(layout.encode_descriptor(d) for d in descs)
    mem.write(0x100000, raw)
    return execute(mem, 0x100000, len(descs), layout)


def test_residual_add_of_blocked_int32_is_exact_and_pads_rows_with_zero(layout):
    rng = rng_for(10)
    R, m, dim = layout.mm.rows, 5, 32
    x = rng.integers(-(1 << 30), 1 << 30, (m, dim))
    r = rng.integers(-(1 << 30), 1 << 30, (m, dim))
    mem = SparseMemory()
    mem.write(0x1000, _blocked(x, R))
    mem.write(0x8000, _blocked(r, R))
    res = _run(layout, mem, _descriptor(m=m, dim=dim, a_fmt=VectorIn.RES32, a_addr=0x1000, a_stride=R * dim * 4,
                                        b_fmt=VectorIn.RES32, b_addr=0x8000, b_stride=R * dim * 4,
                                        combine=VectorCombine.ADD, out_fmt=VectorOut.RES32, y_addr=0x8000,
                                        y_stride=R * dim * 4))
    assert res.ok
    nb = -(-m // R)
    got = np.frombuffer(mem.read(0x8000, nb * R * dim * 4), "<i4").reshape(nb, dim, R).transpose(0, 2, 1)
    want = np.zeros((nb * R, dim), np.int64)
    want[:m] = x + r
    assert np.array_equal(got.reshape(nb * R, dim), want)
    assert res.bytes_written[0] == nb * R * dim * 4


def test_norm_then_act8_rows_and_scale_records(layout):
    rng = rng_for(11)
    R, m, dim = layout.mm.rows, 3, 64
    W8 = layout.word_bytes
    x = np.rint(rng.normal(0, 3, (m, dim)) * 2 ** 16).astype(np.int64)
    gamma = np.rint(rng.uniform(0.5, 1.5, dim) * 2 ** 20).astype(np.int64)
    c = V.norm_constants(dim, 1e-5, in_frac=16, gamma_frac=20, out_frac=16, center=False)
    mem = SparseMemory()
    mem.write(0x1000, _blocked(x, R))
    mem.write(0x4000, V.pack_u32(gamma & 0xFFFFFFFF, W8))
    res = _run(layout, mem, _descriptor(m=m, dim=dim, a_fmt=VectorIn.RES32, a_addr=0x1000, a_stride=R * dim * 4,
                                        norm=VectorNorm.RMS, gamma_addr=0x4000, eps_q=c["eps_q"],
                                        eps_shift=c["eps_shift"], norm_shift=c["norm_shift"],
                                        out_fmt=VectorOut.ACT8, y_addr=0x6000, y_scale=0x7000))
    assert res.ok, res.detail
    q = np.frombuffer(mem.read(0x6000, m * dim), np.int8).reshape(m, dim).astype(np.int64)
    a, e = V.unpack_scale_records(mem.read(0x7000, V.vector_geometry(layout).scale_bytes(m)), m, R, W8)
    y = q * (a * 2.0 ** e / 127)[:, None] * 2.0 ** -16
    xf = x * 2.0 ** -16
    ref = xf / np.sqrt((xf ** 2).mean(axis=1, keepdims=True) + 1e-5) * gamma * 2.0 ** -20
    cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999


def test_kv_append_writes_values_and_read_modify_writes_mantissas(layout):
    rng = rng_for(12)
    geom = attention_geometry(layout)
    W8, hd, P = layout.word_bytes, geom.head_dim, geom.page_tokens
    kvh, bits, m = 2, 8, 3
    v = rng.integers(-(4 << 16), 4 << 16, (m, kvh * hd))
    consts = V.kv_constants(np.array([4.0, 2.0]) / 127 / (1 << 15) * 2, bits, frac_bits=16)
    mem = SparseMemory()
    pages = [5, 2]
    mem.write(0x2000, np.array(pages, "<u4").tobytes())
    pool = 0x40000
    sentinel = bytes(range(1, 1 + geom.page_bytes(bits, kvh))) * 8
    mem.write(pool, sentinel)
    mem.write(0x1000, np.array(v, "<i4").tobytes())
    mem.write(0x3000, np.array([int(c) for c in consts], "<u8").tobytes())
    mem.write(0x5000, V.pack_u32(np.full(kvh * hd, 1), W8))              # column multiplier 1 * 2**0
    pos0 = P - 2                                       # crosses from logical page 0 into page 1
    res = _run(layout, mem, _descriptor(m=m, dim=kvh * hd, a_fmt=VectorIn.ROWS32, a_addr=0x1000,
                                        a_stride=kvh * hd * 4, a_cols=0x5000, out_fmt=VectorOut.KV,
                                        consts_addr=0x3000, kv_bits=bits, bt_addr=0x2000, pool=pool, port=1,
                                        pos0=pos0))
    assert res.ok, res.detail
    for r in range(m):
        pos = pos0 + r
        page, slot = pages[pos // P], pos % P
        for h in range(kvh):
            c = int(consts[h])
            q, mant = V.kv_quantize(v[r, h * hd:(h + 1) * hd].reshape(-1, geom.group_size), c & 0xFFFF,
                                    (c >> 16) & 0x3F, (c >> 32) & 0xFFFF, (c >> 48) & 0x3F, bits)
            base = pool + page * geom.page_bytes(bits, kvh) + h * geom.head_area(bits)
            vals = np.frombuffer(mem.read(base + geom.scale_area + slot * geom.value_bytes(bits), hd), np.int8)
            assert np.array_equal(vals, q.reshape(-1))
            ng = geom.groups
            assert np.array_equal(np.frombuffer(mem.read(base + slot * ng * 2, ng * 2), "<u2"), mant)
    # a mantissa word's other bytes keep their old contents (the read-modify-write)
    page0 = pool + 5 * geom.page_bytes(bits, kvh)
    slot = pos0
    word = (slot * geom.groups * 2) // W8 * W8
    before = sentinel[5 * geom.page_bytes(bits, kvh) + word: 5 * geom.page_bytes(bits, kvh) + word + W8]
    after = mem.read(page0 + word, W8)
    off = slot * geom.groups * 2 - word
    assert after[:off] == before[:off]


def test_program_execute_reports_vector_errors_by_code(layout):
    mem = SparseMemory()
    res = _run(layout, mem, _descriptor(m=1, dim=20, a_fmt=VectorIn.RES32))
    assert res.error == ErrorCode.VEC_SHAPE
    res = _run(layout, mem, _descriptor(m=1, dim=32, a_fmt=VectorIn.RES32, act=3))
    assert res.error == ErrorCode.VEC_FORMAT
    res = _run(layout, mem, _descriptor(m=1, dim=32, a_fmt=VectorIn.RES32, norm=VectorNorm.RMS))
    assert res.error == ErrorCode.VEC_NORM
    res = _run(layout, mem, _descriptor(m=1, dim=32, a_fmt=VectorIn.RES32, out_fmt=VectorOut.KV, kv_bits=8, port=3))
    assert res.error == ErrorCode.VEC_KV
    res = _run(layout, mem, _descriptor(m=1, dim=32, a_fmt=VectorIn.RES32, y_addr=4))
    assert res.error == ErrorCode.MISALIGNED
