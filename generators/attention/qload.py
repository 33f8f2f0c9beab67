"""Q loader: the next tile's query records (int8 row, u16 mult, u8 shift) into a shadow
buffer while the current tile computes; the score unit copies it at its tile start."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...engines.attention import CTX_BITS, MULT_BITS
from .geometry import DatapathGeometry

__all__ = ["QLoader", "q_tile_layout"]


def q_tile_layout(rows: int) -> data.StructLayout:
    return data.StructLayout({"nv": range(rows + 1), "pos": data.ArrayLayout(CTX_BITS, rows)})


class QLoader(wiring.Component):
    def __init__(self, geometry: DatapathGeometry):
        self._geom = geometry
        rows, head_dim = geometry.rows, geometry.head_dim
        super().__init__({
            "tile": In(stream.Signature(q_tile_layout(rows))),
            "data": In(stream.Signature(geometry.data_width)),
            "tq_valid": Out(1),
            "tq_take": In(1),
            "tq_q": Out(data.ArrayLayout(8, rows * head_dim)),
            "tq_mult": Out(data.ArrayLayout(MULT_BITS, rows)),
            "tq_shift": Out(data.ArrayLayout(6, rows)),
            "tq_pos": Out(data.ArrayLayout(CTX_BITS, rows)),
            "tq_nv": Out(range(rows + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        rows, head_dim, W = geom.rows, geom.head_dim, geom.data_width
        qw = geom.q_record_bytes // geom.word_bytes      # words per Q record
        recs = [[Signal(W, name=f"qrec{r}_{w}") for w in range(qw)] for r in range(rows)]
        row = Signal(range(rows + 1))
        word = Signal(range(max(2, qw)))
        loaded = Signal()
        tile = self.tile.payload
        m.d.comb += self.data.ready.eq(self.tile.valid & ~loaded)
        with m.If(self.data.valid & self.data.ready):
            for r in range(rows):
                for w in range(qw):
                    with m.If((row == r) & (word == w)):
                        m.d.sync += recs[r][w].eq(self.data.payload)
            with m.If(word == qw - 1):
                m.d.sync += [word.eq(0), row.eq(row + 1)]
                with m.If(row == tile.nv - 1):
                    m.d.sync += loaded.eq(1)
            with m.Else():
                m.d.sync += word.eq(word + 1)
        m.d.comb += [self.tq_valid.eq(loaded), self.tq_nv.eq(tile.nv)]
        with m.If(self.tq_take):
            m.d.comb += self.tile.ready.eq(1)
            m.d.sync += [loaded.eq(0), row.eq(0), word.eq(0)]
        for r in range(rows):
            rec = Cat(*recs[r])
            m.d.comb += [self.tq_q[r * head_dim + d].eq(rec[8 * d:8 * d + 8]) for d in range(head_dim)]
            tail = 8 * head_dim                  # u16 mult, then u8 shift (6 bits used)
            m.d.comb += [self.tq_mult[r].eq(rec[tail:tail + 16]), self.tq_shift[r].eq(rec[tail + 16:tail + 22]),
                         self.tq_pos[r].eq(tile.pos[r])]
        return m
