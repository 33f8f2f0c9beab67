"""Reciprocal unit: ``1/l ~= Y / 2**(n + 16)`` (golden: :func:`hbmforge.numerics.softmax.reciprocal`).

``n = bit_length(l)``; ``X`` = the top 17 bits of ``l`` (``2**16 <= X < 2**17``); a 128-entry
seed table ``Y0`` on the 7 bits after the leading one; one Newton step
``Y = rshift_round(Y0 * (2**34 - X*Y0), 33)`` (``Y <= 2**17``, relative error < 2**-15).
Combinational (leading-one detector, barrel shift, ROM, two multipliers); the caller registers.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...engines.attention import RECIP_TABLE_BITS, RECIP_X_BITS
from ...numerics.softmax import RECIP_TABLE

__all__ = ["Reciprocal"]


class Reciprocal(wiring.Component):
    """``(y, n) = reciprocal(l)`` for an ``l_bits``-bit unsigned ``l`` (``(0, 0)`` for 0)."""

    def __init__(self, l_bits: int):
        if l_bits < 2:
            raise ValueError(f"l_bits must be >= 2, got {l_bits}")
        self._l_bits = l_bits
        super().__init__({"l": In(l_bits), "y": Out(RECIP_X_BITS + 1), "n": Out(range(l_bits + 1))})

    def elaborate(self, platform):
        m = Module()
        lb, xb = self._l_bits, RECIP_X_BITS
        n = Signal(range(lb + 1))
        for b in range(lb):                       # leading one (last assignment wins)
            with m.If(self.l[b]):
                m.d.comb += n.eq(b + 1)
        # X = l normalized so its leading one is bit xb-1: shift left by (lb - n), take the top xb bits
        wide = Signal(max(lb, xb) + xb)
        lsh = Signal(range(lb + 1))
        m.d.comb += lsh.eq(lb - n)
        m.d.comb += wide.eq((self.l << xb) << lsh)
        x = Signal(xb)
        m.d.comb += x.eq(wide[lb:lb + xb])
        m.submodules.rom = rom = Memory(shape=xb + 1, depth=1 << RECIP_TABLE_BITS, init=RECIP_TABLE)
        rp = rom.read_port(domain="comb")
        m.d.comb += rp.addr.eq(x[xb - 1 - RECIP_TABLE_BITS:xb - 1])
        e = Signal(2 * xb + 1)
        m.d.comb += e.eq((1 << (2 * xb)) - x * rp.data)
        y = Signal(2 * xb + 1 + xb + 1)
        m.d.comb += y.eq((rp.data * e + (1 << (2 * xb - 2))) >> (2 * xb - 1))
        m.d.comb += [self.n.eq(n), self.y.eq(y)]
        with m.If(n == 0):
            m.d.comb += self.y.eq(0)
        return m
