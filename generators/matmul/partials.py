"""Split-K partial sums in: the ``act`` reader's words go to the activation fill or here.

From its second K slice on, a pass reads back the int64 partial sums the previous slice wrote,
in fire order (tile, row block, column, row). The demultiplexer routes each ``act`` command's
words by its route record (from the sequencer); the collector gathers the ``R`` sums of one
column of one row block into an entry and queues it for the output stage, which adds it to the
column's accumulators::

    act words --route--> fill (activation ring)
                     \\--> WidthAdapter(64), or (128) in a pair job -> R items -> FIFO (depth) -> head / pop

``entries`` gives each partial command's entry count so the padding of its last word is dropped.
With ``pairs`` a job of 2:4 pair fires (``pair``) has entries of two columns, ``2 R`` sums
(``head`` holds ``2 R``; a single column's entry fills the first ``R``), taken as ``R`` items of two
sums: an entry a cycle, as the pair fires take them.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..fifo import StepFIFOBuffered
from ..params import require_positive_ints
from .gearbox import WidthAdapter
from .sequencer import act_route_layout

__all__ = ["PartialCollector"]


class PartialCollector(wiring.Component):
    def __init__(self, *, rows: int, data_width: int, depth: int, pairs: bool = False):
        require_positive_ints(rows=rows, data_width=data_width, depth=depth)
        self._rows, self._width, self._depth = rows, data_width, depth
        self._pairs = pairs
        super().__init__({
            "pair": In(1),
            "data": In(stream.Signature(data_width)),
            "route": In(stream.Signature(act_route_layout())),
            "entries": In(stream.Signature(32)),
            "fill": Out(stream.Signature(data_width)),
            "start": In(1),
            "head": Out(data.ArrayLayout(signed(64), rows * (2 if pairs else 1))),
            "pushed": Out(1),                    # an entry enters the queue this cycle
            "pop": In(1),
        })

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        R, W = self._rows, self._width

        # -- demultiplexer: whole commands to one consumer ------------------------------------
        # a route record is taken into a down-counter of its words and a registered last-word flag
        # as it reaches the queue's head (one idle cycle per command), so the queue's pop is a
        # flip-flop, not the word transfer's ready chain and a 32-bit compare
        rt = self.route.payload
        loaded = Signal()
        to_p = Signal()
        left = Signal(32)
        last = Signal()
        m.d.comb += self.route.ready.eq(~loaded)
        with m.If(self.route.valid & ~loaded):
            m.d.sync += [loaded.eq(1), to_p.eq(rt.partial), left.eq(rt.words), last.eq(rt.words == 1)]
        # the sums as 64-bit items, or for a pair job 128-bit items (two sums): a pair fire takes an
        # entry of two columns a cycle, and one sum a cycle paced split-K pair jobs at half a fire
        m.submodules.adapt = adapt = WidthAdapter(W, 64)
        adapters = [adapt]
        pair = Signal()
        if self._pairs:
            m.submodules.adapt2 = adapt2 = WidthAdapter(W, 128)
            adapters.append(adapt2)
            m.d.comb += pair.eq(self.pair)
        item_ready = Mux(pair, adapters[-1].i.ready, adapt.i.ready)
        to_adapter = self.data.valid & loaded & to_p
        m.d.comb += [self.fill.payload.eq(self.data.payload), self.fill.valid.eq(self.data.valid & loaded & ~to_p),
                     adapt.i.payload.eq(self.data.payload), adapt.i.valid.eq(to_adapter & ~pair),
                     self.data.ready.eq(loaded & Mux(to_p, item_ready, self.fill.ready))]
        if self._pairs:
            m.d.comb += [adapt2.i.payload.eq(self.data.payload), adapt2.i.valid.eq(to_adapter & pair)]
        with m.If(self.data.valid & self.data.ready):
            with m.If(last):
                m.d.sync += loaded.eq(0)
            with m.Else():
                m.d.sync += [left.eq(left - 1), last.eq(left == 2)]

        # -- collector: R items (R or, in a pair job, 2 R sums) per entry ------------------------
        E = R * (2 if self._pairs else 1)
        IW = 128 if self._pairs else 64
        m.submodules.fifo = fifo = StepFIFOBuffered(width=64 * E, depth=self._depth)
        m.d.comb += [self.head.as_value().eq(fifo.r_data), fifo.r_en.eq(self.pop)]
        acc = [Signal(IW, name=f"sum{r}") for r in range(R - 1)]
        r = Signal(range(max(R, 2)))
        r_end = r == R - 1
        left = Signal(32)                        # entries of the current command still to come
        left_one = Signal()                      # left == 1, a flag kept beside it (off the adapter's ready)
        have = Signal()
        with m.If(~have):
            m.d.comb += self.entries.ready.eq(1)
            with m.If(self.entries.valid):
                m.d.sync += [have.eq(1), left.eq(self.entries.payload), left_one.eq(self.entries.payload == 1),
                             r.eq(0)]
        last_item = r_end & left_one
        o_valid = Mux(pair, adapters[-1].o.valid, adapt.o.valid)
        item = Mux(pair, adapters[-1].o.payload, adapt.o.payload)
        o_take = have & fifo.w_rdy & o_valid
        entry = Cat(*acc, item)
        if self._pairs:                          # a dense job's entry: the first R sums
            entry = Mux(pair, entry, Cat(*(a[:64] for a in acc), adapt.o.payload))
        for a in adapters:
            m.d.comb += [a.o.ready.eq(have & fifo.w_rdy), a.o_last.eq(last_item)]
        m.d.comb += [fifo.w_data.eq(entry), fifo.w_en.eq(o_take & r_end), self.pushed.eq(o_take & r_end)]
        with m.If(o_take):
            for i in range(R - 1):
                with m.If(r == i):
                    m.d.sync += acc[i].eq(item)
            with m.If(r_end):
                m.d.sync += [r.eq(0), left.eq(left - 1), left_one.eq(left == 2)]
                with m.If(left_one):
                    m.d.sync += have.eq(0)
            with m.Else():
                m.d.sync += r.eq(r + 1)
        with m.If(self.start):
            m.d.sync += [have.eq(0), loaded.eq(0)]
        return m
