"""Per-group quantization parameters: from a group's absmax to what the store stage multiplies by.

Golden model: :mod:`hbmforge.numerics.vector` (``row_scale``, ``qrec_multiplier``, ``kv_quantize``)::

    ACT8, QREC  (a, e) = row_scale(A);  (Y, n) = reciprocal(a)
                mult = 127 * Y,  shift = n + 16 + e,  meta = a | e << 16     (ACT8: the row scale record)
                QREC meta = score multiplier | shift << 16 from the head constant (kc, ks)
    KV          mant = clamp(rsr(A * km, ks), 1, 65535);  (Y, n) = reciprocal(mant)
                mult = rsr(hm * Y, 10),  shift = min(hs + n + 6, 63),  meta = mant

Fixed latency :attr:`LATENCY` (register, the reciprocal's pipeline, finish), one group per cycle.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import VectorOut

from ..attention.recip import Reciprocal
from .arith import as_signed_field, bit_length, clamp, rsr, rsr_var

__all__ = ["QuantParams"]


class QuantParams(wiring.Component):
    LATENCY = 2 + Reciprocal.LATENCY

    def __init__(self):
        super().__init__({
            "i_valid": In(1), "mode": In(VectorOut), "absmax": In(32), "const": In(64),
            "o_valid": Out(1), "mult": Out(25), "shift": Out(7), "meta": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        valid = self.i_valid
        for t in range(self.LATENCY):
            nxt = Signal(name=f"v{t + 1}")
            m.d.sync += nxt.eq(valid)
            valid = nxt
        m.d.comb += self.o_valid.eq(valid)
        kv = self.mode == VectorOut.KV
        A = self.absmax

        # -- t1: the group's scale (a, e) or the KV mantissa -------------------------------------
        bl = bit_length(m, A, name="bl")
        e0 = Signal(range(17))
        m.d.comb += e0.eq(Mux(bl > 16, bl - 16, 0))
        a0 = Signal(33)
        m.d.comb += a0.eq((A + (Const(1, 32) << e0) - 1) >> e0)
        km, ks = self.const[:16], self.const[16:22]
        prod = Signal(48)
        m.d.comb += prod.eq(A * km)
        mant0 = rsr_var(m, prod, ks, name="mant0")
        a1 = Signal(17)
        e1 = Signal(range(18))
        c1 = Signal(64)
        mode1 = Signal(VectorOut)
        with m.If(kv):
            m.d.sync += [a1.eq(clamp(mant0, 1, 65535)), e1.eq(0)]
        with m.Elif(a0[16]):
            m.d.sync += [a1.eq(a0 >> 1), e1.eq(e0 + 1)]
        with m.Else():
            m.d.sync += [a1.eq(a0), e1.eq(e0)]
        m.d.sync += [c1.eq(self.const), mode1.eq(self.mode)]

        # -- t2: reciprocal (a pipeline of Reciprocal.LATENCY stages); the rest waits beside it ---
        m.submodules.recip = recip = Reciprocal(16)
        m.d.comb += recip.l.eq(a1[:16])
        p1 = Signal(32)
        m.d.comb += p1.eq(a1[:16] * c1[:16])            # the QREC product
        a16 = Signal(16)
        m.d.comb += a16.eq(a1[:16])
        stage = {"a": a16, "e": e1, "p": p1, "c": c1, "mode": mode1}
        for t in range(Reciprocal.LATENCY):
            nxt = {k: Signal.like(v, name=f"{k}_d{t}") for k, v in stage.items()}
            m.d.sync += [nxt[k].eq(v) for k, v in stage.items()]
            stage = nxt
        a2, e2, p2, c2, mode2 = stage["a"], stage["e"], stage["p"], stage["c"], stage["mode"]
        y2, n2 = recip.y, recip.n

        # -- t3: multipliers, shifts, records -----------------------------------------------------
        with m.If(mode2 == VectorOut.KV):
            hm, hs = c2[32:48], c2[48:54]
            ksh = Signal(range(64 + 17 + 7))
            m.d.comb += ksh.eq(hs + n2 + 6)
            m.d.sync += [self.mult.eq(rsr(hm * y2, 10)), self.shift.eq(Mux(ksh > 63, 63, ksh)),
                         self.meta.eq(a2)]
        with m.Else():
            m.d.sync += [self.mult.eq(127 * y2), self.shift.eq(n2 + 16 + e2)]
            with m.If(mode2 == VectorOut.QREC):
                pbl = bit_length(m, p2, name="pbl")
                t = Signal(range(18))
                m.d.comb += t.eq(Mux(pbl > 16, pbl - 16, 0))
                r = rsr_var(m, p2, t, name="pmult")
                mult = Signal(17)
                tt = Signal(range(19))
                m.d.comb += [mult.eq(Mux(r[16], r >> 1, r)), tt.eq(Mux(r[16], t + 1, t))]
                sh = Signal(signed(11))
                m.d.comb += sh.eq(as_signed_field(c2[16:24]) - e2 - tt)
                hi = Signal(range(32))
                m.d.comb += hi.eq(Mux(sh - 63 > 31, 31, sh - 63))
                down = rsr_var(m, mult, hi, name="mdown")
                with m.If(p2 == 0):
                    m.d.sync += self.meta.eq(0)
                with m.Elif(sh < 0):
                    m.d.sync += self.meta.eq(Cat(Const(65535, 16), Const(0, 16)))
                with m.Elif(sh > 63):
                    m.d.sync += self.meta.eq(Cat(down[:16], Const(63, 16)))
                with m.Else():
                    m.d.sync += self.meta.eq(Cat(mult[:16], sh[:16]))
            with m.Else():
                m.d.sync += self.meta.eq(Cat(a2, e2[:16]))
        return m
