"""Per-group quantization parameters: from a group's absmax to what the store stage multiplies by.

Golden model: :mod:`hbmforge.numerics.vector` (``row_scale``, ``qrec_multiplier``, ``kv_quantize``)::

    ACT8, QREC  (a, e) = row_scale(A);  (Y, n) = reciprocal(a)
                mult = 127 * Y,  shift = n + 16 + e,  meta = a | e << 16     (ACT8: the row scale record)
                QREC meta = score multiplier | shift << 16 from the head constant (kc, ks)
    KV          mant = clamp(rsr(A * km, ks), 1, 65535);  (Y, n) = reciprocal(mant)
                mult = rsr(hm * Y, 10),  shift = min(hs + n + 6, 63),  meta = mant

Fixed latency :attr:`LATENCY` (seven stages to the scale, the reciprocal's pipeline, two to finish), one
group per cycle.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import VectorOut

from ..attention.recip import Reciprocal
from ..nonlinear.rsqrt import highest_set_bit
from .arith import as_signed_field, bit_length, delayed, rsr, valid_chain

__all__ = ["QuantParams"]


class QuantParams(wiring.Component):
    """One group per cycle, :attr:`LATENCY` cycles from ``i_valid`` to ``o_valid``.

    Every stage is a register behind a few LUT levels (issue 10 part 3): the scale, the
    ``A x km`` product and the KV mantissa's rounding each get their own stages, and the QREC
    score multiplier (which needs no reciprocal) is computed beside the reciprocal's pipeline.
    """

    #: ceil-add, product, two shifts, top-bit fix, mode | reciprocal | product and records, multiplier
    LATENCY = 7 + Reciprocal.LATENCY + 2

    def __init__(self):
        super().__init__({
            "i_valid": In(1), "mode": In(VectorOut), "absmax": In(32), "const": In(64),
            "o_valid": Out(1), "mult": Out(25), "shift": Out(7), "meta": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.o_valid.eq(valid_chain(m, self.i_valid, self.LATENCY)[-1])

        def delay(v, name):
            return delayed(m, v, 1, name=name)

        # -- s0: the inputs registered (the caller's absmax logic stays off the bit length and the
        # products below)
        A, c0, mode0 = delay(self.absmax, "absmax0"), delay(self.const, "c0"), delay(self.mode, "mode0")
        # -- s1: e0 = max(bit_length(A) - 16, 0) = bit_length(A >> 16); the two DSP tiles of A x km
        e0_1 = delay(bit_length(m, A[16:], name="e0"), "e0_1")
        A1 = delay(A, "absmax1")
        c1 = delay(c0, "c1")
        mode1 = delay(mode0, "mode1")
        km = c0[:16]
        lo_p = Signal(33, name="kv_plo")
        hi_p = Signal(31, name="kv_phi")
        m.d.sync += [lo_p.eq(A[:17] * km), hi_p.eq(A[17:] * km)]

        # -- s2: the product summed; ks - 1; 2^e0 - 1 as a thermometer code of e0 (registered: the
        # add below takes registers only) -----------------------------------------------------------
        e2_ = delay(e0_1, "e0_2")
        therm2 = Signal(16, name="e0_therm2")
        m.d.sync += therm2.eq(Cat(*(e0_1 > i for i in range(16))))
        A2 = delay(A1, "absmax2")
        prod2 = Signal(48, name="kv_prod")
        m.d.sync += prod2.eq(lo_p + (hi_p << 17))
        ks = c1[16:22]
        ks_m1, kz2 = Signal.like(ks, name="ks_m1"), Signal(name="kz2")
        m.d.sync += [ks_m1.eq(ks - 1), kz2.eq(ks == 0)]
        c2_, mode2_ = delay(c1, "c2_"), delay(mode1, "mode2_")

        # -- s3, s4: A + 2^e0 - 1, then a0 = ceil(A / 2^e0); the KV product shifted right by ks - 1,
        # by its multiple of 8 first, then by the rest ---------------------------------------------
        up3 = Signal(33, name="ceil3")
        m.d.sync += up3.eq(A2 + therm2)
        e3 = delay(e2_, "e0_3")
        shc = Signal(48, name="kv_shc")
        m.d.sync += shc.eq(Mux(kz2, prod2, prod2 >> (ks_m1[3:] << 3)))
        ks_lo, kz3 = delay(ks_m1[:3], "ks_lo"), delay(kz2, "kz3")
        c3, mode3 = delay(c2_, "c3"), delay(mode2_, "mode3")
        sh4 = Signal(48, name="kv_sh4")
        m.d.sync += sh4.eq(Mux(kz3, shc, shc >> ks_lo))
        a0 = Signal(33, name="a0_s4")
        m.d.sync += a0.eq(up3 >> e3)
        e0_4, kz4 = delay(e3, "e0_4"), delay(kz3, "kz4")
        c4_, mode4_ = delay(c3, "c4_"), delay(mode3, "mode4_")

        # -- s5: the scale's top-bit fix (a < 2^16); the KV mantissa's clamp flags ----------------
        a5, e5 = Signal(16, name="a5"), Signal(range(18), name="e5")
        with m.If(a0[16]):
            m.d.sync += [a5.eq(a0 >> 1), e5.eq(e0_4 + 1)]
        with m.Else():
            m.d.sync += [a5.eq(a0), e5.eq(e0_4)]
        # clamp(rsr(P, ks), 1, 65535) from sh = P >> (ks - 1): rsr is (sh + 1) >> 1, which is
        # >= 2^16 exactly when sh >= 2^17 - 1 and < 1 exactly when sh == 0 (ks == 0: sh = P)
        big5, zero5 = Signal(name="kv_big5"), Signal(name="kv_zero5")
        mant5 = Signal(16, name="kv_mant5")
        m.d.sync += [big5.eq(Mux(kz4, sh4[16:] != 0, (sh4[17:] != 0) | (sh4[:17] == (1 << 17) - 1))),
                     zero5.eq(sh4 == 0), mant5.eq(Mux(kz4, sh4[:16], (sh4[:17] + 1) >> 1))]
        c5, mode5 = delay(c4_, "c5"), delay(mode4_, "mode5")

        # -- s6: the scale (a, e) or the clamped KV mantissa --------------------------------------
        a1 = Signal(17)
        e1 = Signal(range(18))
        with m.If(mode5 == VectorOut.KV):
            m.d.sync += [a1.eq(Mux(big5, 65535, Mux(zero5, 1, mant5))), e1.eq(0)]
        with m.Else():
            m.d.sync += [a1.eq(a5), e1.eq(e5)]
        c4, mode4 = delay(c5, "c6"), delay(mode5, "mode6")

        # -- t2: reciprocal (Reciprocal.LATENCY stages); the QREC record is formed beside it ----
        m.submodules.recip = recip = Reciprocal(16)
        m.d.comb += recip.l.eq(a1[:16])
        stage = {"a": a1[:16], "e": e1, "c": c4, "mode": mode4}
        line = []
        for t in range(Reciprocal.LATENCY):
            stage = {k: delay(v, f"{k}_d{t}") for k, v in stage.items()}
            line.append(stage)
        a2, e2, c2, mode2 = line[-1]["a"], line[-1]["e"], line[-1]["c"], line[-1]["mode"]
        y2, n2 = recip.y, recip.n
        qrec_meta = self._qrec_record(m, a1[:16], e1, c4, line)

        # -- t3: the KV product hm x Y (one DSP tile), the shifts and the records -----------------
        kvm = mode2 == VectorOut.KV
        hm, hs = c2[32:48], c2[48:54]
        ksh = Signal(range(64 + 17 + 7))
        m.d.comb += ksh.eq(hs + n2 + 6)
        kv3 = Signal(name="kv_t3")
        hy3 = Signal(len(hm) + len(y2), name="hy3")
        y127 = Signal(len(y2) + 7, name="y127_t3")     # 127 Y registered straight from its product
        shift3 = Signal.like(self.shift, name="shift_t3")
        meta3 = Signal.like(self.meta, name="meta_t3")
        m.d.sync += [kv3.eq(kvm), hy3.eq(hm * y2), y127.eq(127 * y2),
                     shift3.eq(Mux(kvm, Mux(ksh > 63, 63, ksh), n2 + 16 + e2)),
                     meta3.eq(Mux(kvm, a2, Mux(mode2 == VectorOut.QREC, qrec_meta, Cat(a2, e2[:16]))))]

        # -- t4: the multiplier ---------------------------------------------------------------------
        m.d.sync += [self.mult.eq(Mux(kv3, rsr(hy3, 10), y127)), self.shift.eq(shift3),
                     self.meta.eq(meta3)]
        return m

    @staticmethod
    def _qrec_record(m: Module, a, e, c, line) -> Signal:
        """The QREC score multiplier ``mult | shift << 16`` of ``qrec_multiplier(a, e, kc, ks)``,
        seven registered stages over the reciprocal's delay line (it needs no reciprocal); the
        result lines up with the line's last stage."""
        assert len(line) >= 7
        # q0: P = a x kc (one DSP tile)
        p = Signal(32, name="qr_p")
        m.d.sync += p.eq(a * c[:16])
        # q1: t = max(bit_length(P) - 16, 0) = bit_length(P >> 16), and t - 1 for the rounding
        # shift (the index of P >> 16's highest one; used when t >= 1)
        any_hi, top_hi = highest_set_bit(p[16:])
        t = Signal(range(18), name="qr_t")
        t_m1 = Signal(range(17), name="qr_t_m1")
        p1 = Signal.like(p, name="qr_p1")
        m.d.sync += [t.eq(Mux(any_hi, top_hi + 1, 0)), t_m1.eq(top_hi), p1.eq(p)]
        # q2: r = rsr(P, t) = ((P >> (t - 1)) + 1) >> 1 for t >= 1
        r = Signal(33, name="qr_r")
        m.d.sync += r.eq(Mux(t == 0, p1, ((p1 >> t_m1) + 1) >> 1))
        t2, p2 = Signal.like(t, name="qr_t2"), Signal.like(p, name="qr_p2")
        m.d.sync += [t2.eq(t), p2.eq(p1)]
        # q3: the top-bit fix and the shift  ks - e - t  (e and ks from the line, which q0 entered
        # with them: line[k] holds the values of stage q(k))
        mult = Signal(17, name="qr_mult")
        sh = Signal(signed(11), name="qr_sh")
        m.d.sync += [mult.eq(Mux(r[16], r >> 1, r)),
                     sh.eq(as_signed_field(line[2]["c"][16:24]) - line[2]["e"] - Mux(r[16], t2 + 1, t2))]
        zero3 = Signal(name="qr_zero3")
        m.d.sync += zero3.eq(p2 == 0)
        # q4: the clamped right shift of an overflowing exponent
        # (hi = min(sh - 63, 31) >= 1 where it is used, sh > 63: the rounding shift by hi - 1)
        hi_m1 = Signal(range(31), name="qr_hi_m1")
        m.d.sync += hi_m1.eq(Mux(sh - 64 > 30, 30, sh - 64))
        mult4, sh4, zero4 = Signal.like(mult, name="qr_mult4"), Signal.like(sh, name="qr_sh4"), Signal(name="qr_zero4")
        m.d.sync += [mult4.eq(mult), sh4.eq(sh), zero4.eq(zero3)]
        # q5: the clamped right shift (its rounding waits for q6) and the record's case
        shr5 = Signal.like(mult4, name="qr_shr5")
        m.d.sync += shr5.eq(mult4 >> hi_m1)
        zero5, neg5, over5 = Signal(name="qr_zero5"), Signal(name="qr_neg5"), Signal(name="qr_over5")
        m.d.sync += [zero5.eq(zero4), neg5.eq(sh4 < 0), over5.eq(sh4 > 63)]
        plain5 = Signal(32, name="qr_plain5")
        m.d.sync += plain5.eq(Cat(mult4[:16], sh4[:16]))
        # q6: the record
        down = (shr5 + 1) >> 1
        out = Signal(32, name="qr_meta")
        with m.If(zero5):
            m.d.sync += out.eq(0)
        with m.Elif(neg5):
            m.d.sync += out.eq(Cat(Const(65535, 16), Const(0, 16)))
        with m.Elif(over5):
            m.d.sync += out.eq(Cat(down[:16], Const(63, 16)))
        with m.Else():
            m.d.sync += out.eq(plain5)
        for k in range(len(line) - 7):       # wait for the line's last stage
            nxt = Signal.like(out, name=f"qr_meta_d{k}")
            m.d.sync += nxt.eq(out)
            out = nxt
        return out
