"""K/V word feed: one segment's scale words into a small buffer, then its value words out as
unpacked items (lanes + the mantissas of their scale blocks), one item per word per cycle."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...mathutil import exact_log2
from ..skid import SkidBuffer, slice_stream
from .geometry import DatapathGeometry

__all__ = ["KVFeed"]


class KVFeed(wiring.Component):
    """``seg`` (segment records, popped after the segment's last item) + ``data`` (port words in
    command order: ``sw`` scale words then ``n * value_words`` value words) -> ``item``.

    Segment records arrive through a register slice, and items leave through one
    (:class:`~..skid.SkidBuffer`) together with their segment record, ``seg_out``: the
    scale-buffer read and the unpacking stay off the consumers' product paths. ``seg_done``
    pulses when a segment's last item is taken. ``bits4`` selects int4 values (job constant).
    """

    def __init__(self, geometry: DatapathGeometry):
        self._geom = geometry
        super().__init__({
            "seg": In(stream.Signature(geometry.seg_layout())),
            "data": In(stream.Signature(geometry.data_width)),
            "bits4": In(1),
            "item": Out(stream.Signature(geometry.item_layout())),
            "seg_out": Out(geometry.seg_layout()),
            "seg_done": Out(1),          # the segment's last item taken (its record leaves)
        })

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        mants_per_word, groups, page_tokens = geom.mants_per_word, geom.groups, geom.page_tokens
        m.submodules.sbuf = sbuf = Memory(shape=geom.data_width, depth=max(2, geom.scale_depth), init=[])
        wp = sbuf.write_port()
        rp = sbuf.read_port(domain="comb")

        values = Signal()                 # phase: 0 scale words, 1 value words
        sc = Signal(range(geom.scale_depth + 1))
        t = Signal(range(max(2, page_tokens)))
        w = Signal(range(max(2, geom.value_words(8))))
        # the segment records through a register slice: the pop after a segment's last item (the
        # port's valid) moves the slice's registers, not the record queue's level logic
        seg_in = stream.Signature(geom.seg_layout()).create()
        slice_stream(m, "seg_slice", self.seg, seg_in)
        seg = seg_in.payload
        item = stream.Signature(geom.item_layout()).create()      # unpacked, before the slice
        n_item = len(item.payload.as_value())
        m.submodules.out_slice = osl = SkidBuffer(n_item + len(seg.as_value()))
        m.d.comb += [osl.i.payload.eq(Cat(item.payload, seg)), osl.i.valid.eq(item.valid),
                     item.ready.eq(osl.i.ready),
                     self.item.payload.eq(osl.o.payload[:n_item]), self.seg_out.eq(osl.o.payload[n_item:]),
                     self.item.valid.eq(osl.o.valid), osl.o.ready.eq(self.item.ready)]
        vw = Signal(range(geom.value_words(8) + 1))
        m.d.comb += vw.eq(geom.select_format(self.bits4, int4=geom.value_words(4), int8=geom.value_words(8)))

        # -- scale phase ------------------------------------------------------------------
        with m.If(~values):
            m.d.comb += self.data.ready.eq(seg_in.valid)
        m.d.comb += [wp.addr.eq(sc), wp.data.eq(self.data.payload),
                     wp.en.eq(~values & seg_in.valid & self.data.valid)]
        with m.If(~values & seg_in.valid & self.data.valid):
            with m.If(sc == seg.sw - 1):
                m.d.sync += [sc.eq(0), values.eq(1)]
            with m.Else():
                m.d.sync += sc.eq(sc + 1)

        # -- value phase ------------------------------------------------------------------
        word = self.data.payload
        it = item.payload
        # the word's last-of-token and the token's last-of-segment tests as flip-flops, set for the
        # w and t they will have (w == vw - 1, t == seg.n - 1): the segment record's pop and the
        # item's flags start at registers, not at compares of the counters
        last, t_last = Signal(), Signal()
        seg_last = last & t_last
        m.d.comb += [it.first.eq(w == 0), it.last.eq(last), it.seg_last.eq(seg_last), it.t.eq(t)]
        for i in range(geom.lanes):
            v8 = word[8 * i:8 * i + 8].as_signed() if i < geom.int8_lanes else 0
            v4 = word[4 * i:4 * i + 4].as_signed() if geom.has_int4 else 0
            m.d.comb += it.lanes[i].eq(geom.select_format(self.bits4, int4=v4, int8=v8))
        # dims covered by this word start at d0 = w * (its lanes); block b's group is
        # (d0 + b * block_lanes) / group_size
        group_shift, mant_shift = exact_log2(geom.group_size), exact_log2(mants_per_word)
        rb_range = range(mants_per_word + page_tokens * groups + 1)

        def mant_place(rb, wv):
            """The scale buffer's read address and each block's mantissa index in the word read
            for the word ``wv`` of the token whose first mantissa is ``rb``."""
            d0 = Signal(range(geom.head_dim + 1))
            m.d.comb += d0.eq(geom.select_format(self.bits4, int4=wv << exact_log2(geom.int4_lanes),
                                                 int8=wv << exact_log2(geom.int8_lanes)))
            base = Signal(rb_range)
            m.d.comb += base.eq(rb + (d0 >> group_shift))
            idxs = []
            for b in range(geom.blocks):
                gb = Signal(range(groups + geom.blocks + 1))
                m.d.comb += gb.eq(((d0 + b * geom.block_lanes) >> group_shift))
                idxs.append((rb + gb)[:mant_shift])
            return base >> mant_shift, idxs

        # the token's first mantissa, seg.off + t * groups, a register: loaded with seg.off in the
        # scale phase (a segment has at least one scale word), stepped by groups as t steps. The
        # read address and the mantissa indices are registers too, set with w and row_base for
        # the values they will have: the scale buffer's read starts at flip-flops
        row_base = Signal(rb_range)
        raddr = Signal.like(rp.addr)
        ridx = [Signal(max(1, mant_shift), name=f"ridx{b}") for b in range(geom.blocks)]

        def place(a, idxs):
            return [raddr.eq(a)] + ([x.eq(y) for x, y in zip(ridx, idxs)] if mants_per_word > 1 else [])

        # the place after this item's take, from registers only (the next token's first word, or
        # this token's next word), so that the take (the port's valid) is the last select
        step_a, step_idxs = Signal.like(raddr), [Signal.like(x) for x in ridx]
        (a_tok, idx_tok), (a_word, idx_word) = mant_place(row_base + groups, 0), mant_place(row_base, w + 1)
        m.d.comb += [step_a.eq(Mux(last, a_tok, a_word))]
        m.d.comb += [x.eq(Mux(last, y_tok, y_word)) for x, y_tok, y_word in zip(step_idxs, idx_tok, idx_word)]
        with m.If(~values):
            m.d.sync += [row_base.eq(seg.off), last.eq(vw == 1), t_last.eq(seg.n == 1)]
            m.d.sync += place(*mant_place(seg.off, 0))
        m.d.comb += rp.addr.eq(raddr)
        for b in range(geom.blocks):
            m.d.comb += it.mants[b].eq(rp.data.word_select(ridx[b], 16) if mants_per_word > 1 else rp.data[:16])

        m.d.comb += item.valid.eq(values & seg_in.valid & self.data.valid)
        with m.If(values):
            m.d.comb += self.data.ready.eq(item.ready & seg_in.valid)
        with m.If(item.valid & item.ready):
            m.d.sync += place(step_a, step_idxs)
            with m.If(last):
                m.d.sync += [w.eq(0), t.eq(t + 1), row_base.eq(row_base + groups),
                             last.eq(vw == 1), t_last.eq(t + 1 == seg.n - 1)]
            with m.Else():
                m.d.sync += [w.eq(w + 1), last.eq(w + 1 == vw - 1)]
            with m.If(seg_last):
                m.d.comb += [seg_in.ready.eq(1), self.seg_done.eq(1)]
                m.d.sync += [values.eq(0), t.eq(0), w.eq(0)]
        return m
