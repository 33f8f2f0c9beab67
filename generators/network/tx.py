"""One transmit port of the switch: whole packets from the output bus onto ``m_axis``.

Dataflow::

    bus header (at the grant) -> header FIFO (``tx_packets`` headers)
    bus words                 -> word FIFO (``tx_packets * packet_words`` words)
    serializer: header words (``header_beats``), then ``count`` words for a payload type;
                ``tlast`` on the last word of the packet

The bus grants a packet only when the header FIFO has a free entry and the word FIFO has
room for all of its words (``hdr_room``, ``data_free``), so a granted unit never waits.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Module, Mux, Signal, Value
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
        super().__init__({
            "m_axis": Out(AxiStreamSignature(geom.data_width)),
            "hdr_push": In(1),
            "hdr_in": In(HEADER_LAYOUT),
            "hdr_room": Out(1),
            "data_push": In(1),
            "data_in": In(geom.data_width),
            "data_free": Out(range(depth + 1)),
            "sent": Out(1),          # a packet's header left for the link (pulse)
        })

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        W, H, P = g.data_width, g.header_beats, g.packet_words
        depth = g.tx_packets * P
        m.submodules.hdrs = hdrs = SyncFIFOBuffered(width=128, depth=g.tx_packets)
        m.submodules.words = words = SyncFIFOBuffered(width=W, depth=depth)
        m.d.comb += [hdrs.w_data.eq(Value.cast(self.hdr_in)), hdrs.w_en.eq(self.hdr_push),
                     self.hdr_room.eq(hdrs.w_rdy),
                     words.w_data.eq(self.data_in), words.w_en.eq(self.data_push),
                     self.data_free.eq(depth - words.level)]

        hdr = Signal(HEADER_LAYOUT)
        beat = Signal(range(H))
        left = Signal(range(P + 1))          # payload words still to send
        axis = self.m_axis

        def load():
            """Take the next header if there is one (at IDLE or on a packet's last word: no gap)."""
            m.d.comb += hdrs.r_en.eq(1)
            with m.If(hdrs.r_rdy):
                view = HEADER_LAYOUT(hdrs.r_data)
                m.d.sync += [Value.cast(hdr).eq(hdrs.r_data), beat.eq(0),
                             left.eq(Mux(RtlOps.one_of(view.type, PAYLOAD_TYPES), view.count, 0))]
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
                m.d.comb += [axis.tvalid.eq(words.r_rdy), axis.tdata.eq(words.r_data), axis.tlast.eq(left == 1),
                             words.r_en.eq(axis.tready)]
                with m.If(axis.tvalid & axis.tready):
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        load()
        return m
