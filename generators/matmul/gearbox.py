"""Stream width adapter between memory words and the items the engine consumes.

Weights, scales, requant parameters and activations all arrive as port words
whose width is a power-of-two multiple or fraction of the item width, so one
adapter covers them: it either splits a word into items (low bits first) or
gathers words into an item (first word in the low bits). Packets (one per row
block) end mid-word when the buffer is padded to whole words; the consumer
raises ``o_last`` with the packet's last item and the rest of that word is
dropped, so the next packet starts on a fresh word.

:class:`TritGearbox` does the same for 5-trit-packed ternary weights, whose
``5 * in_width / 8`` trits per word need not be a power-of-two multiple or
fraction of the item.
"""
from __future__ import annotations

import math

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints
from ..skid import slice_stream
from .sparse import BitGearbox

__all__ = ["ScaleItems", "WidthAdapter", "TritGearbox", "decode_five_trits", "is_pow2_ratio"]


def _is_pow2(v: int) -> bool:
    return v > 0 and not v & (v - 1)


def is_pow2_ratio(a: int, b: int) -> bool:
    """True if ``a`` and ``b`` differ by a power-of-two factor (what :class:`WidthAdapter` takes)."""
    return max(a, b) % min(a, b) == 0 and _is_pow2(max(a, b) // min(a, b))


class WidthAdapter(wiring.Component):
    """``in_width``-bit words in, ``out_width``-bit items out, one item per cycle.

    The output is registered (a buffer word), and a new word is loaded in the
    same cycle the buffer's last item is taken, so a consumer that takes an
    item every cycle never sees a bubble.
    """

    def __init__(self, in_width: int, out_width: int):
        require_positive_ints(in_width=in_width, out_width=out_width)
        if not is_pow2_ratio(in_width, out_width):
            raise ValueError(f"in_width {in_width} and out_width {out_width} must differ by a "
                             f"power-of-two factor")
        self._in_width, self._out_width = in_width, out_width
        super().__init__({
            "i": In(stream.Signature(in_width)),
            "o": Out(stream.Signature(out_width)),
            "o_last": In(1),   # the item taken now ends its packet: drop the rest of the word
        })

    @property
    def in_width(self) -> int:
        return self._in_width

    @property
    def out_width(self) -> int:
        return self._out_width

    def elaborate(self, platform):
        m = Module()
        iw, ow = self._in_width, self._out_width
        take = self.o.valid & self.o.ready
        if iw >= ow:                                  # split: one word -> `ratio` items
            ratio = iw // ow
            buf = Signal(iw)
            left = Signal(range(ratio + 1))           # items left in buf
            # left != 0 and left == 1 as flags kept beside it: the consumer's ready reaches the
            # next word's load through two LUTs, not a compare
            have, one = Signal(), Signal()
            m.d.comb += [self.o.payload.eq(buf[:ow]), self.o.valid.eq(have)]
            empties = take & (one | self.o_last)
            m.d.comb += self.i.ready.eq(~have | empties)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [buf.eq(self.i.payload), left.eq(ratio), have.eq(1), one.eq(ratio == 1)]
            with m.Elif(empties):
                m.d.sync += [left.eq(0), have.eq(0), one.eq(0)]
            if ratio > 1:                             # (one item a word: a take always empties it)
                with m.Elif(take):
                    m.d.sync += [buf.eq(buf[ow:]), left.eq(left - 1), one.eq(left == 2)]
        else:                                         # gather: `ratio` words -> one item
            ratio = ow // iw
            buf = Signal(ow)
            got = Signal(range(ratio + 1))            # words collected in buf
            full = Signal()                           # got == ratio, kept as a flag
            m.d.comb += [self.o.payload.eq(buf), self.o.valid.eq(full)]
            m.d.comb += self.i.ready.eq(~full | self.o.ready)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += buf.eq(self.i.payload.shift_left(ow - iw) | buf[iw:])
                m.d.sync += [got.eq(Mux(take, 1, got + 1)), full.eq(Mux(take, ratio == 1, got == ratio - 1))]
            with m.Elif(take):
                m.d.sync += [got.eq(0), full.eq(0)]
        return m


class ScaleItems(wiring.Component):
    """The group-scale stream of an engine with the 2:4 pair fire: items of ``item_width`` bits
    (one column's scales), or of twice that in a pair job (``pair``: two columns' scales, for one
    pair line); ``o`` is ``2 x item_width`` bits, a single column's item in its low half."""

    def __init__(self, in_width: int, item_width: int):
        self._in_width, self._item_width = in_width, item_width
        super().__init__({
            "i": In(stream.Signature(in_width)),
            "o": Out(stream.Signature(2 * item_width)),
            "o_last": In(1),
            "pair": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.one = one = WidthAdapter(self._in_width, self._item_width)
        m.submodules.two = two = WidthAdapter(self._in_width, 2 * self._item_width)
        for a, sel in ((one, ~self.pair), (two, self.pair)):
            m.d.comb += [a.i.payload.eq(self.i.payload), a.i.valid.eq(self.i.valid & sel),
                         a.o.ready.eq(self.o.ready & sel), a.o_last.eq(self.o_last)]
        m.d.comb += [self.i.ready.eq(Mux(self.pair, two.i.ready, one.i.ready)),
                     self.o.valid.eq(Mux(self.pair, two.o.valid, one.o.valid)),
                     self.o.payload.eq(Mux(self.pair, two.o.payload, one.o.payload))]
        return m


# b // 3**t for a byte b, as (b * mult) >> shift (exact for 0 <= b <= 255)
def _five_trit_codes(byte: int) -> int:
    """The 10-bit code word of one 5-trit byte (see :func:`decode_five_trits`)."""
    if byte >= 243:
        return 0
    out = 0
    for t in range(5):
        digit = byte // 3 ** t % 3                        # weight = digit - 1
        out |= (0b11, 0b00, 0b01)[digit] << (2 * t)
    return out


_FIVE_TRIT_TABLE = tuple(_five_trit_codes(b) for b in range(256))


def decode_five_trits(m: Module, byte, *, name: str):
    """One 5-trit byte -> five 2-bit ternary codes (element 0 in the low bits).

    Digit ``t`` of ``byte`` in base 3 is weight ``t`` + 1, emitted as the 2-bit code 11 (-1),
    00 (0), 01 (+1); bytes >= 243 are reserved and decode to zeros. A 256-entry table: each code
    bit is a function of the 8 byte bits, one LUT level and two wide muxes (the constant
    divisions it replaces went to unregistered DSPs, 2 DSP stages and 5 LUTs deep).
    """
    out = Signal(10, name=f"{name}_codes")
    with m.Switch(byte):
        for value, codes in enumerate(_FIVE_TRIT_TABLE):
            if codes:
                with m.Case(value):
                    m.d.comb += out.eq(codes)
    return out


class TritGearbox(wiring.Component):
    """5-trit bytes in (``in_width``-bit words), ``lanes`` ternary 2-bit codes out per item.

    A word holds ``T = 5 * in_width / 8`` trits, which need not divide (or be divided by)
    ``lanes``: the decoded 2-bit codes go through a :class:`~.sparse.BitGearbox` of
    ``2T``-bit words to ``2 * lanes``-bit items, whose buffer holds ``C = lanes - g + T`` codes
    (``g = gcd(T, lanes)``, every fill level a multiple of ``g``). A word is only fetched
    when the next item needs it (never one of the next packet), one item leaves per cycle
    while words arrive at ``T / lanes`` per item, and ``o_last`` (the item ends its packet)
    drops whatever the buffer still holds.
    """

    def __init__(self, in_width: int, lanes: int):
        require_positive_ints(in_width=in_width, lanes=lanes)
        if in_width % 8 or not _is_pow2(in_width // 8) or not _is_pow2(lanes):
            raise ValueError(f"in_width {in_width} must be a power-of-two number of bytes and lanes "
                             f"{lanes} a power of two")
        self._in_width, self._lanes = in_width, lanes
        self._trits = 5 * in_width // 8
        self._g = math.gcd(self._trits, lanes)
        self._cap = lanes - self._g + self._trits
        super().__init__({
            "i": In(stream.Signature(in_width)),
            "o": Out(stream.Signature(2 * lanes)),
            "o_last": In(1),
        })

    @property
    def trits_per_word(self) -> int:
        return self._trits

    @property
    def capacity(self) -> int:
        return self._cap

    def elaborate(self, platform):
        m = Module()
        nbytes = self._in_width // 8
        decoded = stream.Signature(2 * self._trits).create()
        m.d.comb += [decoded.payload.eq(Cat(*(decode_five_trits(m, self.i.payload[8 * j:8 * j + 8],
                                                                  name=f"byte{j}") for j in range(nbytes)))),
                     decoded.valid.eq(self.i.valid), self.i.ready.eq(decoded.ready)]
        # 2-bit codes in, 2 * lanes bits out: the generic fill-level buffer, behind a register
        # slice (the decode stays out of the buffer's fill-level select; one cycle of latency)
        m.submodules.gear = gear = BitGearbox(2 * self._trits, 2 * self._lanes)
        slice_stream(m, "codes_slice", decoded, gear.i)
        m.d.comb += [self.o.payload.eq(gear.o.payload), self.o.valid.eq(gear.o.valid),
                     gear.o.ready.eq(self.o.ready), gear.o_last.eq(self.o_last)]
        return m
