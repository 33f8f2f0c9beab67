"""Golden model of the attention engine (bit-exact with generators/attention), host helpers
for the paged int8/int4 KV cache, and float64 references for error measurements.

Integer pipeline for one tile (``R`` query rows sharing one KV head), per segment (the tokens
of one page the tile needs), tokens ``j``, rows ``r`` (widths: hbmforge.engines.attention)::

    S[r,j] = sum_g km[j,g] * sum_{d in g} q[r,d] * k[j,d]               exact, score_bits signed
    z[r,j] = sat24(rshift_round(S[r,j] * mult[r], shift[r]))             log2 domain, 8 fraction bits
    m_new[r] = max(m[r], max_{j visible} z[r,j])                         (running max; "empty" until a
                                                                          visible token was seen)
    alpha[r] = exp2_neg(m_new - m)  (2**15 if the row was or stays empty)
    acc[r,d] = rshift_round(acc[r,d] * alpha[r], 15);  l[r] = rshift_round(l[r] * alpha[r], 15)
    p[r,j]   = exp2_neg(m_new[r] - z[r,j])  (0 if j is not visible to row r)
    l[r]    += sum_j p[r,j];    acc[r,d] += sum_j p[r,j] * vm[j,g(d)] * v[j,d]
    end:  (Y, n) = reciprocal(l[r]);  o[r,d] = sat32(rshift_round(acc[r,d] * Y, n + 16 - 8))

``o`` is the attention output in units of the V head scale with 8 fraction bits.

Masks: causal (``j <= p``, with the sliding window ``j > p - window`` or sink ``j < sink``), or
bidirectional (an encoder: every row sees exactly the keys ``j < keys``, ``keys = valid_len`` or
``ctx_len``; padded keys are never read). A row that sees no key at all (only possible with a
window) outputs 0. Rows of padded query positions are ordinary rows: they attend to the valid keys
like every other row (as Hugging Face encoders compute them).
"""
from __future__ import annotations

import math

import numpy as np

from ..engines.attention import (OUT_FRAC, P_FRAC, SCORE_FRAC, Z_BITS, MULT_BITS, MAX_SHIFT, MANT_BITS,
                                KV_HEAD_PARALLEL, AttentionGeometry, attention_geometry, job_ranges, key_limit,
                                segments, tile_rows,
                                visible)
from .softmax import _rescale, exp2_neg, reciprocal

__all__ = ["attend_tile", "output_rows", "attention_int", "run_attention", "attention_float",
           "read_pool_table", "head_parallel_tiles",
           "mask_matrix", "quantize_kv", "dequantize_kv", "kv_head_scale", "pack_kv_token",
           "kv_token_addresses", "write_kv_token", "pack_block_table", "quantize_q", "score_multiplier",
           "pack_q_records", "dequantize_output", "decode_attention_rel_err", "encoder_attention_rel_err",
           "AttentionCase"]

_ZMIN, _ZMAX = -(1 << (Z_BITS - 1)), (1 << (Z_BITS - 1)) - 1
ONE = 1 << P_FRAC


def _rshift_round64(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return (v + half) >> s


# -- tile core ---------------------------------------------------------------------------

def attend_tile(q, mult, shift, pos, segs, *, window: int, sink: int, group_size: int,
                keys: int | None = None):
    """One tile: ``q`` int [R, hd], ``mult``/``shift``/``pos`` [R]; ``segs`` a list of
    ``(j0, k [n, hd], km [n, ng], v [n, hd], vm [n, ng])`` in engine order; ``keys``: a
    bidirectional job's key limit (every row sees every token read), None for causal.
    Returns ``(acc [R, hd] int64, l [R] int64)``."""
    q = np.asarray(q, dtype=np.int64)
    R, hd = q.shape
    ng = hd // group_size
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.int64)
    acc = np.zeros((R, hd), dtype=np.int64)
    l = np.zeros(R, dtype=np.int64)
    m = np.zeros(R, dtype=np.int64)
    empty = np.ones(R, dtype=bool)
    qg = q.reshape(R, ng, group_size)
    for j0, k, km, v, vm in segs:
        k = np.asarray(k, dtype=np.int64)
        n = k.shape[0]
        part = np.einsum("rgc,jgc->rjg", qg, k.reshape(n, ng, group_size))
        S = (part * np.asarray(km, dtype=np.int64)[None]).sum(-1)                     # [R, n]
        z = np.clip(_rshift_round64(S * mult[:, None], shift[:, None]), _ZMIN, _ZMAX)
        j = j0 + np.arange(n)
        if keys is not None:
            vis = np.broadcast_to(j[None, :] < keys, (R, n))
        else:
            vis = (j[None, :] <= pos[:, None])
            if window:
                vis &= (j[None, :] > pos[:, None] - window) | (j[None, :] < sink)
        any_vis = vis.any(axis=1)
        bmax = np.where(vis, z, _ZMIN - 1).max(axis=1)
        new_m = np.where(any_vis, np.where(empty, bmax, np.maximum(m, bmax)), m)
        new_empty = empty & ~any_vis
        alpha = np.where(empty | new_empty, ONE, exp2_neg(np.maximum(new_m - m, 0)))
        acc = np.stack([_rescale(acc[r], int(alpha[r])) for r in range(R)])
        l = np.array([int(_rescale(np.array([l[r]]), int(alpha[r]))[0]) for r in range(R)], dtype=np.int64)
        p = np.where(vis, exp2_neg(np.maximum(new_m[:, None] - z, 0)), 0)
        vv = np.asarray(v, dtype=np.int64) * np.repeat(np.asarray(vm, dtype=np.int64), group_size, axis=1)
        acc = acc + p @ vv
        l = l + p.sum(axis=1)
        m, empty = new_m, new_empty
    return acc, l


def output_rows(acc, l) -> np.ndarray:
    """``o = sat32(rshift_round(acc * Y, n + 16 - OUT_FRAC))`` per row, ``(Y, n) = reciprocal(l)``."""
    acc = np.asarray(acc, dtype=np.int64)
    out = np.zeros(acc.shape, dtype=np.int64)
    for r in range(acc.shape[0]):
        y, n = reciprocal(int(l[r]))
        if n == 0:
            continue
        s = n + 16 - OUT_FRAC
        for d in range(acc.shape[1]):
            v = (int(acc[r, d]) * y + (1 << (s - 1))) >> s
            out[r, d] = min(max(v, -(1 << 31)), (1 << 31) - 1)
    return out.astype(np.int32)


def mask_matrix(positions, ctx_len: int, window: int, sink: int, *, keys: int | None = None) -> np.ndarray:
    """``[len(positions), ctx_len]`` booleans: which tokens each query position attends to
    (``keys``: bidirectional key limit, see :func:`hbmforge.engines.attention.key_limit`)."""
    return np.array([[visible(p, j, window, sink, keys=keys) for j in range(ctx_len)] for p in positions],
                    dtype=bool).reshape(len(positions), ctx_len)


# -- tensor level --------------------------------------------------------------------------

def attention_int(q, mult, shift, k, km, v, vm, *, ctx_len: int, window: int = 0, sink: int = 0,
                  q_per_kv: int = 1, rows: int, page_tokens: int, group_size: int,
                  bidirectional: bool = False, valid_len: int = 0) -> np.ndarray:
    """Integer attention of ``n_q`` new positions against a dense cache, tiled as the engine does.

    ``q`` int8 [n_q, q_heads, hd]; ``mult``/``shift`` [n_q, q_heads]; ``k``/``v`` int [ctx, kv_heads, hd];
    ``km``/``vm`` u16 [ctx, kv_heads, hd / group_size]. ``bidirectional``: every query sees the keys
    ``j < valid_len`` (0: ``ctx_len``). Returns int32 [n_q, q_heads, hd].
    """
    q = np.asarray(q)
    n_q, q_heads, hd = q.shape
    kv_heads = q_heads // q_per_kv
    d = {"q_per_kv": q_per_kv, "n_q": n_q, "kv_heads": kv_heads, "ctx_len": ctx_len, "window": window,
         "sink": sink, "mode": int(bool(bidirectional)), "valid_len": valid_len}
    keys = key_limit(d)
    base = ctx_len - n_q
    out = np.zeros((n_q, q_heads, hd), dtype=np.int32)
    for h, trows in tile_rows(d, rows):
        pos = [base + pi for pi, _ in trows]
        segs = [(j0, k[j0:j0 + n, h], km[j0:j0 + n, h], v[j0:j0 + n, h], vm[j0:j0 + n, h])
                for j0, n in segments(job_ranges(d, min(pos), max(pos)), page_tokens)]
        qi = np.array([q[pi, hq] for pi, hq in trows])
        mi = np.array([mult[pi, hq] for pi, hq in trows])
        si = np.array([shift[pi, hq] for pi, hq in trows])
        acc, l = attend_tile(qi, mi, si, pos, segs, window=window, sink=sink, group_size=group_size, keys=keys)
        o = output_rows(acc, l)
        for r, (pi, hq) in enumerate(trows):
            out[pi, hq] = o[r]
    return out


# -- memory level --------------------------------------------------------------------------

def _decode_values(raw: bytes, hd: int, bits: int) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if bits == 8:
        v = b[:hd]
        return np.where(v >= 128, v - 256, v)
    lo, hi = b & 15, b >> 4
    v = np.stack([lo, hi], axis=1).reshape(-1)[:hd]
    return np.where(v >= 8, v - 16, v)


def _read_segment(mem, geom: AttentionGeometry, pool: int, page: int, h: int, kv_heads: int, bits: int,
                  a: int, n: int):
    """(values [n, hd], mantissas [n, ng], bytes read) of tokens [a, a+n) of a page, as the engine reads."""
    B = geom.word_bytes
    base = pool + page * geom.page_bytes(bits, kv_heads) + h * geom.head_area(bits)
    first, words, off = geom.scale_span(a, n)
    sraw = mem.read(base + first * B, words * B)
    mant = np.frombuffer(sraw, dtype="<u2").astype(np.int64)[off:off + n * geom.groups].reshape(n, geom.groups)
    vb = geom.value_bytes(bits)
    vraw = mem.read(base + geom.scale_area + a * vb, n * vb)
    vals = np.stack([_decode_values(vraw[t * vb:(t + 1) * vb], geom.head_dim, bits) for t in range(n)])
    return vals, mant, words * B + n * vb


def run_attention(mem, d: dict, layout) -> dict:
    """Run one validated ATTENTION descriptor against ``mem`` (``read(addr, n)``/``write(addr, data)``)
    exactly as the engine does: same reads (Q records, one block-table word per segment, the scale
    words and value records of each segment's tokens), same arithmetic, same output writes.

    Returns ``bytes_written``, ``mac_ops`` (2 x valid rows x tokens read x head_dim, what the
    engine's ``mac_inc`` adds up to) and ``kv_bytes_read`` (one entry per stream port ``w<i>``)."""
    geom = attention_geometry(layout)
    if d.get("kv_layout", 0) == KV_HEAD_PARALLEL:
        return _run_head_parallel(mem, d, layout, geom)
    B, hd, bits = geom.word_bytes, geom.head_dim, d["kv_bits"]
    kvh, grp, n_q, ctx = d["kv_heads"], d["q_per_kv"], d["n_q"], d["ctx_len"]
    q_heads = kvh * grp
    base = ctx - n_q
    ports = layout.config.stream_ports
    kv_read = [0] * ports
    vport = geom.kv_ports - 1
    written = macs = 0
    qrec = geom.q_record_bytes
    keys = key_limit(d)
    for h, trows in tile_rows(d, geom.rows):
        pos = [base + pi for pi, _ in trows]
        ri = [pi * q_heads + hq for pi, hq in trows]
        recs = [mem.read(d["q_addr"] + r * qrec, qrec) for r in ri]
        q = np.stack([np.frombuffer(rec[:hd], dtype=np.int8).astype(np.int64) for rec in recs])
        mult = np.array([int.from_bytes(rec[hd:hd + 2], "little") for rec in recs], dtype=np.int64)
        shift = np.array([rec[hd + 2] & 63 for rec in recs], dtype=np.int64)
        segs = []
        tokens = 0
        for j0, n in segments(job_ranges(d, min(pos), max(pos)), geom.page_tokens):
            lp = j0 // geom.page_tokens
            a = j0 - lp * geom.page_tokens
            word = mem.read(d["bt_addr"] + (lp * 4 // B) * B, B)
            off = lp * 4 % B
            page = int.from_bytes(word[off:off + 4], "little")
            k, km, kb = _read_segment(mem, geom, d["k_pool"], page, h, kvh, bits, a, n)
            v, vm, vb = _read_segment(mem, geom, d["v_pool"], page, h, kvh, bits, a, n)
            kv_read[0] += kb
            kv_read[vport] += vb
            segs.append((j0, k, km, v, vm))
            tokens += n
        acc, l = attend_tile(q, mult, shift, pos, segs, window=d["window"], sink=d["sink"],
                             group_size=geom.group_size, keys=keys)
        o = output_rows(acc, l)
        for r, row in enumerate(ri):
            mem.write(d["o_addr"] + row * geom.out_row_bytes, o[r].astype("<i4").tobytes())
            written += geom.out_row_bytes
        macs += 2 * len(trows) * tokens * hd
    return {"bytes_written": written, "mac_ops": macs, "kv_bytes_read": kv_read}


def read_pool_table(mem, geom: AttentionGeometry, addr: int) -> tuple[list[int], list[int]]:
    """A head-parallel job's pool table at ``addr``: (K pool per port group, V pool per port group)."""
    raw = mem.read(addr, geom.pool_table_bytes)
    ent = [int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(2 * geom.rows)]
    return ent[:geom.rows], ent[geom.rows:]


def head_parallel_tiles(kv_heads: int, rows: int):
    """Tiles of a head-parallel job in engine order: tile t holds, in row r, head ``r * hg + t``
    (``hg = kv_heads / rows`` heads per port group), at index t of group r's pools.
    Yields ``(t, [head of row 0, ..., head of row rows-1])``."""
    hg = kv_heads // rows
    for t in range(hg):
        yield t, [r * hg + t for r in range(rows)]


def _run_head_parallel(mem, d: dict, layout, geom: AttentionGeometry) -> dict:
    """:func:`run_attention` for ``kv_layout`` 1: row r of every tile reads its own head from
    port group r's pools (K on ``w<2r>``, V on ``w<2r+1>``); the rows share the segments (one
    position, one block table), so each row's online softmax is the shared layout's for its head."""
    B, hd, bits = geom.word_bytes, geom.head_dim, d["kv_bits"]
    kvh, ctx, R = d["kv_heads"], d["ctx_len"], geom.rows
    hg = kvh // R
    kv_read = [0] * layout.config.stream_ports
    k_pools, v_pools = read_pool_table(mem, geom, d["k_pool"])
    qrec = geom.q_record_bytes
    keys = key_limit(d)
    pos = ctx - 1
    written = macs = 0
    for t, heads in head_parallel_tiles(kvh, R):
        segs = [[] for _ in range(R)]
        tokens = 0
        for j0, n in segments(job_ranges(d, pos, pos), geom.page_tokens):
            lp = j0 // geom.page_tokens
            a = j0 - lp * geom.page_tokens
            word = mem.read(d["bt_addr"] + (lp * 4 // B) * B, B)
            off = lp * 4 % B
            page = int.from_bytes(word[off:off + 4], "little")
            for r in range(R):
                k, km, kb = _read_segment(mem, geom, k_pools[r], page, t, hg, bits, a, n)
                v, vm, vb = _read_segment(mem, geom, v_pools[r], page, t, hg, bits, a, n)
                kv_read[geom.k_port(r)] += kb
                kv_read[geom.v_port(r)] += vb
                segs[r].append((j0, k, km, v, vm))
            tokens += n
        for r, h in enumerate(heads):
            rec = mem.read(d["q_addr"] + h * qrec, qrec)
            q = np.frombuffer(rec[:hd], dtype=np.int8).astype(np.int64)[None]
            mult = np.array([int.from_bytes(rec[hd:hd + 2], "little")], dtype=np.int64)
            shift = np.array([rec[hd + 2] & 63], dtype=np.int64)
            acc, l = attend_tile(q, mult, shift, [pos], segs[r], window=d["window"], sink=d["sink"],
                                 group_size=geom.group_size, keys=keys)
            o = output_rows(acc, l)
            mem.write(d["o_addr"] + h * geom.out_row_bytes, o[0].astype("<i4").tobytes())
            written += geom.out_row_bytes
        macs += 2 * R * tokens * hd
    return {"bytes_written": written, "mac_ops": macs, "kv_bytes_read": kv_read}


# -- float reference --------------------------------------------------------------------------

def attention_float(q, k, v, *, ctx_len: int, window: int = 0, sink: int = 0, q_per_kv: int = 1,
                    scale: float | None = None, bidirectional: bool = False, valid_len: int = 0) -> np.ndarray:
    """float64 softmax attention: ``q`` [n_q, q_heads, hd], ``k``/``v`` [ctx, kv_heads, hd];
    ``bidirectional``: every query sees the keys ``j < valid_len`` (0: ``ctx_len``)."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n_q, q_heads, hd = q.shape
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    pos = np.arange(ctx_len - n_q, ctx_len)
    mask = mask_matrix(pos, ctx_len, window, sink, keys=(valid_len or ctx_len) if bidirectional else None)
    out = np.zeros_like(q)
    for hq in range(q_heads):
        h = hq // q_per_kv
        s = q[:, hq] @ k[:ctx_len, h].T * scale
        s = np.where(mask, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, hq] = p @ v[:ctx_len, h]
    return out


# -- host helpers: quantization and packing -----------------------------------------------

def kv_head_scale(absmax, bits: int):
    """Per-KV-head float scale fixed at cache creation: a group whose absmax is ``absmax`` gets
    mantissa 2**15 (so groups up to 2x larger still fit the 16-bit mantissa)."""
    qmax = (1 << (bits - 1)) - 1
    absmax = np.asarray(absmax, dtype=np.float64)
    return np.where(absmax > 0, absmax / qmax / (1 << 15), 1.0)


def quantize_kv(x, bits: int, group_size: int, head_scale):
    """One token's K or V ``x`` [kv_heads, hd] -> (int values [kv_heads, hd], u16 mantissas
    [kv_heads, hd/group_size]): symmetric per group, group scale = ``mant * head_scale[h]``
    (mantissa clipped to [1, 65535]; the values are rounded with the encoded scale)."""
    x = np.asarray(x, dtype=np.float64)
    kvh, hd = x.shape
    qmax = (1 << (bits - 1)) - 1
    hs = np.asarray(head_scale, dtype=np.float64).reshape(kvh, 1)
    g = x.reshape(kvh, hd // group_size, group_size)
    absmax = np.abs(g).max(axis=2)
    mant = np.clip(np.rint(absmax / qmax / hs), 1, (1 << MANT_BITS) - 1).astype(np.int64)
    scale = mant * hs
    q = np.clip(np.rint(g / scale[:, :, None]), -qmax, qmax).astype(np.int64).reshape(kvh, hd)
    return q, mant.astype(np.uint16)


def dequantize_kv(q, mant, head_scale, group_size: int) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    hs = np.asarray(head_scale, dtype=np.float64)[..., None]
    return q * np.repeat(np.asarray(mant, dtype=np.float64) * hs, group_size, axis=-1)


def pack_kv_token(geom: AttentionGeometry, q_row, mant_row, bits: int) -> tuple[bytes, bytes]:
    """One token of one KV head -> (mantissa bytes: ``groups`` u16 LE, value record: ``value_bytes``
    bytes, int8 per element or two int4 per byte with the even element in the low nibble)."""
    q_row = np.asarray(q_row, dtype=np.int64)
    mb = np.asarray(mant_row, dtype="<u2").tobytes()
    if bits == 8:
        vb = (q_row & 0xFF).astype(np.uint8).tobytes()
    else:
        nib = (q_row & 0xF).astype(np.uint8)
        vb = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()
    return mb, vb + bytes(geom.value_bytes(bits) - len(vb))


def kv_token_addresses(geom: AttentionGeometry, pool: int, page: int, kv_heads: int, kv_head: int,
                       slot: int, bits: int) -> tuple[int, int]:
    """(address of the token's first mantissa, address of its value record) in a page."""
    base = pool + page * geom.page_bytes(bits, kv_heads) + kv_head * geom.head_area(bits)
    return base + slot * geom.groups * 2, base + geom.scale_area + slot * geom.value_bytes(bits)


def write_kv_token(mem, geom: AttentionGeometry, pool: int, page: int, slot: int, q, mant, bits: int):
    """Write one token (all KV heads: ``q`` [kv_heads, hd], ``mant`` [kv_heads, ng]) into ``slot``
    of physical ``page`` (quantize-on-append: nothing else in the page changes)."""
    q = np.asarray(q)
    kvh = q.shape[0]
    for h in range(kvh):
        ma, va = kv_token_addresses(geom, pool, page, kvh, h, slot, bits)
        mb, vb = pack_kv_token(geom, q[h], mant[h], bits)
        mem.write(ma, mb)
        mem.write(va, vb)


def pack_block_table(pages, word_bytes: int) -> bytes:
    """u32 LE physical page per logical page, zero padded to a whole word."""
    raw = np.asarray(pages, dtype="<u4").tobytes()
    return raw + bytes(-len(raw) % word_bytes)


def quantize_q(q):
    """Per-row (token, head) symmetric int8: ``q`` [..., hd] -> (int8 [..., hd], float scale [...])."""
    q = np.asarray(q, dtype=np.float64)
    absmax = np.abs(q).max(axis=-1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0)
    return np.clip(np.rint(q / scale[..., None]), -127, 127).astype(np.int8), scale


def score_multiplier(q_scale, k_head_scale, head_dim: int, softmax_scale: float | None = None):
    """Dyadic ``(mult, shift)`` (u16, 0..63) of ``q_scale * k_head_scale * softmax_scale * log2(e) *
    2**8``: the integer score times it is the log2-domain score with 8 fraction bits."""
    sm = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
    real = np.atleast_1d(np.asarray(q_scale, dtype=np.float64) * np.asarray(k_head_scale, dtype=np.float64)
                         * sm * math.log2(math.e) * (1 << SCORE_FRAC))
    mult = np.zeros(real.shape, dtype=np.int64)
    shift = np.zeros(real.shape, dtype=np.int64)
    top = 1 << MULT_BITS
    for i, r in np.ndenumerate(real):
        if r <= 0:
            continue
        e = math.frexp(r)[1]
        s = min(MAX_SHIFT, MULT_BITS - e)
        if s < 0:
            raise ValueError(f"score multiplier {r} needs more than {MULT_BITS} bits")
        mv = round(r * (1 << s))
        if mv >= top:
            mv, s = mv // 2, s - 1
        mult[i], shift[i] = mv, s
    return mult, shift


def pack_q_records(geom: AttentionGeometry, q, mult, shift) -> bytes:
    """Q records [n_q, q_heads]: ``head_dim`` int8, u16 mult, u8 shift, zero pad to ``q_record_bytes``."""
    q = np.asarray(q, dtype=np.int64)
    n_q, q_heads, hd = q.shape
    out = bytearray()
    for i in range(n_q):
        for h in range(q_heads):
            rec = (q[i, h] & 0xFF).astype(np.uint8).tobytes() + int(mult[i, h]).to_bytes(2, "little") \
                + bytes([int(shift[i, h])])
            out += rec + bytes(geom.q_record_bytes - len(rec))
    return bytes(out)


def dequantize_output(o, v_head_scale, q_per_kv: int) -> np.ndarray:
    """int32 outputs [n_q, q_heads, hd] -> float: ``o / 2**8 * v_head_scale[q_head // q_per_kv]``."""
    o = np.asarray(o, dtype=np.float64)
    hs = np.repeat(np.asarray(v_head_scale, dtype=np.float64), q_per_kv)
    return o / (1 << OUT_FRAC) * hs[None, :, None]


# -- random cases and the error benchmark ---------------------------------------------------

class AttentionCase:
    """A random layer state quantized for the engine (float originals kept for error checks)."""

    def __init__(self, rng, *, n_q, ctx_len, kv_heads, q_per_kv, head_dim, group_size, kv_bits,
                 outliers=True):
        self.n_q, self.ctx_len, self.kv_heads, self.q_per_kv = n_q, ctx_len, kv_heads, q_per_kv
        self.head_dim, self.group_size, self.kv_bits = head_dim, group_size, kv_bits
        qh = kv_heads * q_per_kv
        self.qf = rng.normal(0, 1.0, (n_q, qh, head_dim))
        self.kf = rng.normal(0, 1.0, (ctx_len, kv_heads, head_dim))
        self.vf = rng.normal(0, 1.0, (ctx_len, kv_heads, head_dim))
        if outliers:                                    # a few large channels, as in real K caches
            ch = rng.integers(0, head_dim, 2)
            self.kf[:, :, ch] *= 4.0
            self.qf[:, :, ch] *= 2.0
        self.k_hs = kv_head_scale(np.abs(self.kf).max(axis=(0, 2)), kv_bits)
        self.v_hs = kv_head_scale(np.abs(self.vf).max(axis=(0, 2)), kv_bits)
        kq = [quantize_kv(self.kf[t], kv_bits, group_size, self.k_hs) for t in range(ctx_len)]
        vq = [quantize_kv(self.vf[t], kv_bits, group_size, self.v_hs) for t in range(ctx_len)]
        self.k = np.stack([a for a, _ in kq])
        self.km = np.stack([b for _, b in kq]).astype(np.int64)
        self.v = np.stack([a for a, _ in vq])
        self.vm = np.stack([b for _, b in vq]).astype(np.int64)
        self.q, self.q_scale = quantize_q(self.qf)
        ks = np.repeat(self.k_hs, q_per_kv)[None, :]
        self.mult, self.shift = score_multiplier(self.q_scale * ks, 1.0, head_dim)
        self.mult = self.mult.reshape(n_q, qh)
        self.shift = self.shift.reshape(n_q, qh)

    def golden(self, *, rows, page_tokens, window=0, sink=0, bidirectional=False, valid_len=0):
        o = attention_int(self.q, self.mult, self.shift, self.k, self.km, self.v, self.vm,
                          ctx_len=self.ctx_len, window=window, sink=sink, q_per_kv=self.q_per_kv,
                          rows=rows, page_tokens=page_tokens, group_size=self.group_size,
                          bidirectional=bidirectional, valid_len=valid_len)
        return dequantize_output(o, self.v_hs, self.q_per_kv)

    def reference(self, window=0, sink=0, bidirectional=False, valid_len=0):
        return attention_float(self.qf, self.kf, self.vf, ctx_len=self.ctx_len, window=window, sink=sink,
                               q_per_kv=self.q_per_kv, bidirectional=bidirectional, valid_len=valid_len)


def decode_attention_rel_err(kv_bits: int, *, ctx_len: int = 1024, kv_heads: int = 2, q_per_kv: int = 4,
                             head_dim: int = 128, group_size: int = 32, page_tokens: int = 16, rows: int = 8,
                             seed: int = 0, window: int = 0, sink: int = 0) -> float:
    """Relative error ``||o - o_ref|| / ||o_ref||`` of the quantized engine (golden) against float64
    attention on the unquantized tensors, for one decode step (Gaussian Q/K/V, two outlier channels)."""
    rng = np.random.default_rng(seed)
    case = AttentionCase(rng, n_q=1, ctx_len=ctx_len, kv_heads=kv_heads, q_per_kv=q_per_kv,
                         head_dim=head_dim, group_size=group_size, kv_bits=kv_bits)
    got = case.golden(rows=rows, page_tokens=page_tokens, window=window, sink=sink)
    ref = case.reference(window=window, sink=sink)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def encoder_attention_rel_err(kv_bits: int = 8, *, tokens: int = 128, valid_len: int = 111, heads: int = 4,
                              head_dim: int = 128, group_size: int = 32, page_tokens: int = 16, rows: int = 8,
                              seed: int = 0) -> float:
    """Relative error of bidirectional (encoder) attention, golden integer model against float64 on the
    unquantized tensors: ``tokens`` positions of which the first ``valid_len`` are real (the rest is
    padding, masked as keys), every query row compared (padded rows attend to the real keys too)."""
    rng = np.random.default_rng(seed)
    case = AttentionCase(rng, n_q=tokens, ctx_len=tokens, kv_heads=heads, q_per_kv=1, head_dim=head_dim,
                         group_size=group_size, kv_bits=kv_bits)
    got = case.golden(rows=rows, page_tokens=page_tokens, bidirectional=True, valid_len=valid_len)
    ref = case.reference(bidirectional=True, valid_len=valid_len)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
