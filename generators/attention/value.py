"""Value unit: P.V accumulation into a rotating accumulator ring (one slot of ``Es`` head dims
per int8 word), the softmax denominator, and the output stage (``acc * reciprocal(l)``, int32
rows to the writer).

The ring holds ``D = head_dim / Es`` slots per row; every V value word updates the slot(s) it
covers at the head of the ring and rotates, so no address decoding is needed. The first token
of a segment applies the segment's rescale factor ``alpha`` to each slot as it passes
(``alpha = 0`` on a tile's first segment clears the ring without a separate pass).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...engines.attention import OUT_FRAC, P_FRAC, RECIP_X_BITS
from ..streams import dma_command_stream
from .params import EngineParams
from .recip import Reciprocal
from .score import p_entry_layout

__all__ = ["ValueUnit", "out_tile_layout"]


def _log2(v: int) -> int:
    return v.bit_length() - 1


def out_tile_layout(rows: int) -> data.StructLayout:
    """Where a tile's rows go: ``nv`` valid rows, row index ``ri = pos_idx * q_heads + head``."""
    return data.StructLayout({"nv": range(rows + 1), "ri": data.ArrayLayout(32, rows)})


def _rescale(v, alpha, bits: int):
    """``rshift_round(v * alpha, 15)`` with ``v`` split at bit 15 (exact, narrower products)."""
    hi = v[P_FRAC:].as_signed()
    lo = v[:P_FRAC]
    return hi * alpha + ((lo * alpha + (1 << (P_FRAC - 1))) >> P_FRAC)


class ValueUnit(wiring.Component):
    def __init__(self, params: EngineParams):
        self._p = params
        R, W = params.R, params.data_width
        super().__init__({
            "item": In(stream.Signature(params.item_layout())),
            "seg": In(params.seg_layout()),
            "bits4": In(1),
            "p": In(stream.Signature(p_entry_layout(R))),
            "tile": In(stream.Signature(out_tile_layout(R))),
            "o_addr": In(64),
            "out_cmd": Out(dma_command_stream()),
            "out_data": Out(stream.Signature(W)),
            "tile_done": Out(1),
            "fire": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        R, D, Es, L, nb, c, W = p.R, p.D, p.Es, p.L, p.nb, p.c, p.data_width
        ab, lb = p.geom.acc_bits, p.geom.l_bits
        it = self.item.payload
        k4 = p.k4 if p.has4 else 1

        ring = [[Signal(signed(ab) if False else Es * ab, name=f"acc{r}_{s}") for s in range(D)] for r in range(R)]
        lreg = [Signal(lb, name=f"l{r}") for r in range(R)]
        alpha = [Signal(P_FRAC + 1, name=f"alpha{r}") for r in range(R)]
        have_alpha = Signal()
        resc = Signal()
        hold = Signal()

        def lane(r, s, i):
            return ring[r][s][i * ab:(i + 1) * ab].as_signed()

        # -- P.V -----------------------------------------------------------------------------
        with m.If(~have_alpha & ~hold):
            m.d.comb += self.p.ready.eq(self.p.valid & self.p.payload.alpha)
            with m.If(self.p.valid & self.p.payload.alpha):
                m.d.sync += [have_alpha.eq(1), resc.eq(1)]
                m.d.sync += [alpha[r].eq(self.p.payload.vals[r]) for r in range(R)]
        m.d.comb += self.item.ready.eq(have_alpha & ~hold & self.p.valid & ~self.p.payload.alpha)
        take = self.item.valid & self.item.ready
        m.d.comb += self.fire.eq(take)
        with m.If(take & it.last):
            m.d.comb += self.p.ready.eq(1)
            m.d.sync += resc.eq(0)
            with m.If(it.seg_last):
                m.d.sync += have_alpha.eq(0)
                with m.If(self.seg.tile_last):
                    m.d.sync += hold.eq(1)
        # the scale-block mantissa times each value lane
        vv = []
        for i in range(L):
            s = Signal(signed(26), name=f"vv{i}")
            m.d.comb += s.eq(it.mants[i // c] * it.lanes[i])
            vv.append(s)
        rotate = Signal()          # output stage: rotate every ring by one slot
        for r in range(R):
            pr = self.p.payload.vals[r]
            upd = []
            for s in range(min(D, k4)):
                lanes = []
                for li in range(Es):
                    i = s * Es + li
                    a = lane(r, s, li)
                    base = Mux(resc, _rescale(a, alpha[r], ab), a)
                    lanes.append((base + pr * vv[i])[:ab])
                upd.append(Cat(*lanes))
            with m.If(take):
                with m.If(it.first):
                    lb_ = Mux(resc, _rescale(lreg[r], alpha[r], lb), lreg[r])
                    m.d.sync += lreg[r].eq(lb_ + pr)
                for s in range(D):
                    def after(kk):
                        src = (s + kk) % D
                        return upd[src] if src < kk else ring[r][src]
                    if p.has4 and p.has8:
                        m.d.sync += ring[r][s].eq(Mux(self.bits4, after(min(D, k4)), after(1)))
                    else:
                        m.d.sync += ring[r][s].eq(after(min(D, k4)) if p.has4 else after(1))
            with m.Elif(rotate):
                for s in range(D):
                    m.d.sync += ring[r][s].eq(ring[r][(s + 1) % D])

        # -- output stage ----------------------------------------------------------------------
        tile = self.tile.payload
        row = Signal(range(R + 1))
        slot = Signal(range(max(2, D)))
        m.submodules.recip = recip = Reciprocal(lb)
        lsel = Signal(lb)
        m.d.comb += lsel.eq(Cat(*lreg).word_select(row[:max(1, _log2(R))] if R > 1 else 0, lb))
        m.d.comb += recip.l.eq(lsel)
        y = Signal(RECIP_X_BITS + 1)
        n = Signal(range(lb + 1))
        head = Signal(Es * ab)
        m.d.comb += head.eq(Cat(*(ring[r][0] for r in range(R))).word_select(
            row[:max(1, _log2(R))] if R > 1 else 0, Es * ab))
        words = Es * 32 // W
        obuf = Signal(Es * 32)
        left = Signal(range(words + 1))
        row_bytes = p.hd * 4
        m.d.comb += [self.out_cmd.payload.addr.eq(self.o_addr + (tile.ri[row[:max(1, _log2(R))] if R > 1 else 0]
                                                                  << _log2(row_bytes))),
                     self.out_cmd.payload.bytes.eq(row_bytes),
                     self.out_data.payload.eq(obuf[:W])]
        shm1 = Signal(range(lb + 16))
        m.d.comb += shm1.eq(n + 15 - OUT_FRAC)
        outs = []
        for li in range(Es):
            a = head[li * ab:(li + 1) * ab].as_signed()
            prod = Signal(signed(ab + RECIP_X_BITS + 2), name=f"oprod{li}")
            m.d.comb += prod.eq(a * y)
            v = ((prod >> shm1) + 1) >> 1
            o = Mux(v > (1 << 31) - 1, (1 << 31) - 1, Mux(v < -(1 << 31), -(1 << 31), v))
            outs.append(o[:32])
        with m.FSM():
            with m.State("IDLE"):
                with m.If(hold & self.tile.valid):
                    m.d.sync += row.eq(0)
                    m.next = "ROW"
            with m.State("ROW"):
                with m.If(row == tile.nv):
                    m.d.comb += [self.tile.ready.eq(1), self.tile_done.eq(1)]
                    m.d.sync += hold.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [y.eq(recip.y), n.eq(recip.n), slot.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += self.out_cmd.valid.eq(1)
                with m.If(self.out_cmd.ready):
                    m.next = "SLOT"
            with m.State("SLOT"):
                m.d.sync += [obuf.eq(Cat(*outs)), left.eq(words)]
                m.d.comb += rotate.eq(1)
                m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.out_data.valid.eq(1)
                with m.If(self.out_data.ready):
                    m.d.sync += [obuf.eq(obuf >> W), left.eq(left - 1)]
                    with m.If(left == 1):
                        with m.If(slot == D - 1):
                            m.d.sync += row.eq(row + 1)
                            m.next = "ROW"
                        with m.Else():
                            m.d.sync += slot.eq(slot + 1)
                            m.next = "SLOT"
        return m
