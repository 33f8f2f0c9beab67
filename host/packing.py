"""Host-side packing of matmul operands into the engine's memory layouts (docs §4).

Every function takes the design's :class:`~hbmforge.layout.DesignLayout` (or
a Device or DesignManifest, whose ``.layout`` is used) so that word width, rows, weight ports,
group size and ``k_align`` come from the design, and returns ``uint8`` arrays
of exactly the byte counts ``DesignLayout.*_bytes`` gives. All of it is
vectorized NumPy: a 4096 x 4096 int4 matrix packs in well under a second.

The ``unpack_*`` inverses exist for round-trip tests and for reading results;
the descriptor-level golden model (``hbmforge.numerics.program``) decodes
memory with its own, independent code.
"""
from __future__ import annotations

import numpy as np

from hbmforge.encodings import OutMode, WeightFormat
from hbmforge.engines.matmul import SPARSE24
from hbmforge.layout import DesignLayout
from hbmforge.numerics.quant import storage_range, weight_format
from hbmforge.numerics.sparse import GROUP, KEEP, decode_sparse24_stream, encode_sparse24_stream

from .checks import check_int, int_array

__all__ = [
    "pad_k", "engine_format", "weight_code",
    "pack_activations", "unpack_activations",
    "pack_weights", "unpack_weights",
    "pack_scales", "unpack_scales",
    "pack_requant", "unpack_requant",
    "pack_bias", "unpack_bias",
    "pack_output", "unpack_output",
]


def _layout(layout) -> DesignLayout:
    """A DesignLayout, or the ``.layout`` of a Device or a DesignManifest."""
    lay = getattr(layout, "layout", layout)
    if not isinstance(lay, DesignLayout):
        raise TypeError(f"layout must be a DesignLayout (or a Device/DesignManifest), got {type(layout).__name__}")
    return lay


def _int_matrix(name: str, a, lo: int, hi: int, ndim: int = 2) -> np.ndarray:
    return int_array(name, a, lo, hi, ndim=(ndim,), what=f"a {ndim}-D integer array (values in [{lo}, {hi}])")


def _raw_bytes(raw, nbytes: int, what: str) -> np.ndarray:
    """The first ``nbytes`` of device bytes ``raw`` (bytes-like or a NumPy array) as uint8."""
    if isinstance(raw, np.ndarray):
        buf = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(bytes(raw), dtype=np.uint8)
    else:
        raise TypeError(f"raw must be bytes or a NumPy array, got {type(raw).__name__}")
    if buf.size < nbytes:
        raise ValueError(f"{what} holds {buf.size} bytes; it needs {nbytes}")
    return buf[:nbytes]


def _pad_bytes(data: np.ndarray, nbytes: int) -> np.ndarray:
    out = np.zeros(nbytes, dtype=np.uint8)
    out[:data.size] = data
    return out


def pad_k(a: np.ndarray, layout) -> np.ndarray:
    """Zero-pad the last axis of ``a`` to a multiple of ``k_align`` (exact: zeros add nothing)."""
    lay = _layout(layout)
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        raise TypeError(f"a must be a NumPy array with at least one axis, got {type(a).__name__}")
    k = a.shape[-1]
    kp = lay.matmul.pad_k(k)
    if kp == k:
        return a
    out = np.zeros(a.shape[:-1] + (kp,), dtype=a.dtype)
    out[..., :k] = a
    return out


# -- X: int8 [M, K] row-major ----------------------------------------------------------
def pack_activations(xq, layout) -> np.ndarray:
    """int8 ``[M, K]`` -> bytes: rows of K padded to ``k_align``, row-major, rounded to a word."""
    lay = _layout(layout)
    xq = _int_matrix("activations", xq, -128, 127)
    xq = pad_k(xq.astype(np.int8, copy=False), lay)
    m, k = xq.shape
    if m == 0:
        raise ValueError("activations have no rows (M = 0)")
    return _pad_bytes(np.ascontiguousarray(xq).reshape(-1).view(np.uint8), lay.matmul.act_bytes(m, k))


def unpack_activations(raw, m: int, k: int, layout) -> np.ndarray:
    m, k = check_int("m", m, 1), check_int("k", k, 1)
    return _raw_bytes(raw, m * k, "raw").view(np.int8).reshape(m, k).copy()


# -- W: [N, K] in one of the weight formats, one stream cut into P stripes ----------------
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int16)


def engine_format(wbits, layout, name: str = "wbits"):
    """``wbits`` (2, 4, 8, 'ternary' or descriptor code 3) -> format, checked against the engine's
    ``weight_bits``."""
    lay = _layout(layout)
    fmt = None
    if isinstance(wbits, (str, int, np.integer)):
        try:
            fmt = weight_format(wbits)
        except ValueError:
            pass
    if fmt is None or fmt not in lay.mm.weight_bits:
        raise ValueError(f"{name} must be one of the engine's weight_bits {list(lay.mm.weight_bits)}, got {wbits!r}")
    return fmt


def _five_trit(lay, fmt) -> bool:
    return fmt == "ternary" and lay.mm.ternary_packing == "5trit"


def weight_code(wbits, layout, *, sparse24: bool = False, name: str = "wbits") -> int:
    """The descriptor ``wbits`` of a format, with the 2:4 flag (``| SPARSE24``) when ``sparse24``;
    checked against the engine (``sparse24`` needs an engine with ``sparse24: true``)."""
    lay = _layout(layout)
    fmt = engine_format(wbits, lay, name)
    if not isinstance(sparse24, bool):
        raise TypeError(f"sparse24 must be True or False, got {sparse24!r}")
    if sparse24 and not lay.mm.sparse24:
        raise ValueError("sparse24: this design's matmul engine has sparse24 false (no 2:4 sparse weights); "
                         "set sparse24: true in its config")
    if sparse24 and fmt not in lay.mm.sparse24_formats:
        raise ValueError(f"sparse24: this design's matmul engine takes 2:4 weights of {list(lay.mm.sparse24_formats)} "
                         f"only, not {fmt!r} (its config's sparse24 list)")
    return WeightFormat.code(fmt) | (SPARSE24 if sparse24 else 0)


def pack_weights(wq, wbits, layout, *, sparse24: bool = False, scales=None) -> list[np.ndarray]:
    """``[N, K]`` integer weights -> one ``uint8`` array per weight port.

    ``wbits``: 2, 4, 8, ``"ternary"`` (or its descriptor code 3). K is padded with zeros and cut
    into the engine's K slices (``k_slice`` elements, the last one shorter; one slice when K
    fits); each slice is packed as below and the slices follow one another in every stripe.
    Within a slice of ``ks`` elements the stream is element ``i = n*ks + k`` in order:

    * int2/int4/int8: stream bits ``[i*b, (i+1)*b)``, two's complement (int4: the even
      element in the low nibble; int2: element ``4j+t`` at bits ``2t`` of byte ``j``);
    * ternary, ``ternary_packing: 2bit``: a 2-bit code per element, 00 = 0, 01 = +1,
      11 = -1 (10 is reserved, decodes to 0, never written);
    * ternary, ``5trit``: byte ``j`` = ``sum_t (w[5j+t] + 1) * 3**t`` (``t = 0`` the
      earliest element); missing elements of the last byte are zero weights.

    With ``sparse24`` (an engine with ``sparse24: true``) every group of 4 elements
    ``4j .. 4j+3`` must hold at most 2 non-zeros (:func:`hbmforge.numerics.sparse.prune_2_4`
    makes it so) and is stored in ``2b + 4`` bits (``b``: 2 for ternary, whatever the
    packing): value ``v0``, value ``v1`` (two's complement or ternary code), index ``i0``,
    index ``i1`` (2 bits each, the non-zeros' positions in the group, ascending; unused
    slots hold value 0 at the lowest free positions). Group ``j`` is at stream bits
    ``[j (2b+4), (j+1)(2b+4))``.

    The stream is zero-padded to whole combined words of ``P*W`` bits; combined word
    ``c`` is word ``c`` of stripe 0, then stripe 1, ... (stripe 0 least significant).

    ``scales``: the ``[N, K/G]`` group-scale mantissas. An engine with ``scale_stream: inline``
    needs them: each slice's scales (``[N, ks/G]`` u16 row-major, cut into combined words, the
    last zero-padded) are interleaved with its weight words, scale word ``j`` right before weight
    words ``j*r .. j*r + r - 1`` (``MatmulGeometry.inline_positions``). With ``scale_stream: data``
    they are checked and not used (:func:`pack_scales` packs the ``s_addr`` buffer).
    """
    lay = _layout(layout)
    inline = lay.matmul.inline_scales
    if scales is None and inline:
        raise ValueError("scales: this design's matmul engine has scale_stream 'inline' (the group scales "
                         "travel in the weight stripes): pass the [N, K/G] mantissas as scales=")
    fmt = engine_format(wbits, lay)
    code = weight_code(fmt, lay, sparse24=sparse24)
    lo, hi = storage_range(fmt)
    wq = pad_k(_int_matrix(f"{fmt if fmt == 'ternary' else f'int{fmt}'} weights", wq, lo, hi), lay)
    n, k = wq.shape
    if n == 0:
        raise ValueError("weights have no rows (N = 0)")
    if sparse24:
        dense = (wq.reshape(n, k // GROUP, GROUP) != 0).sum(axis=2)
        if (dense > KEEP).any():
            r, j = (int(v[0]) for v in np.nonzero(dense > KEEP))
            raise ValueError(f"weights are not 2:4 sparse: row {r}, elements {GROUP * j}..{GROUP * j + 3} hold "
                             f"{int(dense[r, j])} non-zeros (at most {KEEP}); prune them first "
                             "(hbmforge.numerics.sparse.prune_2_4)")
    geom = lay.matmul
    if k > geom.max_k_total:
        raise ValueError(f"weights have K = {k}; the engine takes at most {geom.max_k_total} "
                         f"({lay.mm.split_k} slices of {geom.k_slice})")
    sbytes = None
    if scales is not None:
        sbytes = _scale_matrix(scales, lay)
        if sbytes.shape != (n, k // lay.mm.group_size):
            raise ValueError(f"scales must be [N, K/G] = [{n}, {k // lay.mm.group_size}] (K padded to "
                             f"{geom.k_align}), got shape {sbytes.shape}")
    g = lay.mm.group_size
    parts = []
    for s in range(geom.slices(k)):
        k0, ks = s * geom.k_slice, geom.slice_k(k, s)
        sl = sbytes[:, k0 // g:(k0 + ks) // g] if inline else None
        parts.append(_pack_weight_slice(wq[:, k0:k0 + ks], fmt, lay, code, sl))
    return [np.concatenate([part[p] for part in parts]) for p in range(lay.mm.weight_ports)]


def _scale_matrix(mant, lay) -> np.ndarray:
    """Unsigned ``[N, K/G]`` mantissas (groups padded to ``k_align`` with zeros) as u16."""
    top = (1 << lay.mm.scale_bits) - 1
    mant = _int_matrix("scale mantissas", mant, 0, top)
    n, groups = mant.shape
    if n == 0 or groups == 0:
        raise ValueError(f"scale mantissas must be [N, K/G] with N, K/G >= 1, got shape {mant.shape}")
    g, geom = lay.mm.group_size, lay.matmul
    kp = geom.pad_k(groups * g)
    if kp > geom.max_k_total:
        raise ValueError(f"scale mantissas cover K = {kp}; the engine takes at most {geom.max_k_total}")
    padded = np.zeros((n, kp // g), dtype="<u2")
    padded[:, :groups] = mant
    return padded


def _pack_weight_slice(wq: np.ndarray, fmt, lay, code: int, scales=None) -> list[np.ndarray]:
    """One K slice [N, ks] -> its stripes (whole combined words)."""
    n, k = wq.shape
    flat = np.ascontiguousarray(wq).reshape(-1).astype(np.int8).view(np.uint8)
    if code & SPARSE24:
        stream = encode_sparse24_stream(flat.view(np.int8), lay.matmul.lane_bits(fmt))
    elif _five_trit(lay, fmt):
        digits = np.ones(-(-flat.size // 5) * 5, dtype=np.int16)           # pad: zero weights
        digits[:flat.size] = flat.view(np.int8).astype(np.int16) + 1
        stream = (digits.reshape(-1, 5) @ _POW3).astype(np.uint8)
    elif fmt == 8:
        stream = flat
    elif fmt == 4:                          # two elements per byte, low nibble first
        nib = flat & 0x0F
        if nib.size % 2:
            nib = np.append(nib, np.uint8(0))
        stream = nib[0::2] | (nib[1::2] << 4)
    else:                                   # int2 / ternary 2bit: four 2-bit codes per byte
        codes = np.zeros(-(-flat.size // 4) * 4, dtype=np.uint8)
        codes[:flat.size] = flat & 0x03
        c = codes.reshape(-1, 4)
        stream = c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)
    ports, word = lay.mm.weight_ports, lay.word_bytes
    geom = lay.matmul
    ww, sw = geom.slice_stream_words(n, k, code)
    cb = geom.combined_bytes
    combined = _pad_bytes(stream, ww * cb).reshape(ww, cb)
    if scales is not None:                  # inline: scale words interleaved with the weight words
        spos, wpos = geom.inline_positions(n, k, code)
        raw = np.ascontiguousarray(scales, dtype="<u2").reshape(-1).view(np.uint8)
        full = np.zeros((ww + sw, cb), dtype=np.uint8)
        full[list(spos)] = _pad_bytes(raw, sw * cb).reshape(sw, cb)
        full[wpos] = combined
        combined = full
    combined = combined.reshape(-1, ports, word)
    return [np.ascontiguousarray(combined[:, p, :]).reshape(-1) for p in range(ports)]


def unpack_weights(stripes, n: int, k: int, wbits, layout, *, sparse24: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_weights` (``k`` padded): int8 ``[N, K]``.

    Reserved encodings decode as the hardware does: ternary code 10 and 5-trit
    bytes >= 243 give zeros.
    """
    lay = _layout(layout)
    fmt = engine_format(wbits, lay)
    code = weight_code(fmt, lay, sparse24=sparse24)
    n, k = check_int("n", n, 1), check_int("k", k, 1)
    ports, word = lay.mm.weight_ports, lay.word_bytes
    if not isinstance(stripes, (list, tuple)) or len(stripes) != ports:
        got = len(stripes) if isinstance(stripes, (list, tuple)) else type(stripes).__name__
        raise ValueError(f"need {ports} weight stripes, got {got}")
    geom = lay.matmul
    need = geom.weight_port_bytes(n, k, code)
    arrays = [_raw_bytes(s, need, f"weight stripe {i}") for i, s in enumerate(stripes)]
    parts, offset = [], 0
    for sl in range(geom.slices(k)):
        ks = geom.slice_k(k, sl)
        nbytes = geom.slice_weight_port_bytes(n, ks, code)
        parts.append(_unpack_weight_slice([a[offset:offset + nbytes].reshape(-1, word) for a in arrays],
                                          n, ks, fmt, lay, code))
        offset += nbytes
    return np.concatenate(parts, axis=1)


def _unpack_weight_slice(arrays, n: int, k: int, fmt, lay, code: int) -> np.ndarray:
    words = np.stack(arrays, axis=1).reshape(len(arrays[0]), -1)          # combined words
    if lay.matmul.inline_scales:
        words = words[lay.matmul.inline_positions(n, k, code)[1]]
    stream = words.reshape(-1)
    count = n * k
    if code & SPARSE24:
        bits = np.unpackbits(stream, bitorder="little")
        return decode_sparse24_stream(bits, count, lay.matmul.lane_bits(fmt), fmt == "ternary") \
            .astype(np.int8).reshape(n, k)
    if _five_trit(lay, fmt):
        b = stream[: -(-count // 5)].astype(np.int16)
        vals = ((b[:, None] // _POW3[None, :]) % 3 - 1).astype(np.int8)
        vals[b >= 243] = 0
        return vals.reshape(-1)[:count].reshape(n, k)
    if fmt == 8:
        return stream[:count].view(np.int8).reshape(n, k).copy()
    if fmt == 4:
        lo = (stream & 0x0F).astype(np.int8)
        hi = (stream >> 4).astype(np.int8)
        vals = np.empty(stream.size * 2, dtype=np.int8)
        vals[0::2], vals[1::2] = lo, hi
        vals = np.where(vals >= 8, vals - 16, vals).astype(np.int8)
        return vals[:count].reshape(n, k)
    codes = np.stack([(stream >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)[:count]
    table = np.array([0, 1, 0, -1] if fmt == "ternary" else [0, 1, -2, -1], dtype=np.int8)
    return table[codes].reshape(n, k)


# -- S: u16 [N, K/G] per K slice --------------------------------------------------------
def pack_scales(mant, layout) -> np.ndarray:
    """Unsigned ``[N, K/G]`` group-scale mantissas -> u16 little-endian, groups padded to ``k_align``;
    per K slice ``[N, ks/G]``, each slice zero-padded to whole words (one slice when K fits)."""
    lay = _layout(layout)
    padded = _scale_matrix(mant, lay)
    n, g, geom = padded.shape[0], lay.mm.group_size, lay.matmul
    kp = padded.shape[1] * g
    if geom.inline_scales:
        raise ValueError("scale_stream: this design's matmul engine carries the scales inline in the weight "
                         "stripes (pack_weights(..., scales=)); there is no s_addr buffer to pack")
    parts = []
    for s in range(geom.slices(kp)):
        g0, ks = s * geom.k_slice // g, geom.slice_k(kp, s)
        part = np.ascontiguousarray(padded[:, g0:g0 + ks // g]).reshape(-1).view(np.uint8)
        parts.append(_pad_bytes(part, geom.slice_scale_bytes(n, ks)))
    return np.concatenate(parts)


def unpack_scales(raw, n: int, k: int, layout) -> np.ndarray:
    lay = _layout(layout)
    n, k = check_int("n", n, 1), check_int("k", k, 1)
    g, geom = lay.mm.group_size, lay.matmul
    buf = _raw_bytes(raw, geom.scale_bytes(n, k), "raw")
    parts, offset = [], 0
    for s in range(geom.slices(k)):
        ks = geom.slice_k(k, s)
        parts.append(buf[offset:offset + n * (ks // g) * 2].view("<u2").reshape(n, ks // g))
        offset += geom.slice_scale_bytes(n, ks)
    return np.concatenate(parts, axis=1).astype(np.uint16)


# -- Q: u64 per column: mult (int32) | shift << 32 ----------------------------------------
def pack_requant(mult, shift, layout) -> np.ndarray:
    """Per-column int8-mode requantization ``(mult, shift)`` -> u64 little-endian."""
    lay = _layout(layout)
    mult = _int_matrix("requant mult", mult, -(1 << 31), (1 << 31) - 1, ndim=1)
    shift = _int_matrix("requant shift", shift, 0, lay.matmul.widths.max_requant_shift, ndim=1)
    if mult.shape != shift.shape or mult.size == 0:
        raise ValueError(f"mult and shift must be non-empty and of equal length, got {mult.shape} and {shift.shape}")
    words = (mult.astype(np.int64) & 0xFFFF_FFFF).astype("<u8") | (shift.astype("<u8") << np.uint64(32))
    return _pad_bytes(words.view(np.uint8), lay.matmul.requant_bytes(mult.size))


def unpack_requant(raw, n: int) -> tuple[np.ndarray, np.ndarray]:
    words = _raw_bytes(raw, check_int("n", n, 1) * 8, "raw").view("<u8")
    mult = (words & np.uint64(0xFFFF_FFFF)).astype(np.uint32).view(np.int32).astype(np.int64)
    shift = ((words >> np.uint64(32)) & np.uint64(0x7F)).astype(np.int64)
    return mult, shift


# -- B: int32 per column -------------------------------------------------------------------
def pack_bias(bias, layout) -> np.ndarray:
    """Per-column int32 bias (added as ``bias << bias_shift`` before the output stage) -> little-endian."""
    lay = _layout(layout)
    bias = _int_matrix("bias", bias, -(1 << 31), (1 << 31) - 1, ndim=1)
    if bias.size == 0:
        raise ValueError("bias is empty (one int32 per output column)")
    return _pad_bytes(bias.astype("<i4").view(np.uint8), lay.matmul.bias_bytes(bias.size))


def unpack_bias(raw, n: int) -> np.ndarray:
    return _raw_bytes(raw, check_int("n", n, 1) * 4, "raw").view("<i4").astype(np.int64)


# -- Y: blocked [row block][column][row in block] ------------------------------------------
def _out_dtype(out_mode: int):
    if isinstance(out_mode, (int, np.integer)) and not isinstance(out_mode, bool):
        if out_mode == OutMode.INT32:
            return np.dtype("<i4")
        if out_mode == OutMode.INT8:
            return np.dtype("i1")
    raise ValueError(f"out_mode must be {OutMode.INT32} (INT32) or {OutMode.INT8} (INT8), got {out_mode!r}")


def unpack_output(raw, m: int, n: int, out_mode: int, layout) -> np.ndarray:
    """Blocked Y bytes -> ``[M, N]`` int32 or int8 (rows of the last block beyond M dropped)."""
    lay = _layout(layout)
    dtype = _out_dtype(out_mode)
    m, n = check_int("m", m, 1), check_int("n", n, 1)
    rows, blocks = lay.mm.rows, lay.matmul.row_blocks(m)
    need = blocks * n * rows * dtype.itemsize
    y = _raw_bytes(raw, need, f"output for [M={m}, N={n}]").view(dtype).reshape(blocks, n, rows)
    return np.ascontiguousarray(y.transpose(0, 2, 1).reshape(blocks * rows, n)[:m]).astype(dtype.newbyteorder("="))


def pack_output(y, out_mode: int, layout) -> np.ndarray:
    """``[M, N]`` results -> blocked Y bytes (rows >= M zero); what the device writes."""
    lay = _layout(layout)
    dtype = _out_dtype(out_mode)
    info = np.iinfo(dtype)
    y = _int_matrix("y", y, int(info.min), int(info.max))
    m, n = y.shape
    if m == 0 or n == 0:
        raise ValueError(f"y must be [M >= 1, N >= 1], got shape {y.shape}")
    rows, blocks = lay.mm.rows, lay.matmul.row_blocks(m)
    full = np.zeros((blocks * rows, n), dtype=dtype)
    full[:m] = y
    blocked = full.reshape(blocks, rows, n).transpose(0, 2, 1).reshape(-1)
    return _pad_bytes(np.ascontiguousarray(blocked).view(np.uint8), lay.matmul.out_bytes(m, n, out_mode))
