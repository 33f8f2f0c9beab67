"""Golden model of the low-bit matmul engine, bit-exact with the RTL.

The engine computes, for int8 activations ``x`` [M, K], signed weights ``w``
[N, K] and unsigned group-scale mantissas ``s`` [N, K / G]::

    part[m, n, g] = sum_{k in group g} x[m, k] * w[n, k]      (exact, group_bits wide)
    acc[m, n]     = sum_g part[m, n, g] * s[n, g]              (exact, sum_bits wide)
                    + (bias[n] << bias_shift)                  (optional int32 bias; acc_bits wide)

and then one of the two output stages:

* int32: ``sat32(rshift_round(acc, out_shift))``
* int8:  ``sat8(rshift_round(acc * mult[n], shift[n]))``

Widths are in :class:`hbmforge.engines.matmul.MatmulWidths`; integer sums are exact, so the
order of accumulation does not matter: K split into slices (partial sums kept in int64 between
them, the bias added in the first) gives the same ``acc`` as one pass.
"""
from __future__ import annotations

import numpy as np

from .fixed import rshift_round, saturate


def _check_operands(x, w, s, group_size):
    x = np.asarray(x)
    w = np.asarray(w)
    s = np.asarray(s)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need x [M, K] and w [N, K] with equal K, got {x.shape} and {w.shape}")
    k = x.shape[1]
    if k % group_size:
        raise ValueError(f"group_size {group_size} must divide K = {k}")
    if s.shape != (w.shape[0], k // group_size):
        raise ValueError(f"scales must be [N, K/G] = {(w.shape[0], k // group_size)}, got {s.shape}")
    if np.any(s < 0):
        raise ValueError("scale mantissas are unsigned")
    return x.astype(np.int64), w.astype(np.int64), s.astype(np.int64)


def matmul_accumulate(x, w, s, group_size: int) -> np.ndarray:
    """The engine's accumulator ``acc[m, n]`` as Python-int objects (no overflow possible)."""
    x, w, s = _check_operands(x, w, s, group_size)
    m, k = x.shape
    n = w.shape[0]
    acc = np.zeros((m, n), dtype=object)
    for g in range(k // group_size):
        sl = slice(g * group_size, (g + 1) * group_size)
        part = x[:, sl] @ w[:, sl].T                      # |part| < 2**(8 + 8 + log2 G) fits int64
        acc += part.astype(object) * s[:, g].astype(object)[None, :]
    return acc


def add_bias(acc: np.ndarray, bias, bias_shift: int = 0) -> np.ndarray:
    """``acc[m, n] + (bias[n] << bias_shift)`` (Python ints; ``bias`` int32 per column or None)."""
    if bias is None:
        return acc
    bias = np.asarray(bias, dtype=np.int64).reshape(-1)
    if bias.shape != (acc.shape[1],):
        raise ValueError(f"bias must have {acc.shape[1]} entries (one per column), got {bias.size}")
    if np.any(bias < -(1 << 31)) or np.any(bias >= 1 << 31):
        raise ValueError("bias must fit in int32")
    if not isinstance(bias_shift, (int, np.integer)) or bias_shift < 0:
        raise ValueError(f"bias_shift must be an integer >= 0, got {bias_shift!r}")
    return acc + np.array([int(b) << int(bias_shift) for b in bias], dtype=object)[None, :]


def matmul_int32(x, w, s, group_size: int, out_shift: int = 0, *, bias=None, bias_shift: int = 0) -> np.ndarray:
    """int32 output mode: ``sat32(rshift_round(acc, out_shift))`` (``acc`` with the bias, if any)."""
    if not 0 <= out_shift <= 63:
        raise ValueError(f"out_shift must be in [0, 63], got {out_shift}")
    acc = add_bias(matmul_accumulate(x, w, s, group_size), bias, bias_shift)
    return saturate(rshift_round(acc, out_shift), 32).astype(np.int32)


def matmul_int8(x, w, s, group_size: int, mult, shift, *, bias=None, bias_shift: int = 0) -> np.ndarray:
    """int8 output mode: ``sat8(rshift_round(acc * mult[n], shift[n]))`` (``acc`` with the bias, if any)."""
    acc = add_bias(matmul_accumulate(x, w, s, group_size), bias, bias_shift)
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    n = acc.shape[1]
    if mult.shape != (n,) or shift.shape != (n,):
        raise ValueError(f"mult and shift must have shape ({n},)")
    if np.any(mult < -(1 << 31)) or np.any(mult >= 1 << 31):
        raise ValueError("mult must fit in int32")
    if np.any(shift < 0) or np.any(shift > 127):
        raise ValueError("shift must be in [0, 127]")
    prod = acc * mult.astype(object)[None, :]
    return saturate(rshift_round(prod, shift[None, :]), 8).astype(np.int8)


def matmul_reference_float(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What the quantized engine approximates: ``x @ w.T`` in float64."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
