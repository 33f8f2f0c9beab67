"""LayerNorm unit: ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` over vectors of ``dim`` elements.

Computed as ``(D*x - S1) / sqrt(D*S2 - S1^2 + D^2*eps) * gamma + beta`` with the exact
integer sums ``S1 = sum(x)``, ``S2 = sum(x^2)``: the mean is never rounded and the
variance never cancels. See :mod:`.norm` for the blocks and timing and
:func:`hbmforge.numerics.nonlinear.layernorm_int` for the golden model.
"""
from __future__ import annotations

from .norm import NormUnit

__all__ = ["LayerNorm"]


class LayerNorm(NormUnit):
    """Streaming LayerNorm; ports as :class:`~.rmsnorm.RMSNorm`, plus ``beta`` (signed
    ``out_width`` bits, ``out_frac_bits``) in each ``params`` beat, added before saturation."""

    CENTER = True
