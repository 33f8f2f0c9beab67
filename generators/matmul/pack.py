"""Output packer: one column's R results at a time -> the blocked Y word stream (§4).

A column is ``R * 4`` (INT32), ``R`` (INT8) or ``R * 8`` (raw int64 partial sums of a
split-K pass) bytes; each column says which. When that size and the port word divide one
another (``R`` a power of two) a column is a fixed slot of a word, or a fixed number of words,
and packing is a constant shift: cheap in logic and in simulation. Other ``R`` use a byte
gearbox (columns appended at the fill level). A column marked ``last`` ends its output command:
the packer pads the partial word with zeros. Columns of another size wait until the previous
size's path has emptied, so words leave in column order.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints

__all__ = ["OutputPacker", "column_layout"]


#: column ``mode``: the element size in memory
COLUMN_MODES = {"int32": 0, "int8": 1, "raw": 2}


def column_layout(rows: int, pairs: bool = False) -> data.StructLayout:
    """One column of results as the packer takes it: ``mode`` (:data:`COLUMN_MODES`), ``last``
    (the column ends an output command: flush). With ``pairs`` an item may be two columns (``pair``
    set): ``y`` holds ``2 x rows`` results, the second column's after the first's, which is how
    two consecutive columns of a row block lie in memory."""
    fields = {"y": data.ArrayLayout(signed(64), rows * (2 if pairs else 1)), "mode": 2, "last": 1}
    return data.StructLayout(fields | ({"pair": 1} if pairs else {}))


def _pow2_ratio(a: int, b: int) -> bool:
    hi, lo = max(a, b), min(a, b)
    return hi % lo == 0 and not (hi // lo) & (hi // lo - 1)


class _ColumnPacker(wiring.Component):
    """Ports shared by the packers: columns of ``col_bytes`` bytes in, ``data_width``-bit words out."""

    def __init__(self, col_bytes: int, data_width: int):
        self._cb, self._width = col_bytes, data_width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"col": 8 * col_bytes, "last": 1}))),
            "start": In(1),
            "o": Out(stream.Signature(data_width)),
            "finished": Out(1),
            "empty": Out(1),            # no column, byte or word held
        })


class _SlotPacker(_ColumnPacker):
    """Columns of exactly ``col_bytes`` bytes -> words, when one divides the other."""

    def elaborate(self, platform):
        m = Module()
        cb, W = self._cb, self._width
        B = W // 8
        emit = self.o.valid & self.o.ready
        if cb <= B:                                   # k columns fill one word
            k = B // cb
            sbuf = Signal(W, reset_less=True)
            cnt = Signal(range(max(k, 2)))          # k == 1: a constant 0 (never zero-width)
            flushing = Signal()
            oreg = Signal(W, reset_less=True)
            ovalid = Signal()
            ofinal = Signal()
            room = ~ovalid | self.o.ready
            m.d.comb += [self.o.payload.eq(oreg), self.o.valid.eq(ovalid),
                         self.i.ready.eq(~flushing & room)]
            take = self.i.valid & self.i.ready
            push = take | (flushing & room)           # a column (or a zero pad column) goes in
            col = Mux(flushing, 0, self.i.payload.col)
            shifted = Cat(sbuf[8 * cb:], col) if k > 1 else col
            full = cnt == k - 1
            last = Mux(flushing, 1, self.i.payload.last)
            with m.If(emit):
                m.d.sync += ovalid.eq(0)
                with m.If(ofinal):
                    m.d.sync += self.finished.eq(1)
            with m.If(push):
                m.d.sync += [sbuf.eq(shifted), cnt.eq(Mux(full, 0, cnt + 1))]
                with m.If(full):
                    m.d.sync += [oreg.eq(shifted), ovalid.eq(1), ofinal.eq(last), flushing.eq(0)]
                with m.Elif(last):
                    m.d.sync += flushing.eq(1)
            with m.If(self.start):
                m.d.sync += [cnt.eq(0), flushing.eq(0), ovalid.eq(0), self.finished.eq(0)]
            m.d.comb += self.empty.eq((cnt == 0) & ~ovalid & ~flushing)
        else:                                         # one column is q words
            q = cb // B
            creg = Signal(8 * cb, reset_less=True)
            left = Signal(range(q + 1))
            cfinal = Signal()
            m.d.comb += [self.o.payload.eq(creg[:W]), self.o.valid.eq(left != 0),
                         self.i.ready.eq((left == 0) | ((left == 1) & self.o.ready))]
            take = self.i.valid & self.i.ready
            with m.If(take):
                m.d.sync += [creg.eq(self.i.payload.col), left.eq(q), cfinal.eq(self.i.payload.last)]
            with m.Elif(emit):
                m.d.sync += [creg.eq(creg[W:]), left.eq(left - 1)]
            with m.If(emit & (left == 1) & cfinal):
                m.d.sync += self.finished.eq(1)
            with m.If(self.start):
                m.d.sync += [left.eq(0), self.finished.eq(0)]
            m.d.comb += self.empty.eq(left == 0)
        return m


class _GearboxPacker(_ColumnPacker):
    """Columns of ``col_bytes`` bytes -> words for any size: a byte gearbox.

    The buffer holds two words plus a column; a column is placed at the fill
    level with one right shift from the top (fixed width), and the wide logic
    only updates when a column goes in or a word comes out.
    """

    def __init__(self, col_bytes: int, data_width: int):
        self._cap = 2 * (data_width // 8) + col_bytes
        super().__init__(col_bytes, data_width)

    def elaborate(self, platform):
        m = Module()
        cb, W, cap = self._cb, self._width, self._cap
        B = W // 8
        buf = Signal(8 * cap, reset_less=True)
        fill = Signal(range(cap + 1))
        flush = Signal()
        m.d.comb += [self.o.payload.eq(buf[:W]),
                     self.o.valid.eq((fill >= B) | (flush & (fill != 0)))]
        emit = self.o.valid & self.o.ready
        fill_after = Signal(range(cap + 1))
        m.d.comb += fill_after.eq(Mux(emit, Mux(fill >= B, fill - B, 0), fill))
        m.d.comb += self.i.ready.eq(~flush & (fill + cb <= cap))
        take = self.i.valid & self.i.ready
        with m.If(take):
            gap = Signal(range(cap + 1))
            m.d.comb += gap.eq(cap - fill_after)
            placed = Cat(Const(0, 8 * cap), self.i.payload.col) >> Cat(Const(0, 3), gap)
            m.d.sync += [buf.eq(Mux(emit, buf[8 * B:], buf) | placed[:8 * cap]), fill.eq(fill_after + cb)]
            with m.If(self.i.payload.last):
                m.d.sync += flush.eq(1)
        with m.Elif(emit):
            m.d.sync += [buf.eq(buf[8 * B:]), fill.eq(fill_after)]
        with m.If(flush & emit & (fill_after == 0)):
            m.d.sync += [flush.eq(0), self.finished.eq(1)]
        with m.If(self.start):
            m.d.sync += [buf.eq(0), fill.eq(0), flush.eq(0), self.finished.eq(0)]
        m.d.comb += self.empty.eq((fill == 0) & ~flush)
        return m


class OutputPacker(wiring.Component):
    """Columns in, ``data_width``-bit words out (see the module docstring).

    ``start`` clears the paths for a new job; ``finished`` rises once a column marked ``last``
    has left as words.
    """

    def __init__(self, *, rows: int, data_width: int, pairs: bool = False):
        require_positive_ints(rows=rows, data_width=data_width)
        if data_width % 8:
            raise ValueError(f"data_width must be a multiple of 8, got {data_width}")
        self._rows, self._width, self._pairs = rows, data_width, pairs
        super().__init__({
            "i": In(stream.Signature(column_layout(rows, pairs))),
            "start": In(1),
            "o": Out(stream.Signature(data_width)),
            "finished": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, W = self._rows, self._width
        B = W // 8
        y = self.i.payload.y
        paths = []
        for width in (1, 2) if self._pairs else (1,):
            for name, ebytes in (("int32", 4), ("int8", 1), ("raw", 8)):
                cb = width * R * ebytes
                cls = _SlotPacker if _pow2_ratio(cb, B) else _GearboxPacker
                m.submodules[name + ("_pair" if width == 2 else "")] = p = cls(cb, W)
                paths.append(((COLUMN_MODES[name], width), p))
                col = Cat(*(y[r][:8 * ebytes] for r in range(width * R)))
                m.d.comb += [p.i.payload.col.eq(col), p.i.payload.last.eq(self.i.payload.last),
                             p.start.eq(self.start), p.o.ready.eq(self.o.ready)]
        # a path takes columns only while the others are empty; the one holding data owns the output
        ready, ovalid, opayload, fin = 0, 0, 0, 0
        for code, p in paths:
            others_empty = Cat(*(q.empty for c2, q in paths if c2 != code)).all()
            sel = self.i.payload.mode == code[0]
            if self._pairs:
                sel = sel & (self.i.payload.pair == (code[1] == 2))
            m.d.comb += p.i.valid.eq(self.i.valid & sel & others_empty)
            ready = Mux(sel, p.i.ready & others_empty, ready)
            ovalid = ovalid | p.o.valid
            opayload = Mux(p.o.valid, p.o.payload, opayload)
            fin = fin | p.finished
        m.d.comb += [self.i.ready.eq(ready), self.o.valid.eq(ovalid), self.o.payload.eq(opayload),
                     self.finished.eq(fin)]
        return m
