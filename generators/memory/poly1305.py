"""The Poly1305 one-time authenticator (RFC 8439 §2.5), one 16-byte block every five cycles.

Dataflow::

    key (r | s, 256 bits; r clamped here) -> h = 0
    msg (16 bytes, LE) -> a = h + m + 2**128 -> a * r in four 132 x 32-bit steps
        -> h = a * r folded twice modulo 2**130 - 5 (h < 2**131, a partial reduction)
    after the block marked ``last``: tag = ((h mod 2**130 - 5) + s) mod 2**128 -> tag

Only whole 16-byte blocks are fed: the AEAD of the oblivious map authenticates ciphertexts of
whole 16-byte blocks and one length block, never a partial block.
"""
# No `from __future__ import annotations`: the component signature comes from real annotations.

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PolyBlock", "Poly1305Core", "POLY_BLOCK_CYCLES", "R_CLAMP"]

R_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
P1305 = (1 << 130) - 5
#: cycles per 16-byte block (one to add the block, four multiply steps, one fold)
POLY_BLOCK_CYCLES = 6


class PolyBlock(data.Struct):
    data: 128
    last: 1


class Poly1305Core(wiring.Component):
    """``key`` starts a MAC; ``msg`` blocks follow; ``tag`` answers the block marked ``last``."""

    key: In(stream.Signature(256))
    msg: In(stream.Signature(PolyBlock))
    tag: Out(stream.Signature(128))

    def elaborate(self, platform):
        m = Module()
        r = Signal(128)
        s = Signal(128)
        h = Signal(131)
        a = Signal(132)
        acc = Signal(256)
        step = Signal(range(4))
        last = Signal()

        with m.FSM():
            with m.State("KEY"):
                m.d.comb += self.key.ready.eq(1)
                with m.If(self.key.valid):
                    m.d.sync += [r.eq(self.key.payload[:128] & R_CLAMP), s.eq(self.key.payload[128:]), h.eq(0)]
                    m.next = "MSG"
            with m.State("MSG"):
                m.d.comb += self.msg.ready.eq(1)
                with m.If(self.key.valid):
                    m.d.comb += [self.key.ready.eq(1), self.msg.ready.eq(0)]
                    m.d.sync += [r.eq(self.key.payload[:128] & R_CLAMP), s.eq(self.key.payload[128:]), h.eq(0)]
                with m.Elif(self.msg.valid):
                    m.d.sync += [a.eq(h + self.msg.payload.data + (1 << 128)), acc.eq(0), step.eq(0),
                                 last.eq(self.msg.payload.last)]
                    m.next = "MUL"
            with m.State("MUL"):
                limb = Signal(32)
                with m.Switch(step):
                    for i in range(4):
                        with m.Case(i):
                            m.d.comb += limb.eq(r[32 * i:32 * i + 32])
                m.d.sync += [acc.eq(acc + ((a * limb) << (32 * step))[:256]), step.eq(step + 1)]
                with m.If(step == 3):
                    m.next = "FOLD"
            with m.State("FOLD"):
                h1 = Signal(131)
                m.d.comb += h1.eq(acc[:130] + acc[130:] * 5)
                m.d.sync += h.eq(h1[:130] + h1[130:] * 5)
                with m.If(last):
                    m.next = "TAG"
                with m.Else():
                    m.next = "MSG"
            with m.State("TAG"):
                h_a = Signal(131)
                h_b = Signal(131)
                m.d.comb += [h_a.eq(Mux(h >= P1305, h - P1305, h)), h_b.eq(Mux(h_a >= P1305, h_a - P1305, h_a))]
                m.d.comb += [self.tag.valid.eq(1), self.tag.payload.eq((h_b + s)[:128])]
                with m.If(self.tag.ready):
                    m.next = "KEY"
        return m
