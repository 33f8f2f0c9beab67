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


@dataclass(frozen=True)
class GroupQuant:
    """Symmetric per-group weights: ``w ~= q * scales[:, k // group_size]``."""

    q: np.ndarray          # int8 [N, K], values in [-qmax, qmax]
    scales: np.ndarray     # float64 [N, K // group_size]
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        return self.q.astype(np.float64) * np.repeat(self.scales, self.group_size, axis=1)


def quantize_weights_groupwise(w: np.ndarray, bits: int, group_size: int) -> GroupQuant:
    """Symmetric round-to-nearest int-``bits`` quantization with one scale per group of K."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [N, K], got shape {w.shape}")
    if bits not in (2, 4, 8):
        raise ValueError(f"bits must be one of 2, 4, 8, got {bits}")
    n, k = w.shape
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size {group_size} must divide K = {k}")
    _check_finite("weights", w)
    qmax = (1 << (bits - 1)) - 1
    g = w.reshape(n, k // group_size, group_size)
    absmax = np.abs(g).max(axis=2)
    scales = np.where(absmax > 0, absmax / qmax, 1.0)
    q = np.clip(np.rint(g / scales[:, :, None]), -qmax, qmax).astype(np.int8).reshape(n, k)
    return GroupQuant(q=q, scales=scales, bits=bits, group_size=group_size)


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
