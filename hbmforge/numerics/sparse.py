"""2:4 structured sparsity (AccLLM, FlightLLM; NVIDIA's 2:4): at most 2 non-zeros in every 4 weights.

A weight matrix ``[N, K]`` is 2:4 sparse when every group of 4 consecutive elements of a row
(K ``4j .. 4j+3``) holds at most 2 non-zeros. Such a matrix computes exactly like the dense
one (the golden matmul is unchanged); what changes is the memory layout (2 values and two 2-bit
indexes per group, :func:`decode_sparse24_stream`) and so the weight bytes per token.

:func:`prune_2_4` is the usual one-shot magnitude pruning: keep the 2 largest ``|w|`` of each
group (the earlier element on a tie).
"""
from __future__ import annotations

import numpy as np

__all__ = ["GROUP", "KEEP", "prune_2_4", "is_2_4", "sparse24_mask", "encode_sparse24_stream",
           "decode_sparse24_stream", "pair_slots", "pair_fire_sums", "dense_pair_slots", "dense_pair_fire_sums"]

GROUP, KEEP = 4, 2


def _weights(w) -> np.ndarray:
    """``w`` as a real (integer or float) array of at least one axis, or a clear error."""
    if isinstance(w, (list, tuple)):
        try:
            w = np.asarray(w)
        except (ValueError, TypeError) as err:          # ragged nesting
            raise ValueError(f"weights must be a rectangular array; the nested sequence is not ({err})") from None
    if not isinstance(w, np.ndarray) or w.ndim < 1:
        raise TypeError(f"weights must be a NumPy array with at least one axis, got {type(w).__name__}"
                        + (f" of shape {w.shape}" if isinstance(w, np.ndarray) else ""))
    if w.dtype.kind not in "iuf":
        raise TypeError(f"weights must be integer or float (not {w.dtype}) for 2:4 sparsity")
    if w.shape[-1] % GROUP:
        raise ValueError(f"weights: the last axis ({w.shape[-1]}) must be a multiple of {GROUP} for 2:4 sparsity")
    return w


def _groups(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[:-1] + (w.shape[-1] // GROUP, GROUP))


def sparse24_mask(w) -> np.ndarray:
    """Boolean mask of the elements magnitude 2:4 pruning keeps: the 2 largest ``|w|`` of every 4
    along the last axis (the lower index wins a tie; NaN is not allowed)."""
    w = _weights(w)
    if w.dtype.kind == "f" and not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite to prune them")
    g = _groups(np.abs(w.astype(np.float64)))
    # stable sort of -|w|: equal magnitudes keep their order, so the earlier element ranks first
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :KEEP], True, axis=-1)
    return keep.reshape(w.shape)


def prune_2_4(w) -> np.ndarray:
    """``w`` with all but the 2 largest-magnitude elements of every group of 4 (last axis) zeroed;
    same dtype and shape."""
    w = _weights(w)
    return np.where(sparse24_mask(w), w, np.zeros((), dtype=w.dtype))


def is_2_4(w) -> bool:
    """True if every group of 4 along the last axis has at most 2 non-zeros."""
    g = _groups(_weights(w))
    return bool(((g != 0).sum(axis=-1) <= KEEP).all())


def encode_sparse24_stream(elements, bits: int) -> np.ndarray:
    """Integer elements (a multiple of 4, at most 2 non-zeros per group of 4) -> the packed stream
    bytes (layout: :func:`decode_sparse24_stream`). The non-zeros' indexes are written ascending;
    a group with fewer than 2 non-zeros fills the rest with value 0 at the lowest free positions.
    Values are stored as their low ``bits`` bits (two's complement, or the 2-bit ternary code)."""
    g = np.asarray(elements).reshape(-1, GROUP).astype(np.int64)
    if ((g != 0).sum(axis=1) > KEEP).any():
        raise ValueError("elements are not 2:4 sparse (a group of 4 holds more than 2 non-zeros)")
    order = np.argsort(g == 0, axis=1, kind="stable")[:, :KEEP]        # non-zeros first, ascending
    vals = np.take_along_axis(g, order, axis=1) & ((1 << bits) - 1)
    fields = [(vals[:, 0], bits), (vals[:, 1], bits), (order[:, 0], 2), (order[:, 1], 2)]
    out = np.concatenate([((v[:, None].astype(np.int64) >> np.arange(w)) & 1) for v, w in fields], axis=1)
    return np.packbits(out.astype(np.uint8).reshape(-1), bitorder="little")


def decode_sparse24_stream(stream_bits: np.ndarray, count: int, bits: int, ternary: bool) -> np.ndarray:
    """The dense elements of a packed 2:4 stream, decoded as the engine does.

    ``stream_bits``: the stream as bits, least significant first (``np.unpackbits(...,
    bitorder="little")``); ``count``: dense elements (a multiple of 4); ``bits``: bits of one
    value (2 for ternary). Group ``j`` (elements ``4j .. 4j+3``) sits at stream bits
    ``[j*(2b+4), (j+1)*(2b+4))``: value ``v0`` (b bits), ``v1`` (b bits), index ``i0`` (2 bits),
    index ``i1`` (2 bits). Values are two's complement, or ternary codes (00 0, 01 +1, 11 -1,
    10 reserved = 0). Element ``4j+t`` is ``v0`` if ``i0 == t``, else ``v1`` if ``i1 == t``, else 0
    (so a repeated index keeps ``v0``).
    """
    groups = count // GROUP
    gb = 2 * bits + 4
    fields = stream_bits[:groups * gb].reshape(groups, gb).astype(np.int16)

    def field(lo: int, width: int) -> np.ndarray:
        out = np.zeros(groups, dtype=np.int16)
        for j in range(width):
            out |= fields[:, lo + j] << j
        return out

    vals = []
    for v in (field(0, bits), field(bits, bits)):
        if ternary:
            v = np.array([0, 1, 0, -1], dtype=np.int16)[v]
        else:
            v = v - ((v >= (1 << (bits - 1))).astype(np.int16) << bits)
        vals.append(v)
    i0, i1 = field(2 * bits, 2), field(2 * bits + 2, 2)
    t = np.arange(GROUP, dtype=np.int16)[None, :]
    out = np.where(i0[:, None] == t, vals[0][:, None], np.where(i1[:, None] == t, vals[1][:, None], 0))
    return out.reshape(-1).astype(np.int16)


def pair_slots(stream_bits: np.ndarray, lanes: int, ternary: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 2:4 2-bit pair line as the pair fire reads it: ``lanes`` slots ``(value, index)``.

    ``stream_bits``: ``4 * lanes`` stream bits (least significant first), two columns' chunks of
    ``lanes`` dense weights each, back to back (``lanes / 4`` packed groups each). Slots ``4q ..
    4q + 3`` are column 0's group ``q`` ``(v0, i0), (v1, i1)`` and then column 1's; values decode
    as in :func:`decode_sparse24_stream`, and a repeated index (``i1 == i0``) gives ``v1`` the
    value 0, as the dense decode keeps ``v0`` only.
    """
    groups = lanes // 2
    fields = np.asarray(stream_bits)[:groups * 8].reshape(groups, 8).astype(np.int16)

    def field(lo: int) -> np.ndarray:
        return fields[:, lo] | (fields[:, lo + 1] << 1)

    vals = []
    for v in (field(0), field(2)):
        vals.append(np.array([0, 1, 0, -1], dtype=np.int16)[v] if ternary else v - ((v >= 2) << 2))
    i0, i1 = field(4), field(6)
    vals[1] = np.where(i1 == i0, 0, vals[1])
    # [column, group, slot] -> [group, column, slot]
    order = lambda a: a.reshape(2, lanes // 4, 2).transpose(1, 0, 2).reshape(-1)     # noqa: E731
    return order(np.stack(vals, axis=1)), order(np.stack([i0, i1], axis=1))


def pair_fire_sums(x: np.ndarray, values: np.ndarray, indexes: np.ndarray, group_size: int) -> np.ndarray:
    """The pair fire's half-group sums (golden model of :class:`~hbmforge.generators.matmul.array.MacArray`
    with ``pairs``): ``x [R, L]`` activations, ``values``/``indexes`` the ``L`` slots
    (:func:`pair_slots`). Entry ``2j + h`` of a row is column ``h``'s group ``j``: the sum over
    its ``G / 2`` slots of ``value * x[4q + index]``."""
    x = np.asarray(x, dtype=np.int64)
    R, L = x.shape
    slot = np.arange(L)
    pos = slot - slot % 4 + np.asarray(indexes, dtype=np.int64)
    prods = x[:, pos] * np.asarray(values, dtype=np.int64)[None, :]
    # lanes [group j][q][column h][2] -> [j][h]
    return prods.reshape(R, L // group_size, group_size // 4, 2, 2).sum(axis=(2, 4)).reshape(R, -1)


def dense_pair_slots(stream_bits: np.ndarray, lanes: int, ternary: bool) -> tuple[np.ndarray, np.ndarray]:
    """A dense 2-bit pair line as the dense pair fire reads it: per slot the two weights ``(v0, v1)``.

    ``stream_bits``: ``4 * lanes`` stream bits (least significant first), two columns of ``lanes``
    2-bit weights each, back to back (the dense stream of two consecutive columns: no layout of
    its own). Slot ``4q + 2h + e`` holds column ``h``'s weights ``4q + 2e`` and ``4q + 2e + 1``;
    int2 codes are two's complement, ternary codes ``00 01 10 11`` read as ``0 +1 0 -1``."""
    bits = np.asarray(stream_bits)[:4 * lanes].reshape(2, lanes, 2).astype(np.int16)
    codes = bits[..., 0] | (bits[..., 1] << 1)                       # [column, k]
    vals = np.array([0, 1, 0, -1], dtype=np.int16)[codes] if ternary else codes - ((codes >= 2) << 2)
    slot = np.arange(lanes)
    h, k0 = (slot % 4) // 2, slot - slot % 4 + 2 * (slot % 2)
    return vals[h, k0], vals[h, k0 + 1]


def dense_pair_fire_sums(x: np.ndarray, v0: np.ndarray, v1: np.ndarray, group_size: int) -> np.ndarray:
    """The dense pair fire's half-group sums (golden model of
    :class:`~hbmforge.generators.matmul.array.MacArray` with ``dense_pairs``): slot ``4q + 2h + e``
    adds ``v0 * x[4q + 2e] + v1 * x[4q + 2e + 1]``; entry ``2j + h`` of a row is column ``h``'s
    group ``j``, as in :func:`pair_fire_sums` (one slot set at indexes ``2e``, one at ``2e + 1``)."""
    even = 2 * (np.arange(np.asarray(x).shape[1]) % 2)
    return pair_fire_sums(x, v0, even, group_size) + pair_fire_sums(x, v1, even + 1, group_size)
