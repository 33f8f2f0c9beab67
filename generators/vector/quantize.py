"""The store stage's quantizer: one word of int32 lanes -> one chunk of int8 (or int4) values.

Golden model: :func:`hbmforge.numerics.vector.quantize_group` / ``kv_quantize``:
``q = clamp(rsr(v * mult, shift), -qmax, qmax)``; int8 lanes become bytes (lane 0 first), int4
lanes nibbles (the even lane in the low nibble). Fixed latency :attr:`LATENCY`: the inputs
registered, the products (DSP-sized partial products), the rounding shift in three stages, then
clamp and pack.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..products import pipelined_product, product_latency
from .arith import RSR_STAGES, clamp, delayed, lanes_of, rsr_var_staged, valid_chain

__all__ = ["ChunkQuantizer"]


class ChunkQuantizer(wiring.Component):
    #: inputs registered, the product (2), the rounding shift (3), clamp and pack
    LATENCY = 1 + product_latency(32, 25) + RSR_STAGES + 1

    def __init__(self, *, lanes: int, segments: int = 1):
        """``segments``: the lanes split into that many equal runs, each with its own multiplier and
        shift (``mult`` and ``shift`` hold one per segment, segment 0 in the low bits): a four-word
        KV op spans two scale groups."""
        if lanes % segments:
            raise ValueError(f"lanes {lanes} must be a multiple of segments {segments}")
        self._lanes, self._segments = lanes, segments
        super().__init__({
            "i_valid": In(1), "x": In(32 * lanes), "mult": In(25 * segments), "shift": In(7 * segments),
            "int4": In(1),
            "o_valid": Out(1), "o": Out(8 * lanes),        # int8: L bytes; int4: L/2 bytes in the low half
        })

    def elaborate(self, platform):
        m = Module()
        L, S = self._lanes, self._segments
        m.d.comb += self.o_valid.eq(valid_chain(m, self.i_valid, self.LATENCY)[-1])

        def delay(sig, n, name):
            return delayed(m, sig, n, name=name)

        x1 = Signal.like(self.x)
        i4 = Signal()
        m.d.sync += [x1.eq(self.x), i4.eq(self.int4)]
        lat = product_latency(32, 25)
        i4_r = delay(i4, lat + RSR_STAGES, "i4")
        segs = []
        for k in range(S):
            mult1, sh_m1, sh_z = Signal(25, name=f"mult1_{k}"), Signal(7, name=f"sh_m1_{k}"), Signal(name=f"sh_z_{k}")
            shift = self.shift[7 * k:7 * k + 7]
            m.d.sync += [mult1.eq(self.mult[25 * k:25 * k + 25]), sh_m1.eq(shift - 1), sh_z.eq(shift == 0)]
            segs.append((mult1, delay(sh_m1, lat, f"sh_m1_{k}"), delay(sh_z, lat, f"sh_z_{k}")))
        q = []
        for i, x in enumerate(lanes_of(x1, L)):
            mult1, s_m1, s_z = segs[i // (L // S)]
            p, _ = pipelined_product(m, x, mult1, name=f"p{i}")
            r = rsr_var_staged(m, p, s_m1, s_z, name=f"r{i}")
            q.append(Mux(i4_r, clamp(r, -7, 7), clamp(r, -127, 127)))
        bytes8 = Cat(*(v[:8] for v in q))
        nibbles = Cat(*(v[:4] for v in q))
        m.d.sync += self.o.eq(Mux(i4_r, nibbles, bytes8))
        return m
