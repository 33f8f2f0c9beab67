"""2:4 structured-sparse weights: the packed stream -> dense weight lanes.

A packed group holds 4 weights of a column in ``2b + 4`` bits: values ``v0``, ``v1`` (``b``
bits each: two's complement, or 2-bit ternary codes), indexes ``i0``, ``i1`` (2 bits each).
Lane ``t`` of the group is ``v0`` if ``i0 == t``, else ``v1`` if ``i1 == t``, else 0 (the golden
model, :func:`hbmforge.numerics.sparse.decode_sparse24_stream`, decodes the same way). The
zeros are never stored or streamed: a chunk of ``L`` dense lanes takes ``L (b + 2) / 2`` bits of
the weight ports instead of ``L b``. The expansion is one LUT level per lane bit (six inputs:
both indexes and one bit of each value).

:class:`BitGearbox` cuts the port words into such chunks when their widths are not a
power-of-two factor apart (3L bits for int4, 5L for int8).
"""
from __future__ import annotations

import math

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints

__all__ = ["BitGearbox", "sparse24_chunk_bits", "expand_sparse24"]


def sparse24_chunk_bits(lanes: int, bits: int) -> int:
    """Packed bits of ``lanes`` dense weights of ``bits`` bits (``lanes / 4`` groups)."""
    return lanes // 4 * (2 * bits + 4)


def expand_sparse24(m: Module, chunk, lanes: int, bits: int, widen, *, name: str):
    """``lanes / 4`` packed groups -> ``lanes`` dense lanes.

    ``widen(values, count)``: the ``count`` packed values (``bits`` each, concatenated) as
    signed lanes of the engine's lane width (the caller's ternary decode and sign extension),
    returned as one value of ``count`` lanes.
    """
    groups, gb = lanes // 4, 2 * bits + 4
    vals = Cat(*(chunk[g * gb:g * gb + 2 * bits] for g in range(groups)))
    wide = widen(vals, 2 * groups)
    lw = len(wide) // (2 * groups)
    out = []
    for g in range(groups):
        i0 = chunk[g * gb + 2 * bits:g * gb + 2 * bits + 2]
        i1 = chunk[g * gb + 2 * bits + 2:g * gb + 2 * bits + 4]
        v0, v1 = wide[2 * g * lw:(2 * g + 1) * lw], wide[(2 * g + 1) * lw:(2 * g + 2) * lw]
        for t in range(4):
            lane = Signal(lw, name=f"{name}_g{g}_l{t}")
            m.d.comb += lane.eq(Mux(i0 == t, v0, Mux(i1 == t, v1, 0)))
            out.append(lane)
    return Cat(*out)


class BitGearbox(wiring.Component):
    """``in_width``-bit words in, ``out_width``-bit items out, one item per cycle, for any two widths.

    The words go into a buffer of ``C = out_width - g + in_width`` bits (``g = gcd``; every
    fill level is a multiple of ``g``) at the current fill level, the output is the buffer's
    low ``out_width`` bits, and a word is accepted whenever fewer than ``out_width`` bits would
    remain after this cycle's take: a word is fetched only when the next item needs it, so one
    item leaves per cycle while the words keep up. ``o_last`` (the item ends its packet) drops
    what the buffer still holds, as :class:`~.gearbox.WidthAdapter` does.
    """

    def __init__(self, in_width: int, out_width: int):
        require_positive_ints(in_width=in_width, out_width=out_width)
        g = math.gcd(in_width, out_width)
        if g & (g - 1):
            raise ValueError(f"gcd of in_width {in_width} and out_width {out_width} must be a power of two")
        self._in_width, self._out_width, self._g = in_width, out_width, g
        self._cap = out_width - g + in_width
        super().__init__({
            "i": In(stream.Signature(in_width)),
            "o": Out(stream.Signature(out_width)),
            "o_last": In(1),
        })

    @property
    def capacity(self) -> int:
        return self._cap

    def elaborate(self, platform):
        m = Module()
        iw, ow, g, C = self._in_width, self._out_width, self._g, self._cap
        buf = Signal(C)
        have = Signal(range(C + 1))                   # bits in buf (a multiple of g)
        take = self.o.valid & self.o.ready
        m.d.comb += [self.o.payload.eq(buf[:ow]), self.o.valid.eq(have >= ow)]
        left = Signal(range(C + 1))                   # bits kept after this cycle's take
        m.d.comb += left.eq(Mux(take, Mux(self.o_last, 0, have - ow), have))
        m.d.comb += self.i.ready.eq(left < ow)
        load = self.i.valid & self.i.ready
        shifted = Signal(C)
        m.d.comb += shifted.eq(Mux(take, buf >> ow, buf))
        m.d.sync += have.eq(left + Mux(load, iw, 0))
        with m.If(load):
            seg = left >> (g.bit_length() - 1)        # fill level in units of g bits (< ow / g)
            with m.Switch(seg):
                for j in range(ow // g):
                    lo, hi = j * g, j * g + iw
                    with m.Case(j):
                        m.d.sync += buf.eq(Cat(shifted[:lo], self.i.payload, shifted[hi:]))
        with m.Else():
            m.d.sync += buf.eq(shifted)
        return m
