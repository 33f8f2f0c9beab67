"""A stream FIFO over ``StepFIFOBuffered`` (amaranth's SyncFIFOBuffered, cycle for cycle, with its
level's steps in registers: the consumer's ready a select, not an adder input) for struct payloads."""
from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..fifo import StepFIFOBuffered

__all__ = ["StreamFIFO"]


class StreamFIFO(wiring.Component):
    def __init__(self, shape, depth: int):
        self._shape, self._depth = shape, depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = f = StepFIFOBuffered(width=len(self.i.payload.as_value() if hasattr(self.i.payload, "as_value") else self.i.payload), depth=self._depth)
        m.d.comb += [f.w_data.eq(self.i.payload), f.w_en.eq(self.i.valid), self.i.ready.eq(f.w_rdy),
                     self.o.payload.eq(f.r_data), self.o.valid.eq(f.r_rdy), f.r_en.eq(self.o.ready)]
        return m
