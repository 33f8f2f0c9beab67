"""Output packer: one column's R results at a time -> the blocked Y byte stream (§4).

A column is ``R * 4`` (INT32) or ``R`` (INT8) bytes; ``R`` need not be a power
of two, so the packer is a byte gearbox: columns are appended at the fill
level, whole words leave from the bottom, and the job's last column flushes a
zero-padded partial word. Its input never depends on ``o.ready`` in the same
cycle, and its buffer holds two words plus a column, so with a column every
cycle it drains as fast as the port allows.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["OutputPacker", "column_layout"]


def column_layout(rows: int) -> data.StructLayout:
    """One column of results as the packer takes it."""
    return data.StructLayout({"y": data.ArrayLayout(signed(32), rows), "last": 1})


class OutputPacker(wiring.Component):
    """Columns in, ``data_width``-bit words out; ``finished`` once a job's last word left.

    ``start`` clears ``finished`` for a new job; ``int8`` picks the element size.
    """

    def __init__(self, *, rows: int, data_width: int):
        for name, v in (("rows", rows), ("data_width", data_width)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if data_width % 8:
            raise ValueError(f"data_width must be a multiple of 8, got {data_width}")
        self._rows, self._width = rows, data_width
        self._cap = 2 * (data_width // 8) + 4 * rows       # bytes in the buffer
        super().__init__({
            "i": In(stream.Signature(column_layout(rows))),
            "int8": In(1),
            "start": In(1),
            "o": Out(stream.Signature(data_width)),
            "finished": Out(1),
        })

    @property
    def capacity(self) -> int:
        """Buffer size in bytes."""
        return self._cap

    def elaborate(self, platform):
        m = Module()
        R, W = self._rows, self._width
        B, cap = W // 8, self._cap

        buf = Signal(8 * cap)
        fill = Signal(range(cap + 1))
        flush = Signal()
        cb = Signal(range(4 * R + 1))
        m.d.comb += cb.eq(Mux(self.int8, R, 4 * R))
        col8 = Cat(*(self.i.payload.y[r][:8] for r in range(R)))
        col32 = Cat(*(self.i.payload.y[r].as_unsigned() for r in range(R)))
        col = Signal(32 * R)
        m.d.comb += col.eq(Mux(self.int8, col8, col32))

        m.d.comb += [self.o.payload.eq(buf[:W]),
                     self.o.valid.eq((fill >= B) | (flush & (fill != 0)))]
        emit = self.o.valid & self.o.ready
        fill_after = Signal(range(cap + 1))
        m.d.comb += fill_after.eq(Mux(emit, Mux(fill >= B, fill - B, 0), fill))
        shifted = Mux(emit, buf[8 * B:], buf)
        m.d.comb += self.i.ready.eq(~flush & (fill + cb <= cap))
        take = self.i.valid & self.i.ready
        # col placed at byte `fill_after`: a right shift from the top keeps the width fixed
        # (a variable left shift would widen the netlist by 2**amount_bits).
        gap = Signal(range(cap + 1))
        m.d.comb += gap.eq(cap - fill_after)
        placed = Cat(Const(0, 8 * cap), col) >> Cat(Const(0, 3), gap)

        with m.If(self.start):
            m.d.sync += [buf.eq(0), fill.eq(0), flush.eq(0), self.finished.eq(0)]
        with m.Else():
            with m.If(take):
                m.d.sync += [buf.eq(shifted | placed[:8 * cap]),
                             fill.eq(fill_after + cb)]
                with m.If(self.i.payload.last):
                    m.d.sync += flush.eq(1)
            with m.Else():
                m.d.sync += [buf.eq(shifted), fill.eq(fill_after)]
            with m.If(flush & emit & (fill_after == 0)):
                m.d.sync += [flush.eq(0), self.finished.eq(1)]
        return m
