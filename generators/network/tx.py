"""One transmit port of the switch: whole packets from the output buses onto ``m_axis``.

Dataflow (one pair of FIFOs per output bus ``b``)::

    bus b header (at the grant) -> header FIFO b (``tx_packets`` headers)
    bus b words                 -> word FIFO b (``tx_packets * packet_words`` words)
    grant order (which buses pushed a header, per cycle) -> order FIFO
    serializer: the next packet in grant order (same cycle: lower bus first): its header words
                (``header_beats``), then ``count`` words for a payload type from its bus's word
                FIFO; ``tlast`` on the last word of the packet

A bus grants a packet only when this port's header FIFO of that bus has a free entry and its
word FIFO has room for all of its words (``hdr_room[b]``, ``data_free[b]``), so a granted unit
never waits. Packets leave in the order they were granted, whatever bus carried them, so a
port sends what one unit decided in the order it decided it.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hbmforge.engines.network import PAYLOAD_TYPES, SwitchGeometry

from ..engine import AxiStreamSignature, RtlOps
from .packet import HEADER_LAYOUT

__all__ = ["PortTx"]


class PortTx(wiring.Component):
    """The transmit side of one switch port (see the module docstring)."""

    def __init__(self, geom: SwitchGeometry):
        if not isinstance(geom, SwitchGeometry):
            raise TypeError(f"geom must be a SwitchGeometry, got {type(geom).__name__}")
        self._geom = geom
        depth = geom.tx_packets * geom.packet_words
        B = geom.out_buses
        super().__init__({
            "m_axis": Out(AxiStreamSignature(geom.data_width)),
            "hdr_push": In(1).array(B),
            "hdr_in": In(HEADER_LAYOUT).array(B),
            "hdr_room": Out(1).array(B),
            "data_push": In(1).array(B),
            "data_in": In(geom.data_width).array(B),
            "data_free": Out(range(depth + 1)).array(B),
            "sent": Out(1),          # a packet's header left for the link (pulse)
        })

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        W, H, P, B = g.data_width, g.header_beats, g.packet_words, g.out_buses
        depth = g.tx_packets * P
        hdrs, words = [], []
        for b in range(B):
            m.submodules[f"hdrs{b}"] = h = SyncFIFOBuffered(width=128, depth=g.tx_packets)
            m.submodules[f"words{b}"] = w = SyncFIFOBuffered(width=W, depth=depth)
            m.d.comb += [h.w_data.eq(Value.cast(self.hdr_in[b])), h.w_en.eq(self.hdr_push[b]),
                         w.w_data.eq(self.data_in[b]), w.w_en.eq(self.data_push[b]),
                         self.data_free[b].eq(depth - w.level)]
            hdrs.append(h)
            words.append(w)
        # the grant order: one entry per cycle in which some bus pushed a header (its bus mask);
        # never fuller than the headers it orders, so it has room whenever they have
        m.submodules.order = order = SyncFIFOBuffered(width=B, depth=B * g.tx_packets)
        pushed = Cat(*self.hdr_push)
        m.d.comb += [order.w_data.eq(pushed), order.w_en.eq(pushed.any())]
        for b in range(B):
            m.d.comb += self.hdr_room[b].eq(hdrs[b].w_rdy & order.w_rdy)
        served = Signal(B)                   # buses of the order FIFO's head entry already sent
        left_mask = Signal(B)
        m.d.comb += left_mask.eq(order.r_data & ~served)
        nxt = Signal(range(max(B, 2)))       # the lowest bus of the head entry not yet sent
        for b in reversed(range(B)):
            with m.If(left_mask[b]):
                m.d.comb += nxt.eq(b)
        cur = Signal(range(max(B, 2)))       # the bus of the packet being sent
        head = Signal(128)
        head_rdy = Signal()
        nxt_bit = Signal(B)
        m.d.comb += [head.eq(Array(h.r_data for h in hdrs)[nxt]),
                     head_rdy.eq(order.r_rdy & Array(h.r_rdy for h in hdrs)[nxt]),
                     nxt_bit.eq(Cat(*(nxt == b for b in range(B))))]

        hdr = Signal(HEADER_LAYOUT)
        beat = Signal(range(H))
        left = Signal(range(P + 1))          # payload words still to send
        axis = self.m_axis

        def load():
            """Take the next header in grant order if there is one (at IDLE or on a packet's last
            word: no gap)."""
            with m.If(head_rdy):
                view = HEADER_LAYOUT(head)
                m.d.sync += [Value.cast(hdr).eq(head), beat.eq(0), cur.eq(nxt),
                             left.eq(Mux(RtlOps.one_of(view.type, PAYLOAD_TYPES), view.count, 0))]
                for b in range(B):
                    m.d.comb += hdrs[b].r_en.eq(nxt == b)
                with m.If((left_mask & ~nxt_bit) == 0):
                    m.d.comb += order.r_en.eq(1)
                    m.d.sync += served.eq(0)
                with m.Else():
                    m.d.sync += served.eq(served | nxt_bit)
                m.d.comb += self.sent.eq(1)
                m.next = "HEADER"
            with m.Else():
                m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"):
                load()
            with m.State("HEADER"):
                m.d.comb += [axis.tvalid.eq(1),
                             axis.tdata.eq(Value.cast(hdr).word_select(beat, W) if H > 1 else Value.cast(hdr)),
                             axis.tlast.eq((beat == H - 1) & (left == 0))]
                with m.If(axis.tready):
                    with m.If(beat != H - 1):
                        m.d.sync += beat.eq(beat + 1)
                    with m.Elif(left != 0):
                        m.next = "DATA"
                    with m.Else():
                        load()
            with m.State("DATA"):
                m.d.comb += [axis.tvalid.eq(Array(w.r_rdy for w in words)[cur]),
                             axis.tdata.eq(Array(w.r_data for w in words)[cur]), axis.tlast.eq(left == 1)]
                for b in range(B):
                    m.d.comb += words[b].r_en.eq(axis.tready & (cur == b))
                with m.If(axis.tvalid & axis.tready):
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        load()
        return m
