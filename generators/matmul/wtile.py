"""Weight tiles on chip: the weight ring that lets every row block of a chunk reuse one fetch.

The loader writes the weight stream of each pass (``n`` columns of ``kc`` lines, column-major, as
§4 lays it out) into a ring of ``2 x tile_n`` column slots, each ``line_stride`` lines deep; a
line holds ``lanes`` decoded weights and, when it ends a group, the group's scale mantissa(s).
The scheduler fires from the ring as many times as the chunk has row blocks and frees a column
after its last one, so the loader fills the next tile while the current one computes::

    w chunks (unpacker) --\\
    scale items ----------+-> line -> ring[slot][line]     slot = column mod 2 x tile_n
                                      ring[rd_addr] -> rd_lanes, rd_scales (one cycle later)

Flow: a column is written only while fewer than ``2 x tile_n`` columns are unfreed;
``cols_ahead`` counts the complete ones, ``cur_lines`` the lines of the one being written (a
fire may use a line the cycle after it was written, so a GEMV streams at the port rate).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...mathutil import exact_log2
from ..counters import step_count
from .geometry import EngineGeometry, pass_layout

__all__ = ["WeightTileBuffer"]


class WeightTileBuffer(wiring.Component):
    """The weight ring and its loader (see the module docstring).

    ``w`` takes ``lanes``-weight chunks (``w_last`` marks the chunk that ends a pass's stream,
    so the unpacker drops the padding of that word), ``scales`` the scale items (``s_last``
    likewise). ``free`` (one cycle) releases the oldest column.
    """

    def __init__(self, geometry: EngineGeometry):
        if not isinstance(geometry, EngineGeometry):
            raise TypeError(f"geometry must be an EngineGeometry, got {type(geometry).__name__}")
        self._geom = geometry
        G = geometry
        super().__init__({
            "passes": In(stream.Signature(pass_layout(G))),
            "start": In(1),
            "n": In(32),
            "w": In(stream.Signature(data.ArrayLayout(signed(G.lane_bits), G.lanes))),
            "w_last": Out(1),
            "scales": In(stream.Signature(16 * G.scale_slots)),
            "s_last": Out(1),
            "cols_ahead": Out(range(G.weight_slots + 1)),
            "cur_lines": Out(range(G.kc_max + 1)),
            "free": In(1),
            "rd_addr": In(range(G.weight_depth)),
            "rd_lanes": Out(data.ArrayLayout(signed(G.lane_bits), G.lanes)),
            "rd_scales": Out(data.ArrayLayout(unsigned(G.scale_bits), G.scale_slots)),
        })

    @property
    def geometry(self) -> EngineGeometry:
        return self._geom

    def elaborate(self, platform):
        m = Module()
        G = self._geom
        fpg, ng, sb = G.fires_per_group, G.scale_slots, G.scale_bits
        slot_bits = exact_log2(G.weight_slots)

        mem = Memory(shape=unsigned(G.weight_line_bits), depth=G.weight_depth, init=[])
        m.submodules.ring = mem
        wp = mem.write_port()
        rp = mem.read_port()
        m.d.comb += rp.addr.eq(self.rd_addr)
        m.d.comb += [self.rd_lanes.as_value().eq(rp.data[:G.weight_lane_bits]),
                     self.rd_scales.as_value().eq(rp.data[G.weight_lane_bits:])]

        have = Signal()
        line = Signal(range(G.kc_max + 1))
        slot = Signal(max(1, slot_bits))
        # the pass's last column as a registered flag, from a down-counter of the columns after the
        # current one (compares with constants only: no adder feeding a 32-bit compare)
        n_m1 = Signal(32)
        cols_after = Signal(32)
        last_col = Signal()
        m.d.sync += n_m1.eq(self.n - 1)
        kc_m1 = Signal.like(self.passes.payload.kc)
        # line == kc - 1 and cols_ahead < slots as registered flags (the write decision feeds the
        # unpacker's and the scale adapter's ready, which reach the weight ports' slices)
        col_end = Signal()
        kc_m2 = Signal.like(self.passes.payload.kc)
        room = Signal(init=1)
        # the line ends a group (line mod fires_per_group == fpg - 1) as a registered flag kept beside
        # `line`: the write decision (and with it the unpacker's and scale adapter's ready) starts
        # at flip-flops, not at a compare of the line count (a 5-LUT path at 3.59 ns in u280_small)
        if fpg == 1:
            grp_last = 1
        else:
            grp_last = Signal()
            grp_next = line[:exact_log2(fpg)] == fpg - 2
        with m.If(~have):
            m.d.comb += self.passes.ready.eq(1)
            with m.If(self.passes.valid):
                m.d.sync += [have.eq(1), kc_m1.eq(self.passes.payload.kc - 1), kc_m2.eq(self.passes.payload.kc - 2),
                             cols_after.eq(n_m1), line.eq(0), last_col.eq(n_m1 == 0),
                             *([grp_last.eq(0)] if fpg > 1 else []),
                             col_end.eq(self.passes.payload.kc == 1)]

        pass_end = col_end & last_col
        write = Signal()
        m.d.comb += write.eq(have & room & self.w.valid & (~grp_last | self.scales.valid))
        m.d.comb += [self.w.ready.eq(write), self.scales.ready.eq(write & grp_last),
                     self.w_last.eq(pass_end), self.s_last.eq(pass_end)]
        scale_bits = Cat(*(self.scales.payload[16 * j:16 * j + sb] for j in range(ng)))
        m.d.comb += [wp.addr.eq(Cat(line[:G.line_bits], slot) if G.line_bits else slot),
                     wp.data.eq(Cat(self.w.payload.as_value(), Mux(grp_last, scale_bits, 0))),
                     wp.en.eq(write)]
        complete = Signal()
        m.d.comb += complete.eq(write & col_end)
        with m.If(write):
            m.d.sync += [line.eq(Mux(col_end, 0, line + 1)), col_end.eq(Mux(col_end, kc_m1 == 0, line == kc_m2))]
            if fpg > 1:
                m.d.sync += grp_last.eq(~col_end & grp_next)
            with m.If(col_end):
                m.d.sync += [cols_after.eq(cols_after - 1), slot.eq(slot + 1), last_col.eq(cols_after == 1)]
                with m.If(pass_end):
                    m.d.sync += have.eq(0)
        m.d.comb += self.cur_lines.eq(line)
        step_count(m, self.cols_ahead, complete, self.free)
        # room next cycle: cols_ahead + complete - free < slots, by cases of the registered count
        # (its compares beside the scheduler's fire logic, not behind it)
        S = G.weight_slots
        m.d.sync += room.eq((self.cols_ahead < S - 1) | ((self.cols_ahead == S - 1) & ~complete) | self.free)
        with m.If(self.start):
            m.d.sync += [have.eq(0), slot.eq(0), self.cols_ahead.eq(0), line.eq(0), room.eq(1)]
            if fpg > 1:
                m.d.sync += grp_last.eq(0)
        return m
