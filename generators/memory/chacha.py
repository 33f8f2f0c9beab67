"""The ChaCha20 block function (RFC 8439 §2.3): one 64-byte keystream block per request.

Dataflow::

    req (key 256 | words 12..15 of the state 128) -> state = constants | key | words
    req -> a register -> state = constants | key | words
        -> 20 rounds, each in four cycles (column rounds even, diagonal rounds odd, four
           quarter-rounds each, one add and its XOR-rotate a cycle), always on the columns of
           the state as kept: a column round's last step keeps it diagonalized, a diagonal
           round's back -> block = state + initial state -> block (512 bits, LE words)

The oblivious map uses it three ways: the AEAD of its host bins (words 12..15 = block counter
and nonce), and as the PRF of its labels and of its directory hash (words 12..15 = the query
counter, or the 16-byte key). 82 cycles per block; the result is held until taken.

Timing: a whole quarter-round (four dependent 32-bit adds) in one cycle was 7.1 ns in the Yosys
estimate, half of one (two adds) 4.5 ns; one add, its XOR-rotate and the choice of the next
state fit a 300 MHz cycle.
"""
# No `from __future__ import annotations`: the component signature comes from real annotations.

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ChaChaRequest", "ChaCha20Core", "CHACHA_CYCLES", "quarter_round", "half_quarter_round"]

#: cycles from an accepted request to a valid block (the request register, 80 steps of one
#: add, the final add)
CHACHA_CYCLES = 82
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)      # "expand 32-byte k"


class ChaChaRequest(data.Struct):
    key: 256            # 8 little-endian words (state words 4..11)
    words: 128          # state words 12..15: block counter and nonce, or a PRF input


def _rotl(v, n):
    return Cat(v[32 - n:], v[:32 - n])


def half_quarter_round(a, b, c, d, second):
    """The first (rotations 16, 12) or ``second`` (8, 7) half of the RFC 8439 quarter round on
    four 32-bit Amaranth values; returns the new (a, b, c, d)."""
    r1, r2 = (8, 7) if second else (16, 12)
    a = (a + b)[:32]
    d = _rotl(d ^ a, r1)
    c = (c + d)[:32]
    b = _rotl(b ^ c, r2)
    return a, b, c, d


def quarter_round(a, b, c, d):
    """The RFC 8439 quarter round on four 32-bit Amaranth values; returns the new (a, b, c, d)."""
    return half_quarter_round(*half_quarter_round(a, b, c, d, False), True)


_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))
#: the word of the state at position ``i`` of its diagonalized arrangement (whose columns are
#: the diagonals): row r of the state rotated left by r words
_DIAG_OF = tuple(4 * (i // 4) + (i % 4 + i // 4) % 4 for i in range(16))
assert all(tuple(_DIAG_OF[g + 4 * k] for k in range(4)) == d for g, d in enumerate(_DIAGONALS))


class ChaCha20Core(wiring.Component):
    """One ChaCha20 block per ``req``; ``block`` holds it (valid) until taken."""

    req: In(stream.Signature(ChaChaRequest))
    block: Out(stream.Signature(512))

    def elaborate(self, platform):
        m = Module()
        x = [Signal(32, name=f"x{i}") for i in range(16)]
        init = [Signal(32, name=f"init{i}") for i in range(16)]
        rq = Signal(ChaChaRequest)
        pend = Signal()                         # rq holds a request
        step = Signal(range(81))                # bits 0..1: the step of a round, bit 2: diagonal
        busy = Signal()
        m.d.comb += self.req.ready.eq(~busy & ~pend & ~self.block.valid)
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [rq.eq(self.req.payload), pend.eq(1)]
        with m.If(pend):
            key, words = rq.key, rq.words
            start = [Const(c, 32) for c in _CONSTANTS] + [key[32 * i:32 * i + 32] for i in range(8)] \
                + [words[32 * i:32 * i + 32] for i in range(4)]
            m.d.sync += [s.eq(v) for s, v in zip(x, start)]
            m.d.sync += [s.eq(v) for s, v in zip(init, start)]
            m.d.sync += [step.eq(0), busy.eq(1), pend.eq(0)]
        with m.Elif(busy):
            with m.If(step == 80):
                m.d.sync += [busy.eq(0), self.block.valid.eq(1)]
                m.d.sync += self.block.payload.eq(Cat(*[(a + b)[:32] for a, b in zip(x, init)]))
            with m.Else():
                m.d.sync += step.eq(step + 1)
                # per column g: a = x[g], b = x[4 + g], c = x[8 + g], d = x[12 + g]
                ab = [(x[g] + x[4 + g])[:32] for g in range(4)]
                cd = [(x[8 + g] + x[12 + g])[:32] for g in range(4)]
                nxt = {}
                for k in range(4):
                    out = list(x)
                    for g in range(4):
                        if k in (0, 2):             # a += b; d = (d ^ a) <<< 16 (step 0) or 8 (step 2)
                            out[g] = ab[g]
                            out[12 + g] = _rotl(x[12 + g] ^ ab[g], 16 if k == 0 else 8)
                        else:                       # c += d; b = (b ^ c) <<< 12 (step 1) or 7 (step 3)
                            out[8 + g] = cd[g]
                            out[4 + g] = _rotl(x[4 + g] ^ cd[g], 12 if k == 1 else 7)
                    nxt[k] = out
                with m.Switch(Cat(step[:2], step[2])):
                    for k in range(4):
                        for diag in (0, 1):
                            with m.Case(k | diag << 2):
                                if k != 3:
                                    m.d.sync += [x[i].eq(nxt[k][i]) for i in range(16)]
                                elif not diag:      # a column round ends: keep the state diagonalized
                                    m.d.sync += [x[i].eq(nxt[3][_DIAG_OF[i]]) for i in range(16)]
                                else:               # a diagonal round ends: back
                                    m.d.sync += [x[_DIAG_OF[i]].eq(nxt[3][i]) for i in range(16)]
        with m.If(self.block.valid & self.block.ready):
            m.d.sync += self.block.valid.eq(0)
        return m
