"""Reciprocal unit: ``1/l ~= Y / 2**(n + 16)`` (golden: :func:`hbmforge.numerics.softmax.reciprocal`).

``n = bit_length(l)``; ``X`` = the top 17 bits of ``l`` (``2**16 <= X < 2**17``); a 128-entry
seed table ``Y0`` on the 7 bits after the leading one; one Newton step
``Y = rshift_round(Y0 * (2**34 - X*Y0), 33)`` (``Y <= 2**17``, relative error < 2**-15).
A :attr:`Reciprocal.LATENCY`-stage pipeline (leading-one detector, barrel shift, ROM, ``X*Y0``,
``e``, ``Y0*e`` in DSP-sized partial products and their sums, rounding; a register after each),
so no stage is deeper than the 300 MHz budget.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...engines.attention import RECIP_TABLE_BITS, RECIP_X_BITS
from ..products import pipelined_product
from ...numerics.softmax import RECIP_TABLE

__all__ = ["Reciprocal"]


class Reciprocal(wiring.Component):
    """``(y, n) = reciprocal(l)`` for an ``l_bits``-bit unsigned ``l`` (``(0, 0)`` for 0), pipelined:
    ``y``/``n`` are the reciprocal of the ``l`` of :attr:`LATENCY` cycles before.

    Stages (each a register): leading one; normalizing shift; seed-table read; ``X*Y0``;
    ``e = 2**34 - X*Y0``; ``Y0*e`` (three stages); rounding. Each stage is at most a few LUT
    levels, one carry chain or one DSP tile.
    """

    LATENCY = 9

    def __init__(self, l_bits: int):
        if l_bits < 2:
            raise ValueError(f"l_bits must be >= 2, got {l_bits}")
        self._l_bits = l_bits
        super().__init__({"l": In(l_bits), "y": Out(RECIP_X_BITS + 1), "n": Out(range(l_bits + 1))})

    def elaborate(self, platform):
        m = Module()
        lb, xb = self._l_bits, RECIP_X_BITS
        nb = range(lb + 1)
        # 1: leading one (last assignment wins) and the input
        lead = Signal(nb)
        for b in range(lb):
            with m.If(self.l[b]):
                m.d.comb += lead.eq(b + 1)
        n1, l1 = Signal(nb), Signal(lb)
        m.d.sync += [n1.eq(lead), l1.eq(self.l)]
        # 2: X = l normalized so its leading one is bit xb-1: shift left by (lb - n), take the top xb bits
        wide = Signal(max(lb, xb) + xb)
        lsh = Signal(nb)
        m.d.comb += [lsh.eq(lb - n1), wide.eq((l1 << xb) << lsh)]
        x2, n2 = Signal(xb), Signal(nb)
        m.d.sync += [x2.eq(wide[lb:lb + xb]), n2.eq(n1)]
        # 3: seed table (a registered read)
        m.submodules.rom = rom = Memory(shape=xb + 1, depth=1 << RECIP_TABLE_BITS, init=RECIP_TABLE)
        rp = rom.read_port()
        m.d.comb += rp.addr.eq(x2[xb - 1 - RECIP_TABLE_BITS:xb - 1])
        x3, n3 = Signal(xb), Signal(nb)
        m.d.sync += [x3.eq(x2), n3.eq(n2)]
        # 4: X * Y0 (one DSP tile, registered), then 5: e = 2**(2 xb) - X * Y0
        xy4, y4, n4 = Signal(2 * xb + 1), Signal(xb + 1), Signal(nb)
        m.d.sync += [xy4.eq(x3 * rp.data), y4.eq(rp.data), n4.eq(n3)]
        e5, y5, n5 = Signal(2 * xb + 1), Signal(xb + 1), Signal(nb)
        m.d.sync += [e5.eq((1 << (2 * xb)) - xy4), y5.eq(y4), n5.eq(n4)]
        # 6..: Y0 * e, its DSP-sized partial products and their sum registered
        p, lat = pipelined_product(m, y5, e5, name="ye")
        n_p = n5
        for t in range(lat):
            nxt = Signal(nb, name=f"n_p{t}")
            m.d.sync += nxt.eq(n_p)
            n_p = nxt
        assert 5 + lat + 1 == self.LATENCY
        # last: rounding
        y = Signal(2 * xb + 1 + xb + 1)
        m.d.comb += y.eq((p + (1 << (2 * xb - 2))) >> (2 * xb - 1))
        m.d.sync += [self.n.eq(n_p), self.y.eq(Mux(n_p == 0, 0, y))]
        return m
