"""Base-2 exponential unit: ``p = 2**-d`` (golden: :func:`hbmforge.numerics.softmax.exp2_neg`).

``d`` is unsigned with 8 fraction bits; ``p`` unsigned with 15 fraction bits (``2**15`` = 1.0).
A 256 x 16-bit table holds ``round(2**15 * 2**(-f/256))`` for the fraction ``f``; the integer
part ``i`` shifts it right with round-half-up; ``i >= 17`` gives 0.

``registered=False``: combinational (a ROM read and a barrel shifter; the caller registers the
result). ``registered=True`` (``LATENCY`` 1): the table read is registered (four 64-entry
quarters and a 4:1 select: two LUT levels) and the integer part beside it, so ``p`` follows
``d`` by one cycle and the register splits the table from the shifter (two short paths instead
of one that misses 300 MHz).
"""
from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal
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
        # the shift amount, clamped: i >= 17 gives 0 whatever the table says; with it its
        # ``shift - 1`` and ``shift == 0``, so the rounding shift starts from a register
        zero, s_zero = Signal(), Signal()
        sm1 = Signal(range(EXP2_ZERO_SHIFT + 1))
        i = self.d[SCORE_FRAC:]
        # (from i itself: when i >= 17 the output is 0 whatever sm1 and s_zero say)
        shift_now = [zero.eq(i >= EXP2_ZERO_SHIFT), s_zero.eq(i == 0), sm1.eq((i[:len(sm1)] - 1)[:len(sm1)])]
        f = self.d[:SCORE_FRAC]
        if self._registered:
            # the table as four 64-entry quarters (one LUT6 a bit each, their outputs kept so
            # synthesis cannot fold them into a deeper cone) and a 4:1 select, registered
            quarter = 1 << (SCORE_FRAC - 2)
            quarters = []
            for q in range(4):
                rows = EXP2_TABLE[q * quarter:(q + 1) * quarter]
                out = Signal(P_FRAC + 1, name=f"exp2_q{q}", attrs={"keep": 1})
                m.d.comb += out.eq(Array(Const(v, P_FRAC + 1) for v in rows)[f[:SCORE_FRAC - 2]])
                quarters.append(out)
            t = Signal(P_FRAC + 1)
            m.d.sync += [t.eq(Array(quarters)[f[SCORE_FRAC - 2:]]), *shift_now]
        else:
            m.submodules.rom = rom = Memory(shape=P_FRAC + 1, depth=1 << SCORE_FRAC, init=EXP2_TABLE)
            rp = rom.read_port(domain="comb")
            m.d.comb += [rp.addr.eq(f), *shift_now]
            t = rp.data
        # rshift_round(t, s) = ((t >> (s-1)) + 1) >> 1 for s >= 1
        rounded = ((t >> sm1) + 1) >> 1
        m.d.comb += self.p.eq(Mux(zero, 0, Mux(s_zero, t, rounded)))
        return m
