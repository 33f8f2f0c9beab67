"""Per-column parameters of a weight tile: INT8 requant ``(mult, shift)`` and the int32 bias.

The ``rq`` reader brings, per tile of each pass that needs them, the tile's requant records
(INT8 output, last K slice; u64 each) and then its bias entries (first K slice; int32 each).
The loader writes them into two tile slots (the current tile and the next), read by the
scheduler at each column's last fire, once per row block::

    rq words -> WidthAdapter(64) --mult, shift--> qmem[slot][column]
             -> WidthAdapter(32) --bias---------> bmem[slot][column]     (read one cycle later)

A tile counts as loaded when both parts (those its pass needs) are written; ``tiles_ahead``
loaded tiles, at most two, ``free`` (one cycle) releases the oldest.

With the 2:4 pair fire (``geometry.pairs``) an entry holds two columns' parameters (a pair job,
``pair``: a tile of ``tile_n`` pair lines is ``2 x tile_n`` records, written alternately into an
entry's two halves); the second column's are ``rd_*_odd``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...mathutil import exact_log2
from ..counters import CountDown, step_count
from .gearbox import WidthAdapter
from .geometry import EngineGeometry, pass_layout

__all__ = ["ColumnParams"]


class ColumnParams(wiring.Component):
    def __init__(self, geometry: EngineGeometry):
        if not isinstance(geometry, EngineGeometry):
            raise TypeError(f"geometry must be an EngineGeometry, got {type(geometry).__name__}")
        self._geom = geometry
        T = geometry.tile_n
        super().__init__({
            "passes": In(stream.Signature(pass_layout(geometry))),
            "data": In(stream.Signature(geometry.data_width)),
            "start": In(1),
            "int8": In(1),
            "bias": In(1),
            "tiles": In(32),
            "last_cols": In(range(T + 1)),
            "tiles_ahead": Out(range(3)),
            "free": In(1),
            "rd_addr": In(range(2 * T)),
            "rd_mult": Out(signed(32)),
            "rd_shift": Out(range(128)),
            "rd_bias": Out(signed(32)),
        } | ({"pair": In(1), "rd_mult_odd": Out(signed(32)), "rd_shift_odd": Out(range(128)),
              "rd_bias_odd": Out(signed(32))} if geometry.pairs else {}))

    def elaborate(self, platform):
        m = Module()
        G = self._geom
        T = G.tile_n
        abits = exact_log2(2 * T)
        m.submodules.qa = qa = WidthAdapter(G.data_width, 64)
        m.submodules.ba = ba = WidthAdapter(G.data_width, 32)
        H = 2 if G.pairs else 1
        m.submodules.qmem = qmem = Memory(shape=unsigned(39 * H), depth=2 * T, init=[])
        m.submodules.bmem = bmem = Memory(shape=unsigned(32 * H), depth=2 * T, init=[])
        qw, qr = qmem.write_port(granularity=39), qmem.read_port()
        bw, br = bmem.write_port(granularity=32), bmem.read_port()
        m.d.comb += [qr.addr.eq(self.rd_addr), br.addr.eq(self.rd_addr),
                     self.rd_mult.eq(qr.data[:32]), self.rd_shift.eq(qr.data[32:39]),
                     self.rd_bias.eq(br.data[:32])]
        if G.pairs:
            m.d.comb += [self.rd_mult_odd.eq(qr.data[39:71]), self.rd_shift_odd.eq(qr.data[71:78]),
                         self.rd_bias_odd.eq(br.data[32:])]

        have = Signal()
        # the pass's needs as flags taken with it (the job's int8 and bias modes are set before its
        # first pass): requant records on the last slice, bias on the first
        need_q, need_b = Signal(), Signal()
        # tiles after the current one (a down-counter) and the final-tile flag, registered; the job's
        # tiles - 1 and last_cols - 1 registered from its sizes (settled long before the first pass)
        tiles_m1 = Signal(32)
        tiles_one, tiles_two = Signal(), Signal()         # tiles == 1, tiles == 2
        # records of the last tile and of a full one, minus one (a pair job: two records a line)
        last_cols_m1 = Signal(range(H * T))
        tile_m1 = Signal(range(H * T))
        pair = self.pair if G.pairs else 0
        m.d.sync += [tiles_m1.eq(self.tiles - 1), last_cols_m1.eq(Mux(pair, (self.last_cols << 1) - 1, self.last_cols - 1)),
                     tile_m1.eq(Mux(pair, 2 * T - 1, T - 1)),
                     tiles_one.eq(self.tiles == 1), tiles_two.eq(self.tiles == 2)]
        # the end tests as flags beside down-counters (:class:`CountDown`): the tiles after this one,
        # and the records after this one in the current part (a part: the tile's requant records,
        # then its bias records); the flags of a tile's record count registered from the job's
        # sizes too, so a take selects between flip-flops
        tl = CountDown(32, "tiles")
        items = CountDown(len(tile_m1), "items")
        lc_one, lc_two, tm_one, tm_two = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [lc_one.eq(last_cols_m1 == 0), lc_two.eq(last_cols_m1 == 1),
                     tm_one.eq(tile_m1 == 0), tm_two.eq(tile_m1 == 1)]
        def items_of(final):
            """Load the record counter for a tile (the job's last tile when ``final``)."""
            return items.load(Mux(final, last_cols_m1, tile_m1), Mux(final, lc_one, tm_one),
                              Mux(final, lc_two, tm_two))
        final_tile = tl.last
        idx = Signal(range(H * T + 1))
        phase_b = Signal()                       # writing the tile's bias (after its requant records)
        slot = Signal()
        with m.If(~have):
            m.d.comb += self.passes.ready.eq(1)
            with m.If(self.passes.valid):
                pp = self.passes.payload
                m.d.sync += [have.eq(1), need_q.eq(self.int8 & pp.last), need_b.eq(self.bias & pp.first),
                             *tl.load(tiles_m1, tiles_one, tiles_two), *items_of(tiles_one), idx.eq(0), phase_b.eq(0)]
        room = self.tiles_ahead < 2
        busy = have & (need_q | need_b) & room
        part_q = busy & ~phase_b & need_q
        part_b = busy & (phase_b | ~need_q) & need_b
        last_item = items.last
        # the words of one command go to one adapter: hold the next word back in the cycle the
        # current part's last item is taken (the adapter would load it with the dropped rest)
        take_q = part_q & qa.o.valid
        take_b = part_b & ba.o.valid
        m.d.comb += [qa.o.ready.eq(part_q), qa.o_last.eq(last_item), ba.o.ready.eq(part_b), ba.o_last.eq(last_item),
                     qa.i.payload.eq(self.data.payload), ba.i.payload.eq(self.data.payload),
                     qa.i.valid.eq(self.data.valid & part_q & ~(take_q & last_item)),
                     ba.i.valid.eq(self.data.valid & part_b & ~(take_b & last_item)),
                     self.data.ready.eq(Mux(part_q, qa.i.ready & ~(take_q & last_item),
                                            part_b & ba.i.ready & ~(take_b & last_item)))]
        entry = Mux(pair, idx >> 1, idx) if G.pairs else idx
        addr = Cat(entry[:exact_log2(T)] if T > 1 else [], slot)
        half = pair & idx[0] if G.pairs else 0         # which half of the entry a record fills
        m.d.comb += [qw.addr.eq(addr), qw.data.eq(qa.o.payload[:39].replicate(H)), qw.en.eq(take_q << half),
                     bw.addr.eq(addr), bw.data.eq(ba.o.payload.replicate(H)), bw.en.eq(take_b << half)]
        loaded = Signal()
        with m.If(take_q | take_b):
            m.d.sync += idx.eq(Mux(last_item, 0, idx + 1))
            with m.If(last_item):
                with m.If(take_q & need_b):
                    m.d.sync += [phase_b.eq(1), *items_of(tl.last)]      # the same tile's bias
                with m.Else():
                    m.d.comb += loaded.eq(1)
                    m.d.sync += items_of(tl.next_last)                   # the next tile's records
            with m.Else():
                m.d.sync += items.step()
        skip = have & ~(need_q | need_b)         # a pass without parameters: nothing to load
        with m.If(loaded | skip):
            m.d.sync += phase_b.eq(0)
            with m.If(loaded):
                m.d.sync += slot.eq(~slot)
            with m.If(final_tile | skip):
                m.d.sync += have.eq(0)
        # the tile counter steps on every loaded tile (after the final one it is reloaded with the
        # next pass before it is read), so its step is the load decision alone
        with m.If(loaded):
            m.d.sync += tl.step()
        step_count(m, self.tiles_ahead, loaded, self.free)
        with m.If(self.start):
            m.d.sync += [have.eq(0), slot.eq(0), self.tiles_ahead.eq(0)]
        return m
