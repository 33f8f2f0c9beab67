"""Inline scales: split the combined weight-stripe words into weight words and scale words.

With ``scale_stream: inline`` every K slice's stream in the weight stripes is
``[S0][r weight words][S1][r weight words]...`` (:meth:`hbmforge.engines.matmul.MatmulGeometry.inline_positions`):
scale word ``j`` (``P*W`` bits of u16 mantissas) comes right before the ``r`` weight words whose
groups it scales, ``r = group_size x b / 16`` for ``b`` stream bits per weight (``ratio``, set from
the job's format). The demultiplexer takes one combined word (word ``c`` of all ``P`` stripes) per
cycle and routes it to the weight unpacker or to the scale output::

    w_in[0..P-1] --(all valid)--> pos == 0 ? --> s (one-word register) --> scale WidthAdapter
                                            \\--> w_out[0..P-1] --> WeightUnpacker

``pos`` counts the words since the last scale word and restarts at every pass; ``words`` brings the
combined words of each pass in order (the ``bytes / word_bytes`` of the pass's ``w_cmd``).

Flow: the ``s`` register holds the next scale word while the scale adapter still hands out the
current one, so a weight word never waits behind a scale word that its own items do not need
(scale word ``j + 1`` follows every weight word of block ``j``: once it is at the head, everything
block ``j``'s items need has been routed, so the adapter frees up and the register drains; no
deadlock, and no bubble on the weight side when a combined word carries two or more chunks).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints

__all__ = ["InlineScaleDemux"]


class InlineScaleDemux(wiring.Component):
    """``P`` weight stripes -> weights (``w_out``, ``P`` streams in step) and scale words (``s``).

    ``ratio``: weight words per scale word (held for the job); ``words``: combined words per pass;
    ``start`` clears the pass state for a new job.
    """

    def __init__(self, *, weight_ports: int, data_width: int, max_ratio: int):
        require_positive_ints(weight_ports=weight_ports, data_width=data_width, max_ratio=max_ratio)
        self._ports, self._width, self._max_ratio = weight_ports, data_width, max_ratio
        super().__init__({
            "w_in": In(stream.Signature(data_width)).array(weight_ports),
            "w_out": Out(stream.Signature(data_width)).array(weight_ports),
            "s": Out(stream.Signature(weight_ports * data_width)),
            "words": In(stream.Signature(32)),
            "ratio": In(range(max_ratio + 1)),
            "start": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self._ports
        left = Signal(32)                          # combined words left in the current pass
        pos = Signal(range(self._max_ratio + 1))   # words since the pass's last scale word (0: a scale word)
        # left != 0, left == 1, pos == 0 and pos == ratio as flags kept beside the counters: the
        # streams' valid and ready start at flip-flops, not at a 32-bit compare (the demux's
        # `left != 0` into the unpacker's adapters was 7 LUT levels in u280_llm512's matmul)
        left_nz, left_one, pos_zero, pos_top = Signal(), Signal(), Signal(init=1), Signal()
        sreg = Signal(P * self._width, reset_less=True)
        svalid = Signal()

        all_valid = Signal()
        m.d.comb += all_valid.eq(Cat(*(s.valid for s in self.w_in)).all())
        head = all_valid & left_nz
        is_scale = pos_zero
        s_room = ~svalid | self.s.ready
        out_ready = Mux(is_scale, s_room, self.w_out[0].ready)
        take = Signal()
        m.d.comb += take.eq(head & out_ready)
        for i in range(P):
            m.d.comb += [self.w_out[i].payload.eq(self.w_in[i].payload),
                         self.w_out[i].valid.eq(head & ~is_scale),
                         self.w_in[i].ready.eq(take)]
        m.d.comb += [self.s.payload.eq(sreg), self.s.valid.eq(svalid)]
        with m.If(self.s.valid & self.s.ready):
            m.d.sync += svalid.eq(0)
        with m.If(take & is_scale):
            m.d.sync += [sreg.eq(Cat(*(s.payload for s in self.w_in))), svalid.eq(1)]

        def set_pos(value, zero, top):
            m.d.sync += [pos.eq(value), pos_zero.eq(zero), pos_top.eq(top)]

        pass_end = take & left_one
        m.d.comb += self.words.ready.eq(~left_nz | pass_end)
        with m.If(take):
            m.d.sync += [left.eq(left - 1), left_nz.eq(~left_one), left_one.eq(left == 2)]
            with m.If(left_one | pos_top):
                set_pos(0, 1, self.ratio == 0)
            with m.Else():
                set_pos(pos + 1, 0, pos + 1 == self.ratio)
        with m.If(self.words.valid & self.words.ready):
            w = self.words.payload
            m.d.sync += [left.eq(w), left_nz.eq(w != 0), left_one.eq(w == 1)]
            set_pos(0, 1, self.ratio == 0)
        with m.If(self.start):
            m.d.sync += [left.eq(0), left_nz.eq(0), left_one.eq(0)]
            set_pos(0, 1, self.ratio == 0)
        return m
