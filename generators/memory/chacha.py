"""The ChaCha20 block function (RFC 8439 §2.3): 64-byte keystream blocks, up to four in flight.

Dataflow::

    req (key 256 | words 12..15 of the state 128) -> a register
        -> a ring of four stages, one per step of a round (one add and its XOR-rotate each, on
           the four columns of the state as kept); a block enters stage 0 and goes round the
           ring 20 times (column rounds even, diagonal rounds odd; stage 3 ends a round: a
           column round's keeps the state diagonalized, a diagonal round's puts it back)
        -> fin -> block = state + initial state -> a queue of finished blocks (in order)

Each stage holds its own block, so four blocks move through the ring at once, each a step a
cycle: 82 cycles from an accepted request to its block (the request register, 80 steps, the
final add), up to four blocks per 82 cycles (a request is taken every other cycle). A request is taken only while fewer than four
blocks are in the ring, the final stage or the queue, so a finished block always has room and
the ring never stalls. Blocks come out in request order and are held until taken.

The oblivious map uses it three ways: the AEAD of its host bins (words 12..15 = block counter
and nonce; all of a bin's blocks asked for at once), and as the PRF of its labels and of its
directory hash (words 12..15 = the query counter, or the 16-byte key; both asked for at once).

Timing: a whole quarter-round (four dependent 32-bit adds) in one cycle was 7.1 ns in the Yosys
estimate, half of one (two adds) 4.5 ns; one add and its XOR-rotate a cycle fit 300 MHz. Each
stage does one fixed step, so no mux by step is in front of its registers (the one-block core
before session 44 took 82 cycles a block: one step a cycle on one state).
"""
# No `from __future__ import annotations`: the component signature comes from real annotations.

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .queues import RegFIFO

__all__ = ["ChaChaRequest", "ChaCha20Core", "CHACHA_CYCLES", "CHACHA_IN_FLIGHT"]

#: cycles from an accepted request to a valid block (the request register, 80 steps of one
#: add, the final add)
CHACHA_CYCLES = 82
#: blocks the core works on at once (one per stage of its ring)
CHACHA_IN_FLIGHT = 4
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)      # "expand 32-byte k"


class ChaChaRequest(data.Struct):
    key: 256            # 8 little-endian words (state words 4..11)
    words: 128          # state words 12..15: block counter and nonce, or a PRF input


def _rotl(v, n):
    return Cat(v[32 - n:], v[:32 - n])


_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))
#: the word of the state at position ``i`` of its diagonalized arrangement (whose columns are
#: the diagonals): row r of the state rotated left by r words
_DIAG_OF = tuple(4 * (i // 4) + (i % 4 + i // 4) % 4 for i in range(16))
assert all(tuple(_DIAG_OF[g + 4 * k] for k in range(4)) == d for g, d in enumerate(_DIAGONALS))


class ChaCha20Core(wiring.Component):
    """ChaCha20 blocks, one per ``req``, up to :data:`CHACHA_IN_FLIGHT` at once; ``block`` gives
    them in request order, each held (valid) until taken."""

    req: In(stream.Signature(ChaChaRequest))
    block: Out(stream.Signature(512))

    def elaborate(self, platform):
        m = Module()
        N = CHACHA_IN_FLIGHT
        # stage k's block: its state (as kept), its initial state, its round, valid
        x = [[Signal(32, name=f"x{k}_{i}") for i in range(16)] for k in range(N)]
        init = [[Signal(32, name=f"init{k}_{i}") for i in range(16)] for k in range(N)]
        rnd = [Signal(range(20), name=f"rnd{k}") for k in range(N)]
        live = [Signal(name=f"live{k}") for k in range(N)]
        rq = Signal(ChaChaRequest)
        pend = Signal()                         # rq holds a request
        held = Signal(range(N + 1))             # blocks in the ring, fin and the queue
        fin_x = [Signal(32, name=f"fin_x{i}") for i in range(16)]
        fin_init = [Signal(32, name=f"fin_init{i}") for i in range(16)]
        fin = Signal()
        m.submodules.done = done = RegFIFO(512, N)

        # a request is taken into rq while fewer than N blocks are held (rq's counts as held)
        take = self.req.valid & self.req.ready
        m.d.comb += self.req.ready.eq(~pend & (held != N))
        with m.If(take):
            m.d.sync += [rq.eq(self.req.payload), pend.eq(1)]
        taken = done.r_rdy & self.block.ready
        m.d.sync += held.eq(held + take - taken)

        def step(k, xs):
            """Step ``k`` of a round on the four columns of ``xs``: a += b; d = (d ^ a) <<< 16 or
            8 (k = 0, 2), or c += d; b = (b ^ c) <<< 12 or 7 (k = 1, 3)."""
            out = list(xs)
            for g in range(4):
                if k in (0, 2):
                    out[g] = (xs[g] + xs[4 + g])[:32]
                    out[12 + g] = _rotl(xs[12 + g] ^ out[g], 16 if k == 0 else 8)
                else:
                    out[8 + g] = (xs[8 + g] + xs[12 + g])[:32]
                    out[4 + g] = _rotl(xs[4 + g] ^ out[8 + g], 12 if k == 1 else 7)
            return out

        for k in range(N - 1):                  # stages 0..2 hand their block on
            m.d.sync += [d.eq(v) for d, v in zip(x[k + 1], step(k, x[k]))]
            m.d.sync += [d.eq(v) for d, v in zip(init[k + 1], init[k])]
            m.d.sync += [rnd[k + 1].eq(rnd[k]), live[k + 1].eq(live[k])]
        # stage 3 ends a round: a column round's keeps the state diagonalized, a diagonal
        # round's puts it back; the 20th round's block goes to fin, any other back to stage 0
        nxt = step(3, x[3])
        diag = rnd[3][0]
        ended = [Mux(diag, nxt[_DIAG_OF.index(i)], nxt[_DIAG_OF[i]]) for i in range(16)]
        last = live[3] & (rnd[3] == 19)
        m.d.sync += fin.eq(last)
        with m.If(last):
            m.d.sync += [d.eq(v) for d, v in zip(fin_x, ended)]
            m.d.sync += [d.eq(v) for d, v in zip(fin_init, init[3])]
        # stage 0 takes the block coming round, else (its place free) the request
        start = [Const(c, 32) for c in _CONSTANTS] + [rq.key[32 * i:32 * i + 32] for i in range(8)] \
            + [rq.words[32 * i:32 * i + 32] for i in range(4)]
        with m.If(live[3] & ~last):
            m.d.sync += [d.eq(v) for d, v in zip(x[0], ended)]
            m.d.sync += [d.eq(v) for d, v in zip(init[0], init[3])]
            m.d.sync += [rnd[0].eq(rnd[3] + 1), live[0].eq(1)]
        with m.Elif(pend):
            m.d.sync += [d.eq(v) for d, v in zip(x[0], start)]
            m.d.sync += [d.eq(v) for d, v in zip(init[0], start)]
            m.d.sync += [rnd[0].eq(0), live[0].eq(1), pend.eq(0)]
        with m.Else():
            m.d.sync += live[0].eq(0)
        # the final add into the queue (never full: a request is taken only with room held for it)
        m.d.comb += [done.w_en.eq(fin), done.w_data.eq(Cat(*[(a + b)[:32] for a, b in zip(fin_x, fin_init)]))]
        m.d.comb += [self.block.valid.eq(done.r_rdy), self.block.payload.eq(done.r_data), done.r_en.eq(self.block.ready)]
        return m
