"""RMSNorm unit: ``y = x / sqrt(mean(x^2) + eps) * gamma`` over vectors of ``dim`` elements.

Computed as ``(D*x) / sqrt(D*sum(x^2) + D^2*eps) * gamma`` with exact integer sums (the
LayerNorm datapath with ``S1 = 0`` and no beta); see :mod:`.norm` for the blocks and timing
and :func:`hbmforge.numerics.nonlinear.rmsnorm_int` for the golden model.
"""
from __future__ import annotations

from .norm import NormUnit

__all__ = ["RMSNorm"]


class RMSNorm(NormUnit):
    """Streaming RMSNorm. ``i``: ``dim / lanes`` beats of ``lanes`` signed ``width``-bit inputs
    (``frac_bits``); ``o``: as many beats of signed ``out_width``-bit outputs (``out_frac_bits``),
    saturated; ``params``: ``{addr, gamma}`` beats (signed ``gamma_width``, ``gamma_frac_bits``)."""

    CENTER = False
