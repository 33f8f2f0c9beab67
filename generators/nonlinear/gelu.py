"""GELU unit: ``x * Phi(x)`` (exact-erf GELU) on signed fixed point, ``lanes`` elements per cycle.

Computed as ``x - t(|x|)`` (``x >= 0``) or ``-t(|x|)`` (``x < 0``) with ``t(a) = a * Q(a)``
(``Q = 1 - Phi``) from a 2**seg_bits-segments-per-unit linear-interpolation ROM over
``[0, 8)``; beyond 8, ``t < 2**-20`` and the table's end value is used. Golden model:
:func:`hbmforge.numerics.nonlinear.gelu_int`; datapath: :mod:`.activation`.
"""
from __future__ import annotations

from .activation import TailActivation

__all__ = ["GELU"]


class GELU(TailActivation):
    """Streaming GELU. Parameters: ``width`` (4..32), ``frac_bits`` (1..width-2), ``seg_bits``
    (0..min(8, frac_bits)), ``lanes`` (1..64). Latency 3 cycles, ``lanes`` elements per cycle."""

    FUNCTION = "gelu"

    def __init__(self, *, width: int = 16, frac_bits: int = 10, seg_bits: int = 4, lanes: int = 1):
        super().__init__(width=width, frac_bits=frac_bits, seg_bits=seg_bits, lanes=lanes)
