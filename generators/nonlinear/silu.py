"""SiLU unit: ``x * sigmoid(x)`` on signed fixed point, ``lanes`` elements per cycle.

``x * sigmoid(x) = x - x * sigmoid(-x)``, so the unit computes ``x - t(|x|)`` (``x >= 0``)
or ``-t(|x|)`` (``x < 0``) with the sigmoid tail ``t(a) = a * sigmoid(-a) = a / (1 + e^a)``
from a linear-interpolation ROM over ``[0, 16)`` (``t(16) < 2**-19``). This needs no full
``x * sigmoid`` multiplier and its error does not grow with ``|x|``. Golden model:
:func:`hbmforge.numerics.nonlinear.silu_int`; datapath: :mod:`.activation`.
"""
from __future__ import annotations

from .activation import TailActivation

__all__ = ["SiLU"]


class SiLU(TailActivation):
    """Streaming SiLU. Parameters as :class:`~.gelu.GELU`. Latency 3 cycles, ``lanes`` elements per cycle."""

    FUNCTION = "silu"

    def __init__(self, *, width: int = 16, frac_bits: int = 10, seg_bits: int = 4, lanes: int = 1):
        super().__init__(width=width, frac_bits=frac_bits, seg_bits=seg_bits, lanes=lanes)
