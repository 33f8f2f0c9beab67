"""One receive port of the switch: checks every packet whole and keeps the good ones.

Dataflow::

    s_axis -> header words (shift register) -> header rules (port, check, type, ranges)
           -> payload words -> buffer slot ``wp`` (``rx_packets`` slots of ``packet_words``)
    tlast: length right and rules passed -> commit slot ``wp`` (header kept beside it)
           otherwise                     -> ``dropped`` pulse, the slot is reused
    head (oldest committed packet): ``head_valid``/``head`` -> the units; ``rd_addr`` ->
    ``rd_data`` one cycle later; ``pop`` frees the slot; ``head2_valid``/``head2``: the packet
    after it (taken by a unit while the head's unit reads its last words)

A packet is never handed on before its last word passed the length check, so a bad packet
is dropped whole and never reaches a slot of the pool.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbmforge.engines.network import PAYLOAD_TYPES, SwitchGeometry, switch_header_rules
from hbmforge.mathutil import exact_log2

from ..engine import AxiStreamSignature, RtlOps
from .packet import HEADER_LAYOUT, header_fields, rule_fails

__all__ = ["PortRx"]


class PortRx(wiring.Component):
    """The receive side of switch port ``port`` (see the module docstring)."""

    def __init__(self, geom: SwitchGeometry, port: int):
        if not isinstance(geom, SwitchGeometry):
            raise TypeError(f"geom must be a SwitchGeometry, got {type(geom).__name__}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < geom.ports:
            raise ValueError(f"port must be in [0, {geom.ports}), got {port!r}")
        self._geom, self._port = geom, port
        super().__init__({
            "s_axis": In(AxiStreamSignature(geom.data_width)),
            "head_valid": Out(1),
            "head": Out(HEADER_LAYOUT),
            "head2_valid": Out(1),   # the packet after the head (for the unit that takes it next)
            "head2": Out(HEADER_LAYOUT),
            "rd_addr": In(range(geom.packet_words)),
            "rd_data": Out(geom.data_width),
            "pop": In(1),
            "received": Out(1),      # a packet's last word arrived (pulse)
            "dropped": Out(1),       # ... and it was bad (pulse)
        })

    @property
    def geom(self) -> SwitchGeometry:
        return self._geom

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        W, P, H, N = g.data_width, g.packet_words, g.header_beats, g.rx_packets
        pbits = exact_log2(P)

        m.submodules.buf = buf = Memory(shape=W, depth=N * P, init=[])
        wr = buf.write_port()
        rd = buf.read_port()
        headers = Array(Signal(128, name=f"hdr{i}") for i in range(N))

        wp = Signal(range(N))
        rp = Signal(range(N))
        level = Signal(range(N + 1))
        commit = Signal()
        popped = Signal()
        rp2 = Signal(range(N))
        m.d.comb += [rp2.eq(Mux(rp == N - 1, 0, rp + 1)), self.head2_valid.eq(level >= 2), self.head2.eq(headers[rp2])]
        m.d.comb += [self.head_valid.eq(level != 0), self.head.eq(headers[rp]), popped.eq(self.pop & self.head_valid),
                     rd.addr.eq(Cat(self.rd_addr, rp) if pbits else rp), self.rd_data.eq(rd.data)]
        with m.If(popped):
            m.d.sync += rp.eq(Mux(rp == N - 1, 0, rp + 1))
        m.d.sync += level.eq(level + commit - popped)

        # -- receiving -------------------------------------------------------------------
        beat = Signal(range(H + P + 2))      # words of this packet so far (saturates at H + P + 1)
        hreg = Signal(H * W)                 # header words, word i at bits [i W, (i + 1) W)
        bad = Signal()                       # this packet ran past its slot
        axis = self.s_axis
        take = Signal()
        m.d.comb += [axis.tready.eq(level != N), take.eq(axis.tvalid & axis.tready)]
        # the whole header: the words so far, with the current word in place at the last header word
        hdr = Signal(HEADER_LAYOUT)
        cur = axis.tdata[:128] if H == 1 else Cat(hreg[:W * (H - 1)], axis.tdata)[:128]
        m.d.comb += Value.cast(hdr).eq(Mux(beat == H - 1, cur, hreg[:128]))
        rules_fail = rule_fails(switch_header_rules(g), header_fields(hdr, port=Const(self._port, 4)))
        payload = RtlOps.one_of(hdr.type, PAYLOAD_TYPES)
        want = Signal(range(H + P + 1))
        m.d.comb += want.eq(H + Mux(payload, hdr.count[:pbits + 1], 0))
        with m.If(take):
            for i in range(H):
                with m.If(beat == i):
                    m.d.sync += hreg[W * i:W * (i + 1)].eq(axis.tdata)
            with m.If(beat < H + P + 1):
                m.d.sync += beat.eq(beat + 1)
            with m.If(axis.tlast):
                m.d.sync += [beat.eq(0), bad.eq(0)]
                length_ok = (beat + 1 == want) & (hdr.count <= P)
                ok = ~bad & length_ok & ~rules_fail
                if H > 1:
                    ok = ok & (beat >= H - 1)           # a whole header arrived
                m.d.comb += [self.received.eq(1), commit.eq(ok), self.dropped.eq(~ok)]
                with m.If(ok):
                    m.d.sync += [headers[wp].eq(Value.cast(hdr)), wp.eq(Mux(wp == N - 1, 0, wp + 1))]
            with m.Elif(beat >= H + P):
                m.d.sync += bad.eq(1)
        word = (beat - H)[:pbits] if pbits else Const(0, 0)
        m.d.comb += [wr.addr.eq(Cat(word, wp) if pbits else wp), wr.data.eq(axis.tdata),
                     wr.en.eq(take & (beat >= H) & (beat < H + P))]
        return m
