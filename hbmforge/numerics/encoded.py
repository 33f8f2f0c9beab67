"""Weights quantized against their *encoded* group scales, and scale products without overflow.

The matmul engine multiplies each group's int32 partial sum by an unsigned ``scale_bits``
mantissa; the host keeps one float scale per output row (docs/architecture.md §5)::

    w[n, k] ~= q[n, k] * mant[n, k // G] * row_scale[n]

:func:`quantize_weights_encoded` picks the group scales (:func:`~.quant.quantize_weights_groupwise`:
absmax for int4/int8, an MSE search for int2, absmean for ternary, per group or per tensor),
encodes them (:func:`~.quant.encode_group_scales`), then rounds the weights against the
*encoded* scales, so the mantissa rounding does not add to the weight error. Each row is first
scaled by an exact power of two (its largest magnitude to [0.5, 1)), so weights of any finite
magnitude quantize alike: the integers are those of the row at unit scale, and only
``row_scale`` carries the magnitude.

:func:`scale_product` multiplies values by several float scales (and divides by others) with
one rounding to the final exponent: tiny weight scales times huge activation scales give the
right finite product, never an intermediate ``inf`` or ``0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..mathutil import exact_log2
from .quant import encode_group_scales, quantize_weights_groupwise, weight_quant_format, weight_range

__all__ = ["EncodedWeights", "quantize_weights_encoded", "scale_product"]

_TINY = np.finfo(np.float64).tiny          # smallest normal float64


@dataclass(frozen=True)
class EncodedWeights:
    """``w ~= q * mantissas[:, k // group_size] * row_scale[:, None]`` (K padded to ``q.shape[1]``)."""

    q: np.ndarray              # int8 [N, K padded], values in weight_range(bits)
    mantissas: np.ndarray      # uint16 [N, K padded / group_size]
    row_scale: np.ndarray      # float64 [N], positive and normal
    bits: object               # 2, 4, 8 or "ternary"
    group_size: int

    def dequantize(self) -> np.ndarray:
        """float64 [N, K padded]: what the device effectively multiplies by."""
        s = np.repeat(self.mantissas.astype(np.float64), self.group_size, axis=1)
        return scale_product(self.q * s, self.row_scale[:, None])


def _row_exponents(a: np.ndarray) -> np.ndarray:
    """Per row, ``e`` with ``max |a[n]| = f * 2**e``, f in [0.5, 1) (0 for a zero row)."""
    absmax = np.abs(a).max(axis=1) if a.shape[1] else np.zeros(a.shape[0])
    return np.frexp(absmax)[1].astype(np.int64)


def _tensor_absmean(w: np.ndarray) -> float:
    """mean |w| without overflow or underflow of the sum (computed at a power-of-two scale)."""
    if w.size == 0:
        return 0.0
    top = int(_row_exponents(w.reshape(1, -1))[0])
    return float(np.ldexp(np.abs(np.ldexp(w, -top)).mean(), top))


def quantize_weights_encoded(w, bits, group_size: int, scale_bits: int, *, k_padded: int | None = None,
                             ternary_scale: str = "group") -> EncodedWeights:
    """Quantize float ``w`` [N, K] for the matmul engine; see the module docstring.

    ``bits``: 2, 4, 8 or ``"ternary"``; ``group_size``: the engine's (a power of two dividing
    ``k_padded``); ``scale_bits``: mantissa width; ``k_padded``: K zero-padded to this (default K).
    Ternary uses BitNet b1.58 absmean scaling per group (``ternary_scale="group"``) or one
    absmean of the real (unpadded) weights for the whole matrix (``"tensor"``). A group whose
    weights all round to zero gets mantissa 0. ``ValueError`` for NaN/Inf weights or rows too
    small to carry a normal float64 row scale (``max |w| below ~1e-302``).
    """
    fmt = weight_quant_format(bits, ternary_scale)
    g = 1 << exact_log2(group_size, "group_size")
    if isinstance(scale_bits, bool) or not isinstance(scale_bits, (int, np.integer)) or not 1 <= scale_bits <= 16:
        raise ValueError(f"scale_bits must be an integer in [1, 16], got {scale_bits!r}")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [N, K], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights contain {int(w.size - np.count_nonzero(np.isfinite(w)))} NaN/Inf value(s)")
    n, k = w.shape
    kp = k if k_padded is None else k_padded
    if isinstance(kp, bool) or not isinstance(kp, (int, np.integer)) or kp < k or kp % g or kp == 0:
        raise ValueError(f"k_padded must be a multiple of group_size {g} and >= K = {k}, got {k_padded!r}")

    exp = _row_exponents(w)
    wn = np.zeros((n, kp))
    wn[:, :k] = np.ldexp(w, -exp[:, None])                # exact: each row's largest |w| in [0.5, 1)
    if fmt == "ternary" and ternary_scale == "tensor":
        mean = _tensor_absmean(w)
        with np.errstate(over="ignore"):
            row_mean = np.ldexp(mean, -exp) if mean > 0 else np.ones(n)    # the tensor scale at row scale
        scales = np.repeat(row_mean[:, None], kp // g, axis=1)
        with np.errstate(invalid="ignore"):
            q0 = np.clip(np.rint(wn / row_mean[:, None]), -1, 1)
    else:
        gq = quantize_weights_groupwise(wn, fmt, g)
        scales, q0 = gq.scales, gq.q
    zero_group = ~np.any(q0.reshape(n, kp // g, g) != 0, axis=2)
    mant, rs = encode_group_scales(np.where(zero_group, 0.0, scales), int(scale_bits))
    eff = mant.astype(np.float64) * rs[:, None]                                  # encoded, at row scale
    lo, hi = weight_range(fmt)
    grouped = wn.reshape(n, kp // g, g)
    q = np.zeros_like(grouped)
    np.divide(grouped, eff[:, :, None], out=q, where=eff[:, :, None] > 0)       # 0 where the scale is 0
    q = np.clip(np.rint(q), lo, hi).astype(np.int8).reshape(n, kp)
    row_scale = np.where(mant.any(axis=1), np.ldexp(rs, exp), 1.0)
    small = row_scale < _TINY
    if small.any():
        i = int(np.argmax(small))
        raise ValueError(f"weights of row {i} are too small to encode (largest |w| = {np.abs(w[i]).max():.3g}): "
                         "its row scale would fall below float64's normal range; scale the weights up")
    return EncodedWeights(q=q, mantissas=mant, row_scale=row_scale, bits=fmt, group_size=g)


def scale_product(values, *factors, divisors=(), exp: int = 0) -> np.ndarray:
    """``values * prod(factors) / prod(divisors) * 2**exp`` in float64, rounded once at the end.

    Every scale is split into a mantissa in [0.5, 1) and an exponent (:func:`numpy.frexp`);
    the mantissas multiply the values (no overflow or underflow for finite values below
    ~2**1000), the exponents add, and :func:`numpy.ldexp` applies the total: the result is
    ``inf`` only if the exact product exceeds float64 and ``0`` only if it is below the
    smallest subnormal. Scales must be finite and >= 0 (divisors > 0); arrays broadcast.
    """
    out = np.asarray(values, dtype=np.float64)
    total = np.asarray(exp, dtype=np.int64)
    for f, invert in [(f, False) for f in factors] + [(d, True) for d in divisors]:
        f = np.asarray(f, dtype=np.float64)
        if not np.all(np.isfinite(f)) or np.any(f < 0) or (invert and np.any(f == 0)):
            raise ValueError(f"scales must be finite and >= 0 (divisors > 0), got {f!r}")
        m, e = np.frexp(f)
        out = out / m if invert else out * m
        total = total - e if invert else total + e
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(out, np.clip(total, -4000, 4000).astype(np.int32))
