"""Activation ring: the row blocks of a chunk stay on chip while every weight tile sweeps them.

Each of the ``R`` rows of a block has its own memory (bank) of ``act_depth`` lines of ``L``
bytes (one line = the activations of one array fire). A row block takes one *slot* of
``stride = 2^stride_log`` lines in every bank (the job's lines per row, ``kc``, rounded up to a
power of two), so the ring holds ``2^slots_log = act_depth / stride`` blocks: more rows at
smaller K. The fill side writes blocks in order into the next slot as soon as it is free; the
compute side reads all ``R`` rows of one line per cycle and releases the oldest block when the
last weight tile is done with it, so the next chunk loads while the current one finishes (the
fill idles one cycle after each pass record and each block, to size the next block)::

    data words -> WidthAdapter -> lines -> bank[r][fill slot + line]      (pass records: kc, rows)
    rd_addr (cycle 0) -> register -> bank[*][rd_addr] -> rd_data (cycle 2, as x + 128)

A block with fewer valid rows leaves the other rows stale: the output stage zeroes them.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...mathutil import exact_log2
from ..counters import step_count
from .gearbox import WidthAdapter
from .geometry import EngineGeometry, pass_layout
from .pipe import opaque_const

__all__ = ["ActivationBuffer"]


class ActivationBuffer(wiring.Component):
    """The activation ring of one engine (see the module docstring).

    * ``start`` (one cycle) empties the ring for a new job; ``stride_log`` and ``slots_log`` are
      the job's constants from then on.
    * ``passes``: one record per pass (``kc`` lines per row, ``rows`` rows in ``nblk`` blocks).
    * ``ahead``: blocks filled and not yet released (the compute side's oldest block is at its
      own ring pointer); ``release`` (one cycle) frees the oldest.
    * ``rd_addr`` -> ``rd_data`` two cycles later: one line of every row, each activation as
      ``x + 128`` (unsigned; the array expects that offset).
    """

    READ_LATENCY = 2

    def __init__(self, geometry: EngineGeometry):
        if not isinstance(geometry, EngineGeometry):
            raise TypeError(f"geometry must be an EngineGeometry, got {type(geometry).__name__}")
        self._geom = geometry
        R, L = geometry.rows, geometry.lanes
        super().__init__({
            "data": In(stream.Signature(geometry.data_width)),
            "passes": In(stream.Signature(pass_layout(geometry))),
            "start": In(1),
            "stride_log": In(range(geometry.line_bits + 1)),
            "slots_log": In(range(exact_log2(geometry.act_depth) + 1)),
            "ahead": Out(range(geometry.max_blocks + 1)),
            "release": In(1),
            "rd_addr": In(range(geometry.act_depth)),
            "rd_data": Out(data.ArrayLayout(data.ArrayLayout(unsigned(8), L), R)),
        })

    @property
    def geometry(self) -> EngineGeometry:
        return self._geom

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        R, L, depth = geom.rows, geom.lanes, geom.act_depth
        abits = exact_log2(depth)

        m.submodules.adapt = adapt = WidthAdapter(geom.data_width, 8 * L)
        wiring.connect(m, wiring.flipped(self.data), adapt.i)
        m.d.comb += adapt.o_last.eq(0)

        # -- fill side ----------------------------------------------------------------------
        have = Signal()                         # a pass record is being filled
        rows_left = Signal(32)                  # rows of the pass not yet written
        row = Signal(range(max(R, 2)))
        line = Signal(range(geom.kc_max + 1))
        base = Signal(abits)                    # slot of the block being filled
        kc_m1 = Signal.like(self.passes.payload.kc)          # the pass's lines per row - 1
        # the block's rows (and minus one), and whether it is the pass's last, as registers set in
        # the cycle after each change of rows_left (``settle``, in which nothing is taken: one idle
        # cycle per block), so the fill's loop ends are compares of flip-flops
        block_rows = Signal(range(R + 1))
        block_rows_m1 = Signal(range(R))
        last_block = Signal()
        settle = Signal()
        m.d.sync += settle.eq(0)
        with m.If(settle):
            m.d.sync += [block_rows.eq(Mux(rows_left < R, rows_left, R)),
                         block_rows_m1.eq(Mux(rows_left < R, rows_left - 1, R - 1)),
                         last_block.eq(rows_left <= R)]
        slots = Signal(range(depth + 1))
        slots_m1 = Signal(range(depth))
        m.d.sync += [slots.eq(1 << self.slots_log), slots_m1.eq((1 << self.slots_log) - 1)]

        with m.If(~have):
            m.d.comb += self.passes.ready.eq(1)
            with m.If(self.passes.valid):
                m.d.sync += [have.eq(1), kc_m1.eq(self.passes.payload.kc - 1),
                             rows_left.eq(self.passes.payload.rows), row.eq(0), line.eq(0), settle.eq(1)]

        # room for one more block (ahead < slots) as a registered flag: the fill's ready reaches the
        # data port through the partial-sum demultiplexer, so it must not start at a compare
        room = Signal(init=1)
        m.d.comb += adapt.o.ready.eq(have & room & ~settle)
        take = adapt.o.valid & adapt.o.ready
        row_end = line == kc_m1
        block_end = row_end & (row == block_rows_m1)
        done_block = Signal()
        m.d.comb += done_block.eq(take & block_end)

        wr_addr = Signal(abits)
        m.d.comb += wr_addr.eq(base + line)
        # Stored as x + 128 (each sign bit flipped), see MacArray.
        wdata = Signal(8 * L)
        m.d.comb += wdata.eq(adapt.o.payload ^ opaque_const(m, int("80" * L, 16), 8 * L, name="flip"))
        rd_addr = Signal(abits, reset_less=True)
        m.d.sync += rd_addr.eq(self.rd_addr)
        for r in range(R):
            mem = Memory(shape=unsigned(8 * L), depth=depth, init=[])
            m.submodules[f"row{r}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(wr_addr), wp.data.eq(wdata), wp.en.eq(take & (row == r))]
            m.d.comb += [rp.addr.eq(rd_addr), self.rd_data[r].as_value().eq(rp.data)]

        with m.If(take):
            m.d.sync += line.eq(Mux(row_end, 0, line + 1))
            with m.If(row_end):
                m.d.sync += row.eq(Mux(block_end, 0, row + 1))
            with m.If(block_end):
                m.d.sync += [base.eq(base + (1 << self.stride_log)), rows_left.eq(rows_left - block_rows),
                             settle.eq(1)]
                with m.If(last_block):
                    m.d.sync += have.eq(0)
        step_count(m, self.ahead, done_block, self.release)
        # room next cycle, by cases of this cycle's count (a finished block implies room now)
        m.d.sync += room.eq(self.release | (self.ahead < slots_m1) | (~done_block & (self.ahead < slots)))
        with m.If(self.start):
            m.d.sync += [have.eq(0), base.eq(0), self.ahead.eq(0), room.eq(1)]
        return m
