"""A tile row memory interleaved over ``ways`` memories: one word a cycle in, one or ``ways`` out.

The sweeps read and write one word a cycle; the store of 8-bit outputs (ACT8 rows, Q records)
quantizes ``ways`` consecutive words at once so that it emits a whole port word a cycle (four int32
words make one word of int8). Word ``i`` lives in memory ``i % ways`` at ``i // ways``: every read
addresses all of them at ``addr // ways``, so ``wide`` holds words ``addr & ~(ways - 1)`` .. + ways-1
and ``r_data`` selects word ``addr`` among them (by the low address bits, registered with the read).
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbmforge.mathutil import exact_log2

__all__ = ["InterleavedTileMemory"]


class InterleavedTileMemory(wiring.Component):
    def __init__(self, *, width: int, depth: int, ways: int, granularity: int):
        self._width, self._depth, self._ways, self._gran = width, depth, ways, granularity
        exact_log2(ways)                     # raises unless a power of two
        if depth % ways:
            raise ValueError(f"depth {depth} must be a multiple of ways {ways}")
        super().__init__({
            "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(width // granularity),
            "r_addr": In(range(depth)), "r_data": Out(width), "wide": Out(width * ways),
        })

    def elaborate(self, platform):
        m = Module()
        n, lw = self._ways, exact_log2(self._ways)
        outs = []
        for k in range(n):
            mem = Memory(shape=self._width, depth=max(self._depth // n, 2), init=[])
            m.submodules[f"way{k}"] = mem
            wp = mem.write_port(granularity=self._gran)
            rp = mem.read_port(domain="sync")
            hit = (self.w_addr[:lw] == k) if lw else True
            m.d.comb += [wp.addr.eq(self.w_addr >> lw), wp.data.eq(self.w_data)]
            with m.If(hit):
                m.d.comb += wp.en.eq(self.w_en)
            m.d.comb += rp.addr.eq(self.r_addr >> lw)
            outs.append(rp.data)
        sel = Signal(range(n)) if lw else None
        if lw:
            m.d.sync += sel.eq(self.r_addr[:lw])
            m.d.comb += self.r_data.eq(Array(outs)[sel])
        else:
            m.d.comb += self.r_data.eq(outs[0])
        m.d.comb += self.wide.eq(Cat(*outs))
        return m
