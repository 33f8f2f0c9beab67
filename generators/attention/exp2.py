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
        # the shift amount, clamped: i >= 17 gives 0 whatever the table says; with it its
        # ``shift - 1`` and ``shift == 0``, so the rounding shift starts from a register
        zero, s_zero = Signal(), Signal()
        sm1 = Signal(range(EXP2_ZERO_SHIFT + 1))
        i = self.d[SCORE_FRAC:]
        # (from i itself: when i >= 17 the output is 0 whatever sm1 and s_zero say)
        shift_now = [zero.eq(i >= EXP2_ZERO_SHIFT), s_zero.eq(i == 0), sm1.eq((i[:len(sm1)] - 1)[:len(sm1)])]
        if self._registered:
            rp = rom.read_port()                       # synchronous: data one cycle after addr
            m.d.sync += shift_now
        else:
            rp = rom.read_port(domain="comb")
            m.d.comb += shift_now
        m.d.comb += rp.addr.eq(self.d[:SCORE_FRAC])
        # rshift_round(t, s) = ((t >> (s-1)) + 1) >> 1 for s >= 1
        t = rp.data
        rounded = ((t >> sm1) + 1) >> 1
        m.d.comb += self.p.eq(Mux(zero, 0, Mux(s_zero, t, rounded)))
        return m
