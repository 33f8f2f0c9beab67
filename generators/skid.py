"""A register slice with a registered ``ready``: cuts the combinational ready path between a
consumer and its producer (the matmul engine's stream inputs, the vector engine's read commands).

Two registers: ``main`` drives the output, ``skid`` takes the word that arrives in the cycle
the output stalls. ``i.ready`` is "the skid register is empty", a flip-flop, so the producer
never sees the consumer's ready logic. One word per cycle at full rate, one cycle of latency::

    i --> [skid] --\\
      \\-------------+--> [main] --> o
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .params import require_positive_ints

__all__ = ["HoldSlice", "SkidBuffer", "slice_hold", "slice_stream"]


class _StreamSlice(wiring.Component):
    """A ``width``-bit stream in (``i``) and out (``o``)."""

    def __init__(self, width: int):
        require_positive_ints(width=width)
        self._width = width
        super().__init__({
            "i": In(stream.Signature(width)),
            "o": Out(stream.Signature(width)),
        })

    @property
    def width(self) -> int:
        return self._width


class SkidBuffer(_StreamSlice):
    """``width``-bit stream in, the same stream out one cycle later; ``i.ready`` is registered."""

    def elaborate(self, platform):
        m = Module()
        main, skid = Signal(self._width), Signal(self._width)
        main_valid, skid_valid = Signal(), Signal()
        m.d.comb += [self.o.payload.eq(main), self.o.valid.eq(main_valid), self.i.ready.eq(~skid_valid)]
        accept = self.i.valid & ~skid_valid
        with m.If(self.o.ready | ~main_valid):
            # main is free (or emptied this cycle): the skid word first, else the input word
            m.d.sync += [main.eq(Mux(skid_valid, skid, self.i.payload)), main_valid.eq(skid_valid | accept),
                         skid_valid.eq(0)]
        with m.Elif(accept):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m


def _connect_through(m: Module, sl, src, dst):
    m.d.comb += [sl.i.valid.eq(src.valid), sl.i.payload.eq(src.payload), src.ready.eq(sl.i.ready),
                 dst.valid.eq(sl.o.valid), dst.payload.eq(sl.o.payload), sl.o.ready.eq(dst.ready)]
    return sl


def slice_stream(m: Module, name: str, src, dst) -> SkidBuffer:
    """Connect stream ``src`` (its producer drives valid and payload) to stream ``dst`` through a
    :class:`SkidBuffer` named ``name``: any payload shape, passed as its bits."""
    m.submodules[name] = sl = SkidBuffer(len(Value.cast(src.payload)))
    return _connect_through(m, sl, src, dst)


class HoldSlice(_StreamSlice):
    """``width``-bit stream in, out one cycle later through one register, at most one word every
    other cycle: ``i.ready`` is "the register is empty", so neither side's handshake logic reaches
    the other. For sparse records (an engine's job) where a :class:`SkidBuffer`'s second register
    would only cost flip-flops."""

    def elaborate(self, platform):
        m = Module()
        word, full = Signal(self._width), Signal()
        m.d.comb += [self.o.payload.eq(word), self.o.valid.eq(full), self.i.ready.eq(~full)]
        with m.If(~full):
            m.d.sync += [word.eq(self.i.payload), full.eq(self.i.valid)]
        with m.Elif(self.o.ready):
            m.d.sync += full.eq(0)
        return m


def slice_hold(m: Module, name: str, src, dst) -> HoldSlice:
    """Connect stream ``src`` to stream ``dst`` through a :class:`HoldSlice` named ``name``."""
    m.submodules[name] = sl = HoldSlice(len(Value.cast(src.payload)))
    return _connect_through(m, sl, src, dst)
