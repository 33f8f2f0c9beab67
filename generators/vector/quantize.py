"""The store stage's quantizer: one word of int32 lanes -> one chunk of int8 (or int4) values.

Golden model: :func:`hbmforge.numerics.vector.quantize_group` / ``kv_quantize``:
``q = clamp(rsr(v * mult, shift), -qmax, qmax)``; int8 lanes become bytes (lane 0 first), int4
lanes nibbles (the even lane in the low nibble). Fixed latency :attr:`LATENCY`: t1 products,
t2 round, clamp, pack.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .arith import clamp, lanes_of, rsr_var

__all__ = ["ChunkQuantizer"]


class ChunkQuantizer(wiring.Component):
    LATENCY = 2

    def __init__(self, *, lanes: int):
        self._lanes = lanes
        super().__init__({
            "i_valid": In(1), "x": In(32 * lanes), "mult": In(25), "shift": In(7), "int4": In(1),
            "o_valid": Out(1), "o": Out(8 * lanes),        # int8: L bytes; int4: L/2 bytes in the low half
        })

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        v1, v2 = Signal(), Signal()
        m.d.sync += [v1.eq(self.i_valid), v2.eq(v1)]
        m.d.comb += self.o_valid.eq(v2)
        sh1 = Signal.like(self.shift)
        i4 = Signal()
        m.d.sync += [sh1.eq(self.shift), i4.eq(self.int4)]
        q = []
        for i, x in enumerate(lanes_of(self.x, L)):
            p = Signal(signed(58), name=f"p{i}")
            m.d.sync += p.eq(x * self.mult)
            r = rsr_var(m, p, sh1, name=f"r{i}")
            q.append(Mux(i4, clamp(r, -7, 7), clamp(r, -127, 127)))
        bytes8 = Cat(*(v[:8] for v in q))
        nibbles = Cat(*(v[:4] for v in q))
        m.d.sync += self.o.eq(Mux(i4, nibbles, bytes8))
        return m
