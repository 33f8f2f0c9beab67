"""Q loader: the next tile's query records (int8 row, u16 mult, u8 shift) into a shadow
buffer while the current tile computes; the score unit copies it at its tile start."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...engines.attention import CTX_BITS, MULT_BITS
from .params import EngineParams

__all__ = ["QLoader", "q_tile_layout"]


def q_tile_layout(rows: int) -> data.StructLayout:
    return data.StructLayout({"nv": range(rows + 1), "pos": data.ArrayLayout(CTX_BITS, rows)})


class QLoader(wiring.Component):
    def __init__(self, params: EngineParams):
        self._p = params
        R, hd = params.R, params.hd
        super().__init__({
            "tile": In(stream.Signature(q_tile_layout(R))),
            "data": In(stream.Signature(params.data_width)),
            "tq_valid": Out(1),
            "tq_take": In(1),
            "tq_q": Out(data.ArrayLayout(8, R * hd)),
            "tq_mult": Out(data.ArrayLayout(MULT_BITS, R)),
            "tq_shift": Out(data.ArrayLayout(6, R)),
            "tq_pos": Out(data.ArrayLayout(CTX_BITS, R)),
            "tq_nv": Out(range(R + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        R, hd, W = p.R, p.hd, p.data_width
        qw = p.geom.q_record_bytes // p.B
        recs = [[Signal(W, name=f"qrec{r}_{w}") for w in range(qw)] for r in range(R)]
        row = Signal(range(R + 1))
        word = Signal(range(max(2, qw)))
        loaded = Signal()
        tile = self.tile.payload
        m.d.comb += self.data.ready.eq(self.tile.valid & ~loaded)
        with m.If(self.data.valid & self.data.ready):
            for r in range(R):
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
        for r in range(R):
            rec = Cat(*recs[r])
            m.d.comb += [self.tq_q[r * hd + d].eq(rec[8 * d:8 * d + 8]) for d in range(hd)]
            m.d.comb += [self.tq_mult[r].eq(rec[8 * hd:8 * hd + 16]), self.tq_shift[r].eq(rec[8 * hd + 16:8 * hd + 22]),
                         self.tq_pos[r].eq(tile.pos[r])]
        return m
