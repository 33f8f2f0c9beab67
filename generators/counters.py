"""Up/down counters whose late inputs only select: ``count += up - down`` with the adders on the
register alone.

Written as one expression, ``count + up - down`` puts the two pulses at the bottom of a carry
chain; when they come from a fire or handshake decision (several LUT levels already) the chain
then follows that decision. Here ``count + 1`` and ``count - 1`` are computed from the flip-flops
in parallel with the decision and the pulses pick one of three values: one LUT level after them.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux

__all__ = ["step_count"]


def step_count(m: Module, count, up, down) -> None:
    """``count`` becomes ``count + up - down`` next cycle (``up``/``down`` one-bit pulses)."""
    width = len(count)
    m.d.sync += count.eq(Mux(up == down, count, Mux(up, (count + 1)[:width], (count - 1)[:width])))
