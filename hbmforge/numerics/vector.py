"""Golden model of the vector engine (bit-exact with generators/vector) and its host helpers.

One VECTOR descriptor (:mod:`hbmforge.engines.vector`) computes, per row of ``dim`` elements
(widths: every stage saturates to int32, ``sat32``; ``rsr`` = rshift_round, round half up)::

    deq:   RES32  v = x
           ACC32  v = shift_sat(x * a[row] * c[col], s[col] - e[row])     (row scale a*2^e, column c*2^-s)
           ROWS32 v = shift_sat(x * c[col], s[col])
    bias:  v = sat32(v + bias[col])
    act:   v = activation_int(v)            GELU/SiLU tail tables, int32 with ACT_FRAC = 16 fraction bits
    comb:  ADD v = sat32(v + deq(B));  MUL v = sat32(rsr(v * deq(B), ACT_FRAC))
    rope:  per head, pairs (2i, 2i+1) at position p:  (cos, sin) = table[p][i] (int16, ROPE_FRAC = 14)
           y0 = sat32(rsr(x0*cos - x1*sin, 14)),  y1 = sat32(rsr(x0*sin + x1*cos, 14))
    norm:  exactly hbmforge.numerics.nonlinear.norm_int (RMS: S1 = 0) with runtime constants:
           V = ((D*S2 - S1^2) << eps_shift) + eps_q;  (M, e) = rsqrt(V)  (RSQRT_FRAC = 18)
           y = sat32(rsr((D*x - S1) * M * gamma[col], norm_shift + e) + beta[col])

``shift_sat(p, s)`` is ``sat32(rsr(p, s))`` for ``s >= 0`` and ``sat32(p << -s)`` otherwise.

Records in memory (unused bits ignored, so any memory content gives a defined result):
column multiplier u32 ``c`` = bits 0-14, ``s`` = bits 16-21; row scale u32 ``a`` = bits 0-15,
``e`` = bits 16-20; QREC head constant u64 ``kc`` = bits 0-15, ``ks`` = bits 16-23; KV head
constant u64 ``km`` 0-15, ``ks`` 16-21, ``hm`` 32-47, ``hs`` 48-53.

Outputs:

* **RES32**: int32, blocked like the matmul's output (row block ``b``, column ``n``, row ``r`` at
  element ``(b * dim + n) * R + r`` from ``y_addr + b * y_stride``; rows beyond ``m`` are 0).
* **ACT8** (a group = the whole row): ``A = max |v|``; the row scale ``(a, e)``: ``a = A, e = 0``
  if ``A < 2**16``, else ``e = bitlen(A) - 16``, ``a = ceil(A / 2**e)`` (``a * 2**e >= A``);
  ``(Y, n) = reciprocal(a)`` (the attention engine's unit: ``1/a ~= Y / 2**(n+16)``);
  ``q = clamp(rsr(v * 127 * Y, n + 16 + e), -127, 127)``. int8 rows at ``y_addr + m * dim``;
  the scale record ``a | e << 16`` (u32) of row ``m`` at ``y_scale + (m // R) * SB + (m % R) * 4``
  (``SB`` = 4R bytes rounded up to a word). The row's real scale is ``a * 2**e / 127`` units of v.
* **QREC** (a group = one head): q as ACT8 per head; score multiplier from the head constant
  ``(kc, ks)``: ``P = a * kc``, ``t = max(0, bitlen(P) - 16)``, ``mult = rsr(P, t)`` (2**16 -> 2**15,
  t + 1), ``shift = ks - e - t`` (below 0: ``mult = 65535, shift = 0``; above 63:
  ``mult = rsr(mult, min(shift - 63, 31))``, ``shift = 63``). Records as :func:`hbmforge.numerics.attention.pack_q_records`.
* **KV** (a group = ``kv_group_size`` elements of one KV head): ``A`` = group absmax,
  ``mant = clamp(rsr(A * km, ks), 1, 65535)``, ``(Y, n) = reciprocal(mant)``,
  ``R = rsr(hm * Y, 10)``, ``q = clamp(rsr(v * R, min(hs + n + 6, 63)), -qmax, qmax)``; written into the
  token's page slot (values: one record; mantissas: whole words, or a read-modify-write of the
  one word that holds them) as :func:`hbmforge.numerics.attention.write_kv_token` lays them out.
"""
from __future__ import annotations

import math

import numpy as np

from ..encodings import VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from ..engines.attention import attention_geometry
from ..engines.vector import (ACT_FRAC, ACT_SEG_BITS, ACT_WIDTH, COL_MULT_BITS, MAX_COL_SHIFT, ROPE_FRAC,
                              RSQRT_FRAC, SCALE_MANT_BITS, vector_geometry)
from .attention import pack_kv_token
from .nonlinear import ActivationSpec, NormSpec, RsqrtSpec, _rsqrt_scalar, activation_int
from .softmax import reciprocal

__all__ = [
    "I32_MIN", "I32_MAX", "sat32", "shift_sat", "dequant", "act_spec", "activate", "combine", "rope",
    "norm_rows", "norm_constants", "row_scale", "quantize_group", "qrec_multiplier", "kv_quantize",
    "run_vector", "rope_table", "pack_rope_table", "column_multipliers", "pack_u32", "head_dyadic",
    "qrec_constants", "kv_constants", "KV_MAX_KS", "KV_MAX_HS", "pack_scale_records", "unpack_scale_records", "pack_blocked", "unpack_blocked", "rsqrt_in_bits",
]

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
KV_MAX_KS = 62          # mant = rsr(A * km, ks): A * km < 2**47
KV_MAX_HS = 40          # q = rsr(v * R, hs + n + 6) with n <= 16: the shift stays <= 62


# -- element stages ---------------------------------------------------------------------------------

def sat32(v) -> np.ndarray:
    return np.clip(np.asarray(v, dtype=np.int64), I32_MIN, I32_MAX)


def _rsr(v: np.ndarray, s) -> np.ndarray:
    """rshift_round on int64 arrays, ``s >= 0`` (array or int); the caller bounds ``v + 2**(s-1)``."""
    s = np.asarray(s, dtype=np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return (v + half) >> s


def shift_sat(p, s) -> np.ndarray:
    """``sat32(rsr(p, s))`` for ``s >= 0``, ``sat32(p << -s)`` for ``s < 0`` (``|p| < 2**62``)."""
    p = np.asarray(p, dtype=np.int64)
    s = np.broadcast_to(np.asarray(s, dtype=np.int64), p.shape)
    right = sat32(_rsr(p, np.maximum(s, 0)))
    k = np.maximum(-s, 0)
    hi, lo = I32_MAX >> k, I32_MIN >> k
    left = np.where(p > hi, I32_MAX, np.where(p < lo, I32_MIN, np.left_shift(np.clip(p, lo, hi), k)))
    return np.where(s >= 0, right, left)


def dequant(x, fmt, *, cols=None, a=None, e=None) -> np.ndarray:
    """Input stage of one operand: ``x`` int32 ``[rows, dim]``; ``cols`` u32 column records
    ``c | s << 16`` [dim]; ``a``/``e`` the row scales [rows] (ACC32)."""
    x = np.asarray(x, dtype=np.int64)
    if fmt == VectorIn.RES32:
        return x
    cols = np.asarray(cols, dtype=np.int64)
    c, s = cols & 0x7FFF, (cols >> 16) & 0x3F
    if fmt == VectorIn.ROWS32:
        return shift_sat(x * c[None, :], s[None, :])
    a = np.asarray(a, dtype=np.int64)[:, None]
    e = np.asarray(e, dtype=np.int64)[:, None]
    return shift_sat(x * a * c[None, :], s[None, :] - e)


def act_spec(function: str) -> ActivationSpec:
    """The engine's GELU/SiLU unit: int32 in and out, ``ACT_FRAC`` fraction bits."""
    return ActivationSpec(function, ACT_WIDTH, ACT_FRAC, ACT_SEG_BITS)


def activate(v, act) -> np.ndarray:
    if act == VectorAct.NONE:
        return np.asarray(v, dtype=np.int64)
    return activation_int(v, act_spec("gelu" if act == VectorAct.GELU else "silu"))


def combine(v, b, mode) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    if mode == VectorCombine.NONE:
        return v
    b = np.asarray(b, dtype=np.int64)
    if mode == VectorCombine.ADD:
        return sat32(v + b)
    return sat32(_rsr(v * b, ACT_FRAC))


def rope(v, table, head_dim: int) -> np.ndarray:
    """Rotate pairs ``(2i, 2i+1)`` of every head; ``table`` u32 ``[rows, head_dim / 2]`` (cos | sin << 16)."""
    v = np.asarray(v, dtype=np.int64)
    rows, dim = v.shape
    t = np.asarray(table, dtype=np.int64)
    cos = ((t & 0xFFFF) ^ 0x8000) - 0x8000
    sin = (((t >> 16) & 0xFFFF) ^ 0x8000) - 0x8000
    h = v.reshape(rows, dim // head_dim, head_dim // 2, 2)
    x0, x1 = h[..., 0], h[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    y0 = sat32(_rsr(x0 * c - x1 * s, ROPE_FRAC))
    y1 = sat32(_rsr(x0 * s + x1 * c, ROPE_FRAC))
    return np.stack([y0, y1], axis=-1).reshape(rows, dim)


def rsqrt_in_bits(max_dim: int) -> int:
    """Width of the norm's V for rows up to ``max_dim`` int32 elements (eps_shift <= 32, eps_q < 2**64)."""
    vmax = ((max_dim * (max_dim << 62)) << 32) + (1 << 64)
    return vmax.bit_length()


def _sum_sq(x: np.ndarray) -> int:
    """Exact sum of squares of int32 values (split in 16-bit halves: no int64 overflow)."""
    hi, lo = x >> 16, x & 0xFFFF
    return (int((hi * hi).sum()) << 32) + (int((hi * lo).sum()) << 17) + int((lo * lo).sum())


def norm_rows(v, gamma, beta, *, norm, eps_q: int, eps_shift: int, norm_shift: int) -> np.ndarray:
    """RMSNorm/LayerNorm of int32 rows ``v [rows, D]`` with the descriptor's constants."""
    v = np.asarray(v, dtype=np.int64)
    rows, D = v.shape
    spec = RsqrtSpec(rsqrt_in_bits(max(D, 1)), RSQRT_FRAC)
    g = np.asarray(gamma, dtype=np.int64).astype(object)
    b = (np.asarray(beta, dtype=np.int64) if norm == VectorNorm.LAYER else np.zeros(D, np.int64)).astype(object)
    out = np.empty_like(v)
    for r in range(rows):
        x = v[r]
        s1 = int(x.sum()) if norm == VectorNorm.LAYER else 0
        s2 = _sum_sq(x)
        var = ((D * s2 - s1 * s1) << eps_shift) + eps_q
        m, e = _rsqrt_scalar(var, spec)
        num = D * x.astype(object) - s1
        p = num * m * g
        sh = norm_shift + e
        y = (p + (1 << (sh - 1))) >> sh if sh > 0 else p
        out[r] = np.clip(y + b, I32_MIN, I32_MAX).astype(np.int64)
    return out


def norm_constants(dim: int, eps: float, *, in_frac: int, gamma_frac: int, out_frac: int,
                   center: bool) -> dict:
    """Descriptor constants of a norm (``eps_q``, ``eps_shift``, ``norm_shift``) and the equivalent
    :class:`NormSpec` (int32 input/gamma/output), from which :func:`norm_int` gives the same results."""
    spec = NormSpec(dim, eps, center, 32, in_frac, 32, gamma_frac, 32, out_frac, RSQRT_FRAC)
    if spec.shift_base < 0:
        raise ValueError(f"norm shift {spec.shift_base} < 0: give gamma more fraction bits (gamma_frac "
                         f"{gamma_frac}, out_frac {out_frac}, eps bits {spec.eps_bits})")
    if 2 * spec.eps_bits > 32 or spec.eps_q >= 1 << 64:
        raise ValueError(f"eps {eps} at {in_frac} input fraction bits needs eps_shift {2 * spec.eps_bits} "
                         "(at most 32); use more input fraction bits")
    return {"eps_q": spec.eps_q, "eps_shift": 2 * spec.eps_bits, "norm_shift": spec.shift_base, "spec": spec}


# -- quantization stages ----------------------------------------------------------------------------

def row_scale(amax) -> tuple[np.ndarray, np.ndarray]:
    """``(a, e)`` of group absmaxes: ``a * 2**e >= A`` with ``a < 2**16`` (``a = A`` below 2**16)."""
    A = np.asarray(amax, dtype=np.int64)
    e = np.maximum(_bit_length(A) - SCALE_MANT_BITS, 0)
    a = (A + (np.left_shift(np.int64(1), e) - 1)) >> e
    top = a >= 1 << SCALE_MANT_BITS
    a = np.where(top, a >> 1, a)
    e = np.where(top, e + 1, e)
    return a, e


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Bit lengths of non-negative integers below 2**53 (frexp is exact there)."""
    return np.frexp(np.asarray(v, dtype=np.float64))[1].astype(np.int64)


def _recip(a) -> tuple[np.ndarray, np.ndarray]:
    flat = np.asarray(a, dtype=np.int64).reshape(-1)
    out = [reciprocal(int(v)) for v in flat]
    return (np.array([o[0] for o in out], dtype=np.int64).reshape(np.shape(a)),
            np.array([o[1] for o in out], dtype=np.int64).reshape(np.shape(a)))


def quantize_group(v, a, e) -> np.ndarray:
    """int8 of ``v [..., n]`` with the group's scale ``(a, e)`` [...]: ``clamp(rsr(v*127*Y, n+16+e))``."""
    v = np.asarray(v, dtype=np.int64)
    Y, n = _recip(a)
    q = _rsr(v * (127 * Y)[..., None], (n + 16 + np.asarray(e, dtype=np.int64))[..., None])
    return np.clip(q, -127, 127)


def qrec_multiplier(a, e, kc, ks) -> tuple[np.ndarray, np.ndarray]:
    """Score multiplier ``(mult, shift)`` of Q rows with scale ``(a, e)`` and head constant ``(kc, ks)``."""
    P = np.asarray(a, dtype=np.int64) * np.asarray(kc, dtype=np.int64)
    t = np.maximum(_bit_length(P) - 16, 0)
    mult = _rsr(P, t)
    top = mult >= 1 << 16
    mult = np.where(top, mult >> 1, mult)
    t = np.where(top, t + 1, t)
    shift = np.asarray(ks, dtype=np.int64) - np.asarray(e, dtype=np.int64) - t
    low = shift < 0
    high = shift > 63
    mult = np.where(low, 65535, np.where(high, _rsr(mult, np.clip(shift - 63, 0, 31)), mult))
    shift = np.where(low, 0, np.where(high, 63, shift))
    zero = P == 0
    return np.where(zero, 0, mult), np.where(zero, 0, shift)


def kv_quantize(v, km, ks, hm, hs, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """One group of K/V values ``v [..., G]`` -> ``(q [..., G], mant [...])`` (see the module docstring)."""
    v = np.asarray(v, dtype=np.int64)
    qmax = (1 << (bits - 1)) - 1
    A = np.abs(v).max(axis=-1)
    mant = np.clip(_rsr(A * np.int64(km), np.int64(ks)), 1, 65535)
    Y, n = _recip(mant)
    R = _rsr(np.int64(hm) * Y, 10)
    q = np.clip(_rsr(v * R[..., None], np.minimum(np.int64(hs) + n + 6, 63)[..., None]), -qmax, qmax)
    return q, mant


# -- memory level -----------------------------------------------------------------------------------

def _i32(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<i4").astype(np.int64)


def _u32(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<u4").astype(np.int64)


def _read_blocked(mem, addr: int, R: int, dim: int) -> np.ndarray:
    """One row block of a blocked int32 buffer -> ``[R, dim]``."""
    return _i32(mem.read(addr, R * dim * 4)).reshape(dim, R).T


def run_vector(mem, d: dict, layout) -> dict:
    """Run one validated VECTOR descriptor against ``mem`` as the engine does: per row block, the
    same reads, the same arithmetic, the same writes (KV: the same read-modify-writes).

    Returns ``bytes_written`` per port (manifest order) and ``stream_bytes_read`` per ``w<i>``.
    """
    g = vector_geometry(layout)
    R = g.rows
    m, D = d["m"], d["dim"]
    written = [0] * len(layout.ports)
    sread = [0] * layout.config.stream_ports
    afmt, bfmt, out = d["a_fmt"], d["b_fmt"], d["out_fmt"]

    def table(addr):
        return _u32(mem.read(addr, g.column_bytes(D)))[:D]

    a_cols = table(d["a_cols"]) if afmt != VectorIn.RES32 else None
    b_cols = table(d["b_cols"]) if bfmt not in (VectorIn.NONE, VectorIn.RES32) else None
    bias = table(d["bias_addr"]).astype(np.int32).astype(np.int64) if d["bias"] else None
    gamma = beta = None
    if d["norm"] != VectorNorm.NONE:
        gamma = table(d["gamma_addr"]).astype(np.int32).astype(np.int64)
        if d["norm"] == VectorNorm.LAYER:
            beta = table(d["beta_addr"]).astype(np.int32).astype(np.int64)
    consts = None
    if out in (VectorOut.QREC, VectorOut.KV):
        consts = np.frombuffer(mem.read(d["consts_addr"], g.consts_bytes(D)), dtype="<u8").astype(object)
    SB = g.scale_block_bytes
    for blk in range(g.blocks(m)):
        r0 = blk * R
        nv = min(R, m - r0)

        def load(fmt, addr, stride):
            if fmt == VectorIn.ROWS32:
                rows = [_i32(mem.read(addr + (r0 + r) * stride, D * 4)) for r in range(nv)]
                return np.stack(rows)
            return _read_blocked(mem, addr + blk * stride, R, D)[:nv]

        x = load(afmt, d["a_addr"], d["a_stride"])
        sa = se = None
        if afmt == VectorIn.ACC32:
            rec = _u32(mem.read(d["a_scale"] + blk * SB, SB))[:nv]
            sa, se = rec & 0xFFFF, (rec >> 16) & 0x1F
        v = dequant(x, afmt, cols=a_cols, a=sa, e=se)
        if bias is not None:
            v = sat32(v + bias[None, :])
        v = activate(v, d["act"])
        if bfmt != VectorIn.NONE:
            xb = load(bfmt, d["b_addr"], d["b_stride"])
            v = combine(v, dequant(xb, bfmt, cols=b_cols, a=sa, e=se), d["combine"])
        if d["rope"]:
            rb = g.rope_row_bytes
            tab = np.stack([_u32(mem.read(d["rope_addr"] + (d["pos0"] + r0 + r) * rb, rb))[:g.head_dim // 2]
                            for r in range(nv)])
            v = rope(v, tab, g.head_dim)
        if d.get("res_out"):            # the value before the norm, as RES32 too (one row per block)
            written[0] += _store_res32(mem, d["res_addr"] + blk * d["y_stride"], v, R)
        if d["norm"] != VectorNorm.NONE:
            v = norm_rows(v, gamma, beta, norm=d["norm"], eps_q=d["eps_q"], eps_shift=d["eps_shift"],
                          norm_shift=d["norm_shift"])
        if out == VectorOut.RES32:
            written[0] += _store_res32(mem, d["y_addr"] + blk * d["y_stride"], v, R)
        elif out == VectorOut.ACT8:
            a, e = row_scale(np.abs(v).max(axis=1))
            q = quantize_group(v, a, e)
            mem.write(d["y_addr"] + r0 * D, q.astype(np.int8).tobytes())
            rec = np.zeros(SB // 4, dtype="<u4")
            rec[:nv] = a | (e << 16)
            mem.write(d["y_scale"] + blk * SB, rec.tobytes())
            written[0] += nv * D + SB
        elif out == VectorOut.QREC:
            written[0] += _store_qrec(mem, d, layout, v, r0, consts)
        else:
            _store_kv(mem, d, layout, v, r0, consts, written, sread)
    return {"bytes_written": written, "stream_bytes_read": sread}


def _store_res32(mem, addr: int, v: np.ndarray, R: int) -> int:
    """One row block of int32 (``v``: its valid rows) in the blocked layout at ``addr``."""
    full = np.zeros((R, v.shape[1]), dtype=np.int64)
    full[:len(v)] = v
    raw = full.T.reshape(-1).astype("<i4").tobytes()
    mem.write(addr, raw)
    return len(raw)


def _store_qrec(mem, d, layout, v, r0, consts) -> int:
    geom = attention_geometry(layout)
    hd, rec_bytes = geom.head_dim, geom.q_record_bytes
    nv, D = v.shape
    heads = D // hd
    vh = v.reshape(nv, heads, hd)
    a, e = row_scale(np.abs(vh).max(axis=2))
    q = quantize_group(vh, a, e)
    kc = np.array([int(c) & 0xFFFF for c in consts[:heads]], dtype=np.int64)
    ks = np.array([(int(c) >> 16) & 0xFF for c in consts[:heads]], dtype=np.int64)
    mult, shift = qrec_multiplier(a, e, kc[None, :], ks[None, :])
    out = bytearray()
    for r in range(nv):
        for h in range(heads):
            rec = (q[r, h] & 0xFF).astype(np.uint8).tobytes() + int(mult[r, h]).to_bytes(2, "little") \
                + bytes([int(shift[r, h])])
            out += rec + bytes(rec_bytes - len(rec))
    mem.write(d["y_addr"] + r0 * heads * rec_bytes, bytes(out))
    return len(out)


def _store_kv(mem, d, layout, v, r0, consts, written, sread) -> None:
    """KV append: each head's values and mantissas into its page of the pool (``kv_groups`` >= 2:
    head h is head h % hg of group h // hg, in the pool the table at ``pool`` names, on port
    ``port + 2 * group``)."""
    geom = attention_geometry(layout)
    W8, P, hd, G = layout.word_bytes, geom.page_tokens, geom.head_dim, geom.group_size
    bits = d["kv_bits"]
    nv, D = v.shape
    kvh = D // hd
    groups = max(int(d.get("kv_groups", 0)), 1)
    hg = kvh // groups
    if groups == 1:
        pools = [d["pool"]]
    else:
        table = mem.read(d["pool"], 8 * groups)
        pools = [int.from_bytes(table[8 * i:8 * i + 8], "little") for i in range(groups)]
    for r in range(nv):
        pos = d["pos0"] + r0 + r
        lp, slot = divmod(pos, P)
        word = mem.read(d["bt_addr"] + (lp * 4 // W8) * W8, W8)
        page = int.from_bytes(word[lp * 4 % W8:lp * 4 % W8 + 4], "little")
        for h in range(kvh):
            grp, hh = divmod(h, hg)
            port = d["port"] + 2 * grp
            c = int(consts[h])
            km, ks, hm, hs = c & 0xFFFF, (c >> 16) & 0x3F, (c >> 32) & 0xFFFF, (c >> 48) & 0x3F
            q, mant = kv_quantize(v[r, h * hd:(h + 1) * hd].reshape(hd // G, G), km, ks, hm, hs, bits)
            base = pools[grp] + page * geom.page_bytes(bits, hg) + hh * geom.head_area(bits)
            mb, vb = pack_kv_token(geom, q.reshape(-1), mant, bits)
            mem.write(base + geom.scale_area + slot * geom.value_bytes(bits), vb)
            written[port] += len(vb)
            maddr = base + slot * len(mb)
            if len(mb) >= W8:
                mem.write(maddr, mb)
                written[port] += len(mb)
            else:
                waddr = maddr // W8 * W8
                old = bytearray(mem.read(waddr, W8))
                old[maddr - waddr:maddr - waddr + len(mb)] = mb
                mem.write(waddr, bytes(old))
                sread[port - 1] += W8
                written[port] += W8


# -- host helpers: tables, constants, records --------------------------------------------------------

def pack_u32(values, word_bytes: int) -> bytes:
    """u32 LE values, zero padded to a whole word."""
    raw = np.asarray(values, dtype=np.int64).astype("<u4").tobytes()
    return raw + bytes(-len(raw) % word_bytes)


def column_multipliers(real) -> np.ndarray:
    """u32 column records ``c | s << 16`` with ``c * 2**-s ~= real`` (``c < 2**15``, relative error
    below 2**-14 unless ``s`` hits 63); ``ValueError`` for a real of 2**15 or more."""
    from .quant import dyadic_multiplier

    real = np.asarray(real, dtype=np.float64).reshape(-1)
    if np.any(real >= 1 << COL_MULT_BITS):
        raise ValueError(f"column multiplier {float(real.max()):.4g} does not fit {COL_MULT_BITS} bits "
                         "(the output format has too many fraction bits for these values)")
    c, s = dyadic_multiplier(real, COL_MULT_BITS + 1, MAX_COL_SHIFT)
    return (c | (s << 16)).astype(np.int64)


def head_dyadic(real, *, bits: int = 16, max_shift: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """``(mult, shift)`` with ``mult < 2**bits`` (u16 constants of QREC/KV heads)."""
    from .quant import dyadic_multiplier

    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    return dyadic_multiplier(real, bits + 1, max_shift)


def qrec_constants(k_head_scale, q_per_kv: int, *, head_dim: int, frac_bits: int,
                   softmax_scale: float | None = None) -> np.ndarray:
    """u64 per query head ``kc | ks << 16``: ``kc * 2**-ks = k_head_scale * softmax_scale * log2(e) *
    2**8 / (127 * 2**frac_bits)`` (Q values carry ``frac_bits`` fraction bits)."""
    sm = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
    k = np.repeat(np.asarray(k_head_scale, dtype=np.float64), q_per_kv)
    real = k * sm * math.log2(math.e) * 256.0 / (127.0 * 2.0 ** frac_bits)
    kc, ks = head_dyadic(real, max_shift=255)
    if np.any(ks > 255):
        raise ValueError("score constant out of range")
    return (kc | (ks << 16)).astype(np.int64)


def kv_constants(head_scale, bits: int, *, frac_bits: int) -> np.ndarray:
    """u64 per KV head ``km | ks << 16 | hm << 32 | hs << 48`` for values with ``frac_bits`` fraction
    bits and the cache's float head scales: ``km * 2**-ks = 1 / (qmax * H)``, ``hm * 2**-hs = 1 / H``,
    ``H = head_scale * 2**frac_bits``."""
    qmax = (1 << (bits - 1)) - 1
    H = np.asarray(head_scale, dtype=np.float64) * 2.0 ** frac_bits
    if np.any(H <= 0) or not np.all(np.isfinite(H)):
        raise ValueError(f"KV head scales must be finite and > 0, got {head_scale!r}")
    km, ks = head_dyadic(1.0 / (qmax * H), max_shift=255)
    hm, hs = head_dyadic(1.0 / H, max_shift=255)
    if np.any(ks > KV_MAX_KS) or np.any(hs > KV_MAX_HS):
        raise ValueError(f"KV head scales {head_scale!r} are too large for {frac_bits} fraction bits")
    return (km | (ks << 16) | (hm << 32) | (hs << 48)).astype(object)


def rope_table(positions: int, head_dim: int, theta: float = 10000.0, *, inv_freq=None) -> np.ndarray:
    """u32 ``[positions, head_dim / 2]``: ``cos | sin << 16`` (int16, ``ROPE_FRAC`` fraction bits) of
    ``p * inv_freq[i]``, ``inv_freq[i] = theta ** (-2i / head_dim)`` unless given (scaled RoPE)."""
    if inv_freq is None:
        inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(positions, dtype=np.float64)[:, None] * np.asarray(inv_freq, dtype=np.float64)[None, :]
    one = 1 << ROPE_FRAC
    c = np.rint(np.cos(ang) * one).astype(np.int64)
    s = np.rint(np.sin(ang) * one).astype(np.int64)
    return (c & 0xFFFF) | ((s & 0xFFFF) << 16)


def pack_rope_table(table: np.ndarray, word_bytes: int) -> bytes:
    """Rows padded to ``rope_row_bytes`` (whole words)."""
    rows, half = table.shape
    rb = -(-half * 4 // word_bytes) * word_bytes
    out = np.zeros((rows, rb // 4), dtype="<u4")
    out[:, :half] = table
    return out.tobytes()


def pack_blocked(x, rows: int) -> bytes:
    """int32 rows ``[m, dim]`` in the matmul's blocked layout (rows beyond ``m`` zero)."""
    x = np.asarray(x, dtype=np.int64)
    m, dim = x.shape
    nb = -(-m // rows)
    full = np.zeros((nb * rows, dim), dtype=np.int64)
    full[:m] = x
    return full.reshape(nb, rows, dim).transpose(0, 2, 1).reshape(-1).astype("<i4").tobytes()


def unpack_blocked(raw, m: int, dim: int, rows: int) -> np.ndarray:
    """int64 ``[m, dim]`` from a blocked int32 buffer."""
    nb = -(-m // rows)
    a = np.frombuffer(bytes(raw)[:nb * rows * dim * 4], "<i4").astype(np.int64)
    return a.reshape(nb, dim, rows).transpose(0, 2, 1).reshape(nb * rows, dim)[:m]


def pack_scale_records(a, e, rows: int, word_bytes: int) -> bytes:
    """Row scale records ``a | e << 16`` for ``m`` rows, blocked by ``rows`` (SB bytes per block)."""
    a = np.asarray(a, dtype=np.int64)
    m = a.shape[0]
    sb = -(-4 * rows // word_bytes) * word_bytes
    out = np.zeros((-(-m // rows), sb // 4), dtype="<u4")
    rec = a | (np.asarray(e, dtype=np.int64) << 16)
    for i in range(m):
        out[i // rows, i % rows] = rec[i]
    return out.tobytes()


def unpack_scale_records(raw: bytes, m: int, rows: int, word_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    sb = -(-4 * rows // word_bytes) * word_bytes
    recs = np.frombuffer(raw, dtype="<u4").astype(np.int64).reshape(-1, sb // 4)[:, :rows].reshape(-1)[:m]
    return recs & 0xFFFF, (recs >> 16) & 0x1F


# -- measured error bounds (docs/engines/vector.md) --------------------------------------------------

def measure_vector_errors(seed: int = 0) -> dict:
    """Each stage of the golden model against float64 on the same (dequantized) inputs.

    Returns ``{stage: {metric: value}}``; the datasheet quotes these numbers."""
    from .attention import quantize_kv
    from .nonlinear import measure_gelu_error, measure_layernorm_error, measure_rmsnorm_error, measure_silu_error

    rng = np.random.default_rng(seed)
    out = {}
    # ACC32 -> fixed point: x * a * 2**e * c * 2**-s, rounded once
    x = rng.integers(-(1 << 31), 1 << 31, (64, 256))
    a, e = row_scale(rng.integers(1, 1 << 31, 64))
    real = np.exp(rng.uniform(np.log(1e-9), np.log(1e-4), 256))
    cols = column_multipliers(real)
    v = dequant(x, VectorIn.ACC32, cols=cols, a=a, e=e)
    exact = x * (a * 2.0 ** e)[:, None] * real[None, :]
    ok = np.abs(exact) < I32_MAX
    out["dequant"] = {"max_rel_err_beyond_half_lsb": float(np.max((np.abs(v - exact) - 0.5)[ok] / np.maximum(np.abs(exact[ok]), 1))),
                      "bound": 2.0 ** -14}
    # ACT8: q against round(127 v / (a 2**e)), in steps
    worst = 0.0
    for scale in (1e2, 1e5, 1e9):
        v = np.clip(np.rint(rng.normal(0, scale, (256, 512))), I32_MIN, I32_MAX).astype(np.int64)
        a, e = row_scale(np.abs(v).max(axis=1))
        q = quantize_group(v, a, e)
        worst = max(worst, float(np.max(np.abs(q - v / ((a * 2.0 ** e) / 127)[:, None]))))
    out["act8"] = {"max_abs_err_steps": worst, "bound": 0.5 + 127 * 2.0 ** -15}
    for name, fn in (("gelu", measure_gelu_error), ("silu", measure_silu_error)):
        r = fn(width=32, frac_bits=16, seg_bits=ACT_SEG_BITS, lo=-16.0, hi=16.0)
        out[name] = {"max_abs_err": r["max_abs_err"], "mean_abs_err": r["mean_abs_err"], "range": [-16, 16]}
    # SwiGLU: silu(a) * b, |a|, |b| <= 16
    A = rng.integers(-(16 << 16), 16 << 16, 200_000)
    B = rng.integers(-(16 << 16), 16 << 16, 200_000)
    got = combine(activate(A, VectorAct.SILU), B, VectorCombine.MUL) * 2.0 ** -16
    ref = A * 2.0 ** -16 / (1 + np.exp(-A * 2.0 ** -16)) * (B * 2.0 ** -16)
    out["swiglu"] = {"max_abs_err": float(np.max(np.abs(got - ref))), "range": [-16, 16]}
    # RoPE: positions up to 8191, head_dim 128
    hd = 128
    pos = rng.integers(0, 8192, 64)
    tab = rope_table(8192, hd, 10000.0)[pos]
    xr = rng.integers(-(1 << 24), 1 << 24, (64, hd))
    got = rope(xr, tab, hd)
    inv = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]
    h = xr.reshape(64, hd // 2, 2).astype(np.float64)
    refr = np.stack([h[..., 0] * np.cos(ang) - h[..., 1] * np.sin(ang),
                     h[..., 0] * np.sin(ang) + h[..., 1] * np.cos(ang)], -1).reshape(64, hd)
    norm = np.repeat(np.hypot(h[..., 0], h[..., 1]), 2, axis=-1).reshape(64, hd)
    out["rope"] = {"max_rel_err": float(np.max((np.abs(got - refr) - 0.5) / norm)), "bound": 2.0 ** -14}
    fmt = dict(width=32, frac_bits=16, gamma_width=32, gamma_frac_bits=20, out_width=32, out_frac_bits=16)
    for name, fn in (("rmsnorm", measure_rmsnorm_error), ("layernorm", measure_layernorm_error)):
        r = fn(dim=1024, n_vectors=32, seed=seed, **fmt)
        out[name] = {"max_abs_err": r["max_abs_err"], "max_abs_err_lsb": r["max_abs_err_lsb"],
                     "max_abs_err_beyond_relative_lsb": r["max_abs_err_beyond_relative_lsb"], "dim": 1024}
    # Q records: score multiplier mult * 2**-shift against a * 2**e * (kc * 2**-ks)
    amax = rng.integers(1, 1 << 31, 5000)
    a, e = row_scale(amax)
    real = np.exp(rng.uniform(np.log(1e-12), np.log(1e-8), 5000))
    kc, ks = head_dyadic(real)
    mult, shift = qrec_multiplier(a, e, kc, ks)
    inside = (shift > 0) & (shift < 63)
    rel = np.abs(mult * 2.0 ** -shift.astype(np.float64) / (a * 2.0 ** e * real) - 1)[inside]
    out["qrec_multiplier"] = {"max_rel_err": float(rel.max()), "bound": 2.0 ** -14}
    # KV append against the host's float quantize_kv
    for bits in (8, 4):
        xk = rng.normal(0, 1.5, (2000, 32))
        hs = np.abs(xk).max() * 2 / ((1 << (bits - 1)) - 1) / (1 << 15)
        c = int(kv_constants(np.array([hs]), bits, frac_bits=16)[0])
        vk = np.rint(xk * 2 ** 16).astype(np.int64)
        q, mant = kv_quantize(vk, c & 0xFFFF, (c >> 16) & 0x3F, (c >> 32) & 0xFFFF, (c >> 48) & 0x3F, bits)
        rq, rm = quantize_kv(vk * 2.0 ** -16, bits, 32, np.full(2000, hs))
        deq = q * (mant[:, None] * hs)
        out[f"kv{bits}"] = {"mantissa_max_diff": int(np.max(np.abs(mant - rm.reshape(-1)))),
                            "value_mismatch_rate": float(np.mean(q != rq)),
                            "max_abs_err_in_steps": float(np.max(np.abs(deq - xk) / (mant[:, None] * hs)))}
    return out
