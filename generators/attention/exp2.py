"""Base-2 exponential unit: ``p = 2**-d`` (golden: :func:`hbmforge.numerics.softmax.exp2_neg`).

``d`` is unsigned with 8 fraction bits; ``p`` unsigned with 15 fraction bits (``2**15`` = 1.0).
A 256 x 16-bit table holds ``round(2**15 * 2**(-f/256))`` for the fraction ``f``; the integer
part ``i`` shifts it right with round-half-up; ``i >= 17`` gives 0.

``registered=False``: combinational (a ROM read and a barrel shifter; the caller registers the
result). ``registered=True`` (``LATENCY`` 1): the table read is synchronous and the integer
part is registered beside it, so ``p`` follows ``d`` by one cycle and the register splits the
ROM from the shifter (two short paths instead of one that misses 300 MHz).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...engines.attention import P_FRAC, SCORE_FRAC
from ...numerics.softmax import EXP2_TABLE, EXP2_ZERO_SHIFT

__all__ = ["Exp2"]


class Exp2(wiring.Component):
    """``p = exp2_neg(d)`` for a ``d_bits``-bit unsigned ``d`` (``LATENCY`` cycles later)."""

    def __init__(self, d_bits: int = 25, *, registered: bool = False):
        if d_bits <= SCORE_FRAC:
            raise ValueError(f"d_bits must exceed {SCORE_FRAC}, got {d_bits}")
        self._d_bits = d_bits
        self._registered = bool(registered)
        super().__init__({"d": In(d_bits), "p": Out(P_FRAC + 1)})

    @property
    def LATENCY(self) -> int:
        return 1 if self._registered else 0

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=P_FRAC + 1, depth=1 << SCORE_FRAC, init=EXP2_TABLE)
        # the shift amount, clamped: i >= 17 gives 0 whatever the table says
        zero = Signal()
        sh = Signal(range(EXP2_ZERO_SHIFT + 1))
        i = self.d[SCORE_FRAC:]
        zero_now = i >= EXP2_ZERO_SHIFT
        sh_now = Mux(zero_now, EXP2_ZERO_SHIFT, i)
        if self._registered:
            rp = rom.read_port()                       # synchronous: data one cycle after addr
            m.d.sync += [zero.eq(zero_now), sh.eq(sh_now)]
        else:
            rp = rom.read_port(domain="comb")
            m.d.comb += [zero.eq(zero_now), sh.eq(sh_now)]
        m.d.comb += rp.addr.eq(self.d[:SCORE_FRAC])
        # rshift_round(t, s) = ((t >> (s-1)) + 1) >> 1 for s >= 1
        t = rp.data
        rounded = ((t >> (sh - 1)[:5]) + 1) >> 1
        m.d.comb += self.p.eq(Mux(zero, 0, Mux(sh == 0, t, rounded)))
        return m
