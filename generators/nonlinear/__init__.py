"""Transformer non-linear units: GELU, SiLU, RMSNorm, LayerNorm and an integer reciprocal square root.

Each unit is bit-exact with its golden model in :mod:`hbmforge.numerics.nonlinear`; formats,
algorithms, latency and measured errors are in docs/engines/nonlinear.md.

* :class:`~.gelu.GELU`, :class:`~.silu.SiLU` - elementwise, ``lanes`` elements per cycle,
  latency 3 (shared datapath in :mod:`.activation`);
* :class:`~.rsqrt.Rsqrt` - sequential ``1/sqrt(v)`` (seed ROM + Newton), once per vector;
* :class:`~.rmsnorm.RMSNorm`, :class:`~.layernorm.LayerNorm` - vector units over ``dim``
  elements streamed ``lanes`` per beat, two passes over a double-buffered vector memory
  (shared datapath in :mod:`.norm`).
"""
from .gelu import GELU
from .layernorm import LayerNorm
from .norm import NormUnit
from .rmsnorm import RMSNorm
from .rsqrt import Rsqrt
from .silu import SiLU

__all__ = ["GELU", "SiLU", "Rsqrt", "RMSNorm", "LayerNorm", "NormUnit"]
