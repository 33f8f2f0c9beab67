"""The ChaCha20 block function (RFC 8439 §2.3): one 64-byte keystream block per request.

Dataflow::

    req (key 256 | words 12..15 of the state 128) -> state = constants | key | words
        -> 20 rounds, one per cycle (column rounds even, diagonal rounds odd, four
           quarter-rounds each) -> block = state + initial state -> block (512 bits, LE words)

The oblivious map uses it three ways: the AEAD of its host bins (words 12..15 = block counter
and nonce), and as the PRF of its labels and of its directory hash (words 12..15 = the query
counter, or the 16-byte key). 21 cycles per block; the result is held until taken.
"""
# No `from __future__ import annotations`: the component signature comes from real annotations.

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ChaChaRequest", "ChaCha20Core", "CHACHA_CYCLES", "quarter_round"]

#: cycles from an accepted request to a valid block
CHACHA_CYCLES = 21
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)      # "expand 32-byte k"


class ChaChaRequest(data.Struct):
    key: 256            # 8 little-endian words (state words 4..11)
    words: 128          # state words 12..15: block counter and nonce, or a PRF input


def _rotl(v, n):
    return Cat(v[32 - n:], v[:32 - n])


def quarter_round(a, b, c, d):
    """The RFC 8439 quarter round on four 32-bit Amaranth values; returns the new (a, b, c, d)."""
    a = (a + b)[:32]
    d = _rotl(d ^ a, 16)
    c = (c + d)[:32]
    b = _rotl(b ^ c, 12)
    a = (a + b)[:32]
    d = _rotl(d ^ a, 8)
    c = (c + d)[:32]
    b = _rotl(b ^ c, 7)
    return a, b, c, d


_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


class ChaCha20Core(wiring.Component):
    """One ChaCha20 block per ``req``; ``block`` holds it (valid) until taken."""

    req: In(stream.Signature(ChaChaRequest))
    block: Out(stream.Signature(512))

    def elaborate(self, platform):
        m = Module()
        x = [Signal(32, name=f"x{i}") for i in range(16)]
        init = [Signal(32, name=f"init{i}") for i in range(16)]
        rnd = Signal(range(21))
        busy = Signal()
        m.d.comb += self.req.ready.eq(~busy & ~self.block.valid)
        with m.If(self.req.valid & self.req.ready):
            key, words = self.req.payload.key, self.req.payload.words
            start = [Const(c, 32) for c in _CONSTANTS] + [key[32 * i:32 * i + 32] for i in range(8)] \
                + [words[32 * i:32 * i + 32] for i in range(4)]
            m.d.sync += [s.eq(v) for s, v in zip(x, start)]
            m.d.sync += [s.eq(v) for s, v in zip(init, start)]
            m.d.sync += [rnd.eq(0), busy.eq(1)]
        with m.Elif(busy):
            with m.If(rnd == 20):
                m.d.sync += [busy.eq(0), self.block.valid.eq(1)]
                m.d.sync += self.block.payload.eq(Cat(*[(a + b)[:32] for a, b in zip(x, init)]))
            with m.Else():
                m.d.sync += rnd.eq(rnd + 1)
                for groups, cond in ((_COLUMNS, ~rnd[0]), (_DIAGONALS, rnd[0])):
                    with m.If(cond):
                        for g in groups:
                            out = quarter_round(*(x[i] for i in g))
                            m.d.sync += [x[i].eq(v) for i, v in zip(g, out)]
        with m.If(self.block.valid & self.block.ready):
            m.d.sync += self.block.valid.eq(0)
        return m
