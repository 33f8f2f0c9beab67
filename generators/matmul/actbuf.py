"""Double-buffered activation buffer: one row block is computed while the next loads.

Each of the ``R`` rows has its own memory of ``L``-byte lines (one line = the
activations of one array fire), two banks deep. The fill side writes row block
``b`` into bank ``b % 2`` as soon as the compute side released it; the compute
side reads all ``R`` rows of one line per cycle from the other bank. A block
with fewer valid rows leaves the other rows stale: the output stage zeroes them.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints
from .gearbox import WidthAdapter
from .pipe import opaque_const

__all__ = ["ActivationBuffer"]


class ActivationBuffer(wiring.Component):
    """Activation rows for the array, filled from the ``act`` word stream.

    * ``start`` (one cycle, with ``m`` rows and ``kc = K / L`` lines per row)
      resets both banks for a new job.
    * ``ready``: the compute bank holds a whole row block.
    * ``rd_line`` -> ``rd_data`` one cycle later: line ``rd_line`` of every row,
      each activation as ``x + 128`` (unsigned; the array expects that offset).
    * ``release`` (one cycle): the compute side is done with its bank.
    """

    def __init__(self, *, rows: int, lanes: int, data_width: int, max_k: int):
        require_positive_ints(rows=rows, lanes=lanes, data_width=data_width, max_k=max_k)
        if max_k % lanes:
            raise ValueError(f"max_k {max_k} must be a multiple of lanes {lanes}")
        self._rows, self._lanes, self._width, self._max_k = rows, lanes, data_width, max_k
        self._lines = max_k // lanes
        super().__init__({
            "data": In(stream.Signature(data_width)),
            "start": In(1),
            "m": In(32),
            "kc": In(range(self._lines + 1)),
            "ready": Out(1),
            "rd_line": In(range(self._lines)),
            "rd_data": Out(data.ArrayLayout(data.ArrayLayout(unsigned(8), lanes), rows)),
            "release": In(1),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def lines(self) -> int:
        """Lines (array fires) per row and bank: ``max_k / lanes``."""
        return self._lines

    def elaborate(self, platform):
        m = Module()
        R, L = self._rows, self._lanes
        line_bits = max(1, (self._lines - 1).bit_length())
        depth = 2 << line_bits

        m.submodules.adapt = adapt = WidthAdapter(self._width, 8 * L)
        wiring.connect(m, wiring.flipped(self.data), adapt.i)
        m.d.comb += adapt.o_last.eq(0)

        # -- fill side ----------------------------------------------------------------
        full = [Signal(name=f"full{b}") for b in range(2)]
        fb = Signal()                           # bank being filled
        cb = Signal()                           # bank being computed
        rows_left = Signal(32)
        kc = Signal.like(self.kc)
        row = Signal(range(max(R, 2)))                # never zero-width (R == 1)
        line = Signal(range(self._lines))
        block_rows = Signal(range(R + 1))
        m.d.comb += block_rows.eq(Mux(rows_left < R, rows_left, R))

        fb_full = Signal()
        m.d.comb += fb_full.eq(Cat(*full).bit_select(fb, 1))
        m.d.comb += adapt.o.ready.eq((rows_left != 0) & ~fb_full)
        take = adapt.o.valid & adapt.o.ready
        row_end = line == kc - 1
        block_end = row_end & (row == block_rows - 1)

        wr_addr = Cat(line, fb)
        # Stored as x + 128 (each sign bit flipped), see MacArray.
        wdata = Signal(8 * L)
        m.d.comb += wdata.eq(adapt.o.payload ^ opaque_const(m, int("80" * L, 16), 8 * L, name="flip"))
        for r in range(R):
            mem = Memory(shape=unsigned(8 * L), depth=depth, init=[])
            m.submodules[f"row{r}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(wr_addr), wp.data.eq(wdata), wp.en.eq(take & (row == r))]
            m.d.comb += [rp.addr.eq(Cat(self.rd_line, cb)), self.rd_data[r].as_value().eq(rp.data)]

        with m.If(self.start):
            m.d.sync += [rows_left.eq(self.m), kc.eq(self.kc), row.eq(0), line.eq(0), fb.eq(0)]
        with m.Elif(take):
            m.d.sync += line.eq(Mux(row_end, 0, line + 1))
            with m.If(row_end):
                m.d.sync += row.eq(Mux(block_end, 0, row + 1))
            with m.If(block_end):
                m.d.sync += [fb.eq(~fb), rows_left.eq(rows_left - block_rows)]

        # -- compute side -------------------------------------------------------------
        m.d.comb += self.ready.eq(Cat(*full).bit_select(cb, 1))
        with m.If(self.start):
            m.d.sync += cb.eq(0)
        with m.Elif(self.release):
            m.d.sync += cb.eq(~cb)
        for b in range(2):
            with m.If(self.start):
                m.d.sync += full[b].eq(0)
            with m.Elif(take & block_end & (fb == b)):
                m.d.sync += full[b].eq(1)
            with m.Elif(self.release & (cb == b)):
                m.d.sync += full[b].eq(0)
        return m

