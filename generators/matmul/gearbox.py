"""Stream width adapter between memory words and the items the engine consumes.

Weights, scales, requant parameters and activations all arrive as port words
whose width is a power-of-two multiple or fraction of the item width, so one
adapter covers them: it either splits a word into items (low bits first) or
gathers words into an item (first word in the low bits). Packets (one per row
block) end mid-word when the buffer is padded to whole words; the consumer
raises ``o_last`` with the packet's last item and the rest of that word is
dropped, so the next packet starts on a fresh word.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints

__all__ = ["WidthAdapter"]


def _is_pow2(v: int) -> bool:
    return v > 0 and not v & (v - 1)


class WidthAdapter(wiring.Component):
    """``in_width``-bit words in, ``out_width``-bit items out, one item per cycle.

    The output is registered (a buffer word), and a new word is loaded in the
    same cycle the buffer's last item is taken, so a consumer that takes an
    item every cycle never sees a bubble.
    """

    def __init__(self, in_width: int, out_width: int):
        require_positive_ints(in_width=in_width, out_width=out_width)
        if max(in_width, out_width) % min(in_width, out_width) or not _is_pow2(
                max(in_width, out_width) // min(in_width, out_width)):
            raise ValueError(f"in_width {in_width} and out_width {out_width} must differ by a "
                             f"power-of-two factor")
        self._in_width, self._out_width = in_width, out_width
        super().__init__({
            "i": In(stream.Signature(in_width)),
            "o": Out(stream.Signature(out_width)),
            "o_last": In(1),   # the item taken now ends its packet: drop the rest of the word
        })

    @property
    def in_width(self) -> int:
        return self._in_width

    @property
    def out_width(self) -> int:
        return self._out_width

    def elaborate(self, platform):
        m = Module()
        iw, ow = self._in_width, self._out_width
        take = self.o.valid & self.o.ready
        if iw >= ow:                                  # split: one word -> `ratio` items
            ratio = iw // ow
            buf = Signal(iw)
            left = Signal(range(ratio + 1))           # items left in buf
            m.d.comb += [self.o.payload.eq(buf[:ow]), self.o.valid.eq(left != 0)]
            empties = take & ((left == 1) | self.o_last)
            m.d.comb += self.i.ready.eq((left == 0) | empties)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [buf.eq(self.i.payload), left.eq(ratio)]
            with m.Elif(empties):
                m.d.sync += left.eq(0)
            with m.Elif(take):
                m.d.sync += [buf.eq(buf[ow:]), left.eq(left - 1)]
        else:                                         # gather: `ratio` words -> one item
            ratio = ow // iw
            buf = Signal(ow)
            got = Signal(range(ratio + 1))            # words collected in buf
            full = got == ratio
            m.d.comb += [self.o.payload.eq(buf), self.o.valid.eq(full)]
            m.d.comb += self.i.ready.eq(~full | self.o.ready)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += buf.eq(self.i.payload.shift_left(ow - iw) | buf[iw:])
                m.d.sync += got.eq(Mux(take, 1, got + 1))
            with m.Elif(take):
                m.d.sync += got.eq(0)
        return m
