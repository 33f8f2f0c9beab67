"""K/V word feed: one segment's scale words into a small buffer, then its value words out as
unpacked items (lanes + the mantissas of their scale blocks), one item per word per cycle."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import EngineParams

__all__ = ["KVFeed"]


def _log2(v: int) -> int:
    return v.bit_length() - 1


class KVFeed(wiring.Component):
    """``seg`` (segment records, popped after the segment's last item) + ``data`` (port words in
    command order: ``sw`` scale words then ``n * value_words`` value words) -> ``item``.

    ``item.payload`` is combinational from the current data word; ``seg_out`` shows the current
    segment record while its items flow. ``bits4`` selects int4 values (job constant).
    """

    def __init__(self, params: EngineParams):
        self._p = params
        super().__init__({
            "seg": In(stream.Signature(params.seg_layout())),
            "data": In(stream.Signature(params.data_width)),
            "bits4": In(1),
            "item": Out(stream.Signature(params.item_layout())),
            "seg_out": Out(params.seg_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        W, L, Es, nb, c, mpw = p.data_width, p.L, p.Es, p.nb, p.c, p.mpw
        m.submodules.sbuf = sbuf = Memory(shape=W, depth=max(2, p.scale_depth), init=[])
        wp = sbuf.write_port()
        rp = sbuf.read_port(domain="comb")

        values = Signal()                 # phase: 0 scale words, 1 value words
        sc = Signal(range(p.scale_depth + 1))
        t = Signal(range(max(2, p.P)))
        w = Signal(range(max(2, p.vw8)))
        seg = self.seg.payload
        m.d.comb += self.seg_out.eq(seg)
        vw = Signal(range(p.vw8 + 1))
        if p.has4 and p.has8:
            m.d.comb += vw.eq(Mux(self.bits4, p.vw4, p.vw8))
        else:
            m.d.comb += vw.eq(p.vw4 if p.has4 else p.vw8)

        # -- scale phase ------------------------------------------------------------------
        with m.If(~values):
            m.d.comb += self.data.ready.eq(self.seg.valid)
        m.d.comb += [wp.addr.eq(sc), wp.data.eq(self.data.payload),
                     wp.en.eq(~values & self.seg.valid & self.data.valid)]
        with m.If(~values & self.seg.valid & self.data.valid):
            with m.If(sc == seg.sw - 1):
                m.d.sync += [sc.eq(0), values.eq(1)]
            with m.Else():
                m.d.sync += sc.eq(sc + 1)

        # -- value phase ------------------------------------------------------------------
        word = self.data.payload
        it = self.item.payload
        last = w == vw - 1
        seg_last = last & (t == seg.n - 1)
        m.d.comb += [it.first.eq(w == 0), it.last.eq(last), it.seg_last.eq(seg_last), it.t.eq(t)]
        for i in range(L):
            v8 = word[8 * i:8 * i + 8].as_signed() if i < Es else 0
            v4 = word[4 * i:4 * i + 4].as_signed() if p.has4 else 0
            if p.has4 and p.has8:
                m.d.comb += it.lanes[i].eq(Mux(self.bits4, v4, v8))
            else:
                m.d.comb += it.lanes[i].eq(v4 if p.has4 else v8)
        # dims covered by this word start at d0 = w * E; block b's group is (d0 + b*c) / G
        d0 = Signal(range(p.hd + 1))
        if p.has4 and p.has8:
            m.d.comb += d0.eq(Mux(self.bits4, w << _log2(p.E4), w << _log2(Es)))
        else:
            m.d.comb += d0.eq(w << _log2(p.E4 if p.has4 else Es))
        g0 = d0 >> _log2(p.G)
        base = Signal(range(mpw + p.P * p.ng + 1))
        m.d.comb += base.eq(seg.off + t * p.ng + g0)
        m.d.comb += rp.addr.eq(base >> _log2(mpw))
        for b in range(nb):
            gb = Signal(range(p.ng + nb + 1), name=f"g{b}")
            m.d.comb += gb.eq(((d0 + b * c) >> _log2(p.G)))
            idx = (seg.off + t * p.ng + gb)[:_log2(mpw)] if mpw > 1 else 0
            m.d.comb += it.mants[b].eq(rp.data.word_select(idx, 16) if mpw > 1 else rp.data[:16])

        m.d.comb += self.item.valid.eq(values & self.seg.valid & self.data.valid)
        with m.If(values):
            m.d.comb += self.data.ready.eq(self.item.ready & self.seg.valid)
        with m.If(self.item.valid & self.item.ready):
            with m.If(last):
                m.d.sync += [w.eq(0), t.eq(t + 1)]
            with m.Else():
                m.d.sync += w.eq(w + 1)
            with m.If(seg_last):
                m.d.comb += self.seg.ready.eq(1)
                m.d.sync += [values.eq(0), t.eq(0), w.eq(0)]
        return m
