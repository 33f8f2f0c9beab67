"""The Poly1305 one-time authenticator (RFC 8439 §2.5), one 16-byte block every nine cycles.

Dataflow::

    key (r | s, 256 bits) -> a register -> r (clamped), s; h = 0
    msg (16 bytes, LE) -> a register (taken while the last block multiplies)
        -> a = h + m + 2**128, h the last product folded once modulo 2**130 - 5 in the cycle
           before (a < 2**131: a partial reduction)
        -> a * r in five steps of a (eight 17-bit slices, one DSP each, registered) times one
           26-bit limb of r; each step's eight products (three operands: the slices j, j + 3,
           j + 6 do not overlap) into a registered carry-save pair, which is added to the
           running sum >> 26 (one carry chain); the sum's low 26 bits shift into the product's
           low bits
    after the block marked ``last``: h = the product folded twice (h < 2**130 + 5),
        h mod 2**130 - 5 (one conditional subtraction), + s mod 2**128 -> tag, a step a cycle
        (the first fold is the one the next block would add)

Only whole 16-byte blocks are fed: the AEAD of the oblivious map authenticates ciphertexts of
whole 16-byte blocks and one length block, never a partial block.

Timing: each cycle is at most one DSP stage or one carry chain behind a carry-save layer (the
wide 132 x 32-bit multiply-add and the double fold of one cycle each were 14 ns in the Yosys
estimate).
"""
# No `from __future__ import annotations`: the component signature comes from real annotations.

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..products import carry_save_sum

__all__ = ["PolyBlock", "Poly1305Core", "POLY_BLOCK_CYCLES", "POLY_TAG_CYCLES", "R_CLAMP"]

R_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
P1305 = (1 << 130) - 5
#: cycles per 16-byte block, one accept to the next (one to add the block, five multiply
#: steps, the last step's carry-save layer, its add, the fold)
POLY_BLOCK_CYCLES = 9
#: extra cycles of a message, key accepted to tag valid beyond POLY_BLOCK_CYCLES per block:
#: the key's and the first block's registers, the second fold, the reduction and + s
POLY_TAG_CYCLES = 5

_A_BITS = 132                   # a < 2**131
_SLICE = 17                     # a's slices (a DSP48E2's unsigned B width)
_LIMB = 26                      # r's limbs (a DSP48E2's unsigned A width)
_LIMBS = 5
_SUM_BITS = 159                 # the running sum: < 2**158 + 2**133
_TAG_STEPS = 3


class PolyBlock(data.Struct):
    data: 128
    last: 1


def _place(items, width):
    """``(offset, value)`` pairs that do not overlap, as one ``width``-bit value (wiring only)."""
    parts, pos = [], 0
    for off, v in sorted(items, key=lambda t: t[0]):
        assert off >= pos
        if off > pos:
            parts.append(Const(0, off - pos))
        parts.append(v)
        pos = off + len(v)
    assert pos <= width
    if pos < width:
        parts.append(Const(0, width - pos))
    return Cat(*parts)


class Poly1305Core(wiring.Component):
    """``key`` starts a MAC; ``msg`` blocks follow; ``tag`` answers the block marked ``last``.

    A key is taken between messages (or between blocks, which starts the MAC over)."""

    key: In(stream.Signature(256))
    msg: In(stream.Signature(PolyBlock))
    tag: Out(stream.Signature(128))

    def elaborate(self, platform):
        m = Module()
        r = Signal(128)
        s = Signal(128)
        kb = Signal(256)                            # the next key, registered
        kb_valid = Signal()
        mb = Signal(128)                            # the next block, registered
        mb_last = Signal()
        mb_valid = Signal()
        fresh = Signal()                            # no block added since the key: h = 0
        a = Signal(_A_BITS)
        rr = Signal(_LIMB * _LIMBS)                 # r, shifted down one limb per step
        nslices = -(-_A_BITS // _SLICE)
        prods = []                                  # a's slices times rr's low limb (DSP, registered)
        for j in range(nslices):
            sl = a[_SLICE * j:min(_SLICE * (j + 1), _A_BITS)]
            p = Signal(len(sl) + _LIMB, name=f"prod{j}")
            m.d.sync += p.eq(sl * rr[:_LIMB])
            prods.append(p)
        # the step's products, one carry-save layer: cs_s + cs_c
        groups = [_place([(_SLICE * j, prods[j]) for j in range(g, nslices, 3)], _SUM_BITS) for g in range(3)]
        cs_s = Signal(_SUM_BITS)
        cs_c = Signal(_SUM_BITS)
        m.d.sync += [cs_s.eq(groups[0] ^ groups[1] ^ groups[2]),
                     cs_c.eq(((groups[0] & groups[1] | groups[0] & groups[2] | groups[1] & groups[2]) << 1)[:_SUM_BITS])]
        pv = Signal()                               # prods hold a step's products
        cv = Signal()                               # cs_s/cs_c hold a step's products
        first = Signal()                            # ... those of a block's first step
        t = Signal(_SUM_BITS)                       # the running sum
        low = Signal(_LIMB * (_LIMBS - 1))          # the product's low limbs, shifted in from t
        step = Signal(range(_LIMBS))
        last = Signal()
        m.d.sync += [pv.eq(0), cv.eq(pv)]
        with m.If(cv):
            m.d.sync += [t.eq(carry_save_sum(m, [Mux(first, 0, t[_LIMB:]), cs_s, cs_c], _SUM_BITS, name="poly_t")),
                         low.eq(Cat(low[_LIMB:], t[:_LIMB])), first.eq(0)]
        # the product folded (h1), then the tag, a step a cycle, every cycle
        lo130 = Cat(low, t[:_LIMB])                 # the product: lo130 + hi << 130
        hi = t[_LIMB:]
        h1 = Signal(131)
        h2 = Signal(131)
        hr = Signal(130)
        tag = Signal(128)
        m.d.sync += [h1.eq(carry_save_sum(m, [lo130, hi, hi << 2], 131, name="poly_h1")),
                     h2.eq(h1[:130] + Mux(h1[130], 5, 0)),          # h1 < 2**131: h2 < 2**130 + 5
                     hr.eq(Mux(h2 >= P1305, h2 - P1305, h2)),
                     tag.eq((hr + s)[:128])]
        wait = Signal(range(4))

        def take_msg():
            with m.If(self.msg.valid & self.msg.ready):
                m.d.sync += [mb.eq(self.msg.payload.data), mb_last.eq(self.msg.payload.last), mb_valid.eq(1)]

        with m.If(self.key.valid & self.key.ready):
            m.d.sync += [kb.eq(self.key.payload), kb_valid.eq(1)]

        with m.FSM():
            with m.State("KEY"):
                m.d.comb += self.key.ready.eq(~kb_valid)
                with m.If(kb_valid):
                    m.d.sync += [r.eq(kb[:128] & R_CLAMP), s.eq(kb[128:]), kb_valid.eq(0), fresh.eq(1)]
                    m.next = "MSG"
            with m.State("MSG"):
                m.d.comb += [self.key.ready.eq(~kb_valid & ~mb_valid),
                             self.msg.ready.eq(~mb_valid & ~kb_valid & ~self.key.valid)]
                take_msg()
                with m.If(kb_valid):
                    m.d.sync += [r.eq(kb[:128] & R_CLAMP), s.eq(kb[128:]), kb_valid.eq(0), fresh.eq(1)]
                with m.Elif(mb_valid):
                    # a = the last product folded once (h1) + m + 2**128
                    m.d.sync += [a.eq((Mux(fresh, 0, h1) + Cat(mb, 1))[:_A_BITS]),
                                 rr.eq(r), step.eq(0), first.eq(1), last.eq(mb_last), mb_valid.eq(0), fresh.eq(0)]
                    m.next = "MUL"
            with m.State("MUL"):
                m.d.comb += self.msg.ready.eq(~mb_valid & ~last)
                take_msg()
                m.d.sync += [rr.eq(rr[_LIMB:]), step.eq(step + 1), pv.eq(1)]
                with m.If(step == _LIMBS - 1):
                    m.d.sync += wait.eq(0)
                    m.next = "SUM"
            with m.State("SUM"):                    # the last step's carry-save layer, its add, h1
                m.d.comb += self.msg.ready.eq(~mb_valid & ~last)
                take_msg()
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == 2):
                    m.d.sync += wait.eq(0)
                    with m.If(last):
                        m.next = "FOLD"
                    with m.Else():
                        m.next = "MSG"
            with m.State("FOLD"):                   # h2, hr, tag: one a cycle
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == _TAG_STEPS - 1):
                    m.next = "TAG"
            with m.State("TAG"):
                m.d.comb += [self.tag.valid.eq(1), self.tag.payload.eq(tag)]
                with m.If(self.tag.ready):
                    m.next = "KEY"
        return m
