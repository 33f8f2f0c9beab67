"""Quantizers the host applies before data reaches the device.

These run on the host in float, so their rounding (NumPy's round-half-even)
is not mirrored in RTL; what the device computes from their integer outputs is
(see :mod:`hbmforge.numerics.matmul`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); refusing to quantize")


WEIGHT_FORMATS = (2, 4, 8, "ternary")


def weight_format(fmt):
    """Normalise a weight format: 2, 4, 8 or ``"ternary"`` (descriptor code 3 is accepted too)."""
    if isinstance(fmt, bool):
        raise ValueError(f"weight format must be one of 2, 4, 8, 'ternary', got {fmt!r}")
    if fmt == "ternary" or (isinstance(fmt, (int, np.integer)) and fmt == 3):
        return "ternary"
    if isinstance(fmt, (int, np.integer)) and int(fmt) in (2, 4, 8):
        return int(fmt)
    raise ValueError(f"weight format must be one of 2, 4, 8, 'ternary', got {fmt!r}")


def weight_range(fmt) -> tuple[int, int]:
    """Integer range the *quantizers* produce for a format (what the host writes).

    int8 [-127, 127] and int4 [-7, 7] are symmetric (the most negative code is
    unused, so negation is exact); int2 uses the whole two's-complement range
    [-2, 1] (a symmetric int2 would be ternary); ternary is [-1, 1].
    """
    fmt = weight_format(fmt)
    if fmt == "ternary":
        return -1, 1
    if fmt == 2:
        return -2, 1
    q = (1 << (fmt - 1)) - 1
    return -q, q


def storage_range(fmt) -> tuple[int, int]:
    """Integer range a format can *hold* in memory (what the packers and the engine accept)."""
    fmt = weight_format(fmt)
    if fmt == "ternary":
        return -1, 1
    return -(1 << (fmt - 1)), (1 << (fmt - 1)) - 1


@dataclass(frozen=True)
class GroupQuant:
    """Per-group weights: ``w ~= q * scales[:, k // group_size]``."""

    q: np.ndarray          # int8 [N, K], values in weight_range(bits)
    scales: np.ndarray     # float64 [N, K // group_size]
    bits: object           # 2, 4, 8 or "ternary"
    group_size: int

    def dequantize(self) -> np.ndarray:
        return self.q.astype(np.float64) * np.repeat(self.scales, self.group_size, axis=1)


# Clipping ratios tried by the int2 scale search (scale = ratio * absmax of the group).
_INT2_RATIOS = np.linspace(0.1, 1.0, 37)


def _int2_scales(g: np.ndarray) -> np.ndarray:
    """Per-group int2 scale minimising the squared error of ``clip(rint(w/s), -2, 1) * s``.

    A grid search over ``s = r * absmax`` (``_INT2_RATIOS``), in row chunks to bound memory;
    deterministic and exact for a given input.
    """
    n, ng, gs = g.shape
    absmax = np.abs(g).max(axis=2)
    best_s = np.where(absmax > 0, absmax / 2.0, 1.0)
    rows = max(1, (1 << 22) // max(1, ng * gs))
    for r0 in range(0, n, rows):
        gc = g[r0:r0 + rows]
        am = absmax[r0:r0 + rows]
        best_e = np.full(am.shape, np.inf)
        bs = best_s[r0:r0 + rows]
        for ratio in _INT2_RATIOS:
            s = np.where(am > 0, am * ratio, 1.0)
            q = np.clip(np.rint(gc / s[..., None]), -2, 1)
            e = np.square(q * s[..., None] - gc).sum(axis=2)
            better = e < best_e
            best_e = np.where(better, e, best_e)
            bs = np.where(better, s, bs)
        best_s[r0:r0 + rows] = bs
    return best_s


def weight_quant_format(bits, ternary_scale: str = "group"):
    """The weight quantizers' ``bits`` (2, 4, 8, "ternary") as a format, with ``ternary_scale``
    ("group" or "tensor") checked; ``ValueError`` naming the bad one."""
    try:
        fmt = weight_format(bits)
    except ValueError:
        raise ValueError(f"bits must be one of 2, 4, 8, 'ternary', got {bits!r}") from None
    if ternary_scale not in ("group", "tensor"):
        raise ValueError(f"ternary_scale must be 'group' or 'tensor', got {ternary_scale!r}")
    return fmt


def quantize_weights_groupwise(w: np.ndarray, bits, group_size: int, *,
                               ternary_scale: str = "group") -> GroupQuant:
    """Round-to-nearest quantization of ``w`` [N, K] with one scale per group of K.

    * ``bits`` 4, 8: symmetric, ``scale = absmax / qmax``, q in [-qmax, qmax];
    * ``bits`` 2: the whole range [-2, 1], scale chosen per group to minimise the
      squared error (a clipping search; ``absmax / 2`` would waste the +2 level);
    * ``bits`` "ternary" (BitNet b1.58 absmean): ``scale = mean |w|`` over the group
      (``ternary_scale="group"``, reusing the engine's group-scale path) or over the
      whole tensor (``"tensor"``, as BitNet does; every group then has the same
      scale), ``q = clip(round(w / scale), -1, 1)``.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [N, K], got shape {w.shape}")
    fmt = weight_quant_format(bits, ternary_scale)
    n, k = w.shape
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or group_size <= 0 or k % group_size:
        raise ValueError(f"group_size {group_size} must divide K = {k}")
    _check_finite("weights", w)
    lo, hi = weight_range(fmt)
    g = w.reshape(n, k // group_size, group_size)
    if fmt == "ternary":
        if ternary_scale == "tensor":
            mean = float(np.abs(w).mean()) if w.size else 0.0
            absmean = np.full(g.shape[:2], mean)
        else:
            absmean = np.abs(g).mean(axis=2)
        scales = np.where(absmean > 0, absmean, 1.0)
    elif fmt == 2:
        scales = _int2_scales(g)
    else:
        absmax = np.abs(g).max(axis=2)
        scales = np.where(absmax > 0, absmax / hi, 1.0)
    q = np.clip(np.rint(g / scales[:, :, None]), lo, hi).astype(np.int8).reshape(n, k)
    return GroupQuant(q=q, scales=scales, bits=fmt, group_size=group_size)


def encode_group_scales(scales: np.ndarray, scale_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Split float group scales into per-row float scales and unsigned integer mantissas.

    ``scales[n, g] ~= row_scale[n] * mant[n, g]`` with ``mant`` in
    ``[0, 2**scale_bits - 1]`` and the largest group of each row at full scale;
    the relative error of group g is at most ``0.5 / mant[n, g]``.
    """
    scales = np.asarray(scales, dtype=np.float64)
    _check_finite("scales", scales)
    if np.any(scales < 0):
        raise ValueError("scales must be non-negative")
    top = (1 << scale_bits) - 1
    rmax = scales.max(axis=1)
    row_scale = np.where(rmax > 0, rmax / top, 1.0)
    mant = np.clip(np.rint(scales / row_scale[:, None]), 0, top).astype(np.uint16)
    return mant, row_scale


@dataclass(frozen=True)
class ActQuant:
    """int8 activations: ``x ~= q * scale[:, None]`` (one scale per row, or one for all)."""

    q: np.ndarray          # int8 [M, K]
    scale: np.ndarray      # float64 [M]


def quantize_activations_per_token(x: np.ndarray) -> ActQuant:
    """Dynamic symmetric int8 with one scale per row (token), range [-127, 127]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D [M, K], got shape {x.shape}")
    _check_finite("activations", x)
    absmax = np.abs(x).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return ActQuant(q=q, scale=scale)


def quantize_activations_per_tensor(x: np.ndarray, scale: float | None = None) -> ActQuant:
    """Static symmetric int8 with one scale for the whole tensor (needed for int8 outputs)."""
    x = np.asarray(x, dtype=np.float64)
    _check_finite("activations", x)
    if scale is None:
        absmax = float(np.abs(x).max()) if x.size else 0.0
        scale = absmax / 127.0 if absmax > 0 else 1.0
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return ActQuant(q=q, scale=np.full(x.shape[0], scale))


def dyadic_multiplier(real: np.ndarray | float, mult_bits: int = 32, max_shift: int = 127):
    """Approximate each ``real`` > 0 by ``mult * 2**-shift`` with ``mult`` < 2**(mult_bits-1).

    Returns int64 arrays ``(mult, shift)``. The relative error is at most
    ``2**-(mult_bits - 2)`` unless ``shift`` hits ``max_shift`` (tiny reals).
    """
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    _check_finite("requantization scale", real)
    if np.any(real < 0):
        raise ValueError("requantization scales must be >= 0")
    mult = np.zeros(real.shape, dtype=np.int64)
    shift = np.zeros(real.shape, dtype=np.int64)
    top = 1 << (mult_bits - 1)
    for i, r in np.ndenumerate(real):
        if r == 0:
            continue
        # choose the largest shift keeping mult below 2**(mult_bits-1)
        e = math.frexp(r)[1]                   # r = f * 2**e, f in [0.5, 1)
        s = min(max_shift, mult_bits - 1 - e)
        if s < 0:
            raise ValueError(f"requantization scale {r} too large for a {mult_bits}-bit multiplier")
        m = round(r * (1 << s))
        if m >= top:
            m //= 2
            s -= 1
        mult[i], shift[i] = m, s
    return mult, shift


@dataclass(frozen=True)
class RequantErrorBound:
    """Worst-case error of the INT8 output stage against float, for one column.

    ``y = sat8(rshift_round(acc * mult, shift))`` approximates ``acc * real``:

    * ``mult_error`` δ = ``|mult * 2^-shift - real|``, at most ``2^-(shift + 1)``
      (round to nearest at resolution ``2^-shift``), i.e. a relative error of at
      most ``2^-(mult_bits - 1)`` unless ``shift`` was clamped at ``max_shift``;
    * ``lsb_vs_rounded``: ``|y - sat8(round_half_up(acc * real))| <= ceil(a * δ)``
      for every ``|acc| <= acc_max``, with ``a = min(acc_max, 129 / (real - δ))``
      (beyond ``a`` both sides saturate alike); 1 LSB for any 32-bit multiplier;
    * ``abs_vs_float``: ``|y - acc * real| <= 1/2 + a * δ`` for unsaturated outputs.
    """

    mult: int
    shift: int
    mult_error: float
    rel_mult_error: float
    lsb_vs_rounded: int
    abs_vs_float: float


def requant_error_bound(real: float, acc_max: int, *, mult_bits: int = 32,
                        max_shift: int = 127) -> RequantErrorBound:
    """The stated worst case of :func:`dyadic_multiplier` + ``rshift_round`` + ``sat8``.

    Derivation (``r = real``, ``d = mult * 2^-shift - r``, ``|d| <= δ``):
    ``rshift_round(acc*mult, shift) = round_half_up(acc*r + acc*d)``; rounding is
    monotone and commutes with integer shifts, so it moves by at most
    ``ceil(|acc*d|)`` from ``round_half_up(acc*r)``; ``sat8`` is monotone and
    1-Lipschitz, so saturation cannot increase the difference. Against the float
    value the rounding adds at most 1/2.
    """
    from fractions import Fraction

    if isinstance(acc_max, bool) or not isinstance(acc_max, (int, np.integer)) or acc_max < 0:
        raise ValueError(f"acc_max must be an integer >= 0, got {acc_max!r}")
    mult, shift = (int(v[0]) for v in dyadic_multiplier(real, mult_bits, max_shift))
    r = Fraction(float(real))
    d = abs(Fraction(mult, 1 << shift) - r)
    assert d <= Fraction(1, 1 << (shift + 1))
    a = Fraction(int(acc_max))
    if r > d:
        a = min(a, Fraction(129) / (r - d))
    lsb = int(-(-(a * d).numerator // (a * d).denominator))
    rel = float(d / r) if r else 0.0
    return RequantErrorBound(mult=mult, shift=shift, mult_error=float(d), rel_mult_error=rel,
                             lsb_vs_rounded=lsb, abs_vs_float=float(Fraction(1, 2) + a * d))
