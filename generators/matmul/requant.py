"""Output stage: one column's R accumulators -> int32, int8 or raw int64 results (§5).

First the column's *init* is added: the bias (``bias[n] << bias_shift``, first K slice) or the
partial sums of the previous K slices (from the split-K scratch); then

INT32: ``sat32(rshift_round(acc, out_shift))``;
INT8:  ``sat8(rshift_round(acc * mult[n], shift[n]))``;
RAW (a partial sum for the next K slice): ``acc`` itself, sign-extended to 64 bits.
Rows past the end of the matrix (a short last row block) come out as 0.

Rounding uses ``rshift_round(v, s) = ((v >> (s - 1)) + 1) >> 1`` (``s >= 1``),
which needs no ``2^(s-1)`` constant. The INT8 product ``acc * mult`` is up to
``acc_bits + 32`` bits; it is never formed. With ``acc = ah * 2^31 + al``::

    P = acc * mult = hi * 2^31 + lo,   hi = ah*mult + (al*mult >> 31),  lo = al*mult mod 2^31

and ``P >> k`` is ``hi >> (k - 31)`` for ``k >= 31``, else
``hi * 2^(31-k) + (lo >> k)``, where ``hi`` may be clamped to ``±2^10`` first
because anything that large saturates int8 anyway. Every operation is at most
64 bits wide: smaller logic, and fast in a simulator.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints

__all__ = ["OutputStage"]

_SPLIT = 31           # acc = ah * 2^31 + al
_HI_CLAMP = 1 << 10   # |hi| beyond this saturates int8 for every shift < 31


def _clamp(v, lo: int, hi: int):
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


#: a DSP48E2 multiplies 27 x 18 bits (signed): operand pieces of at most 24 (unsigned) / 27 (signed)
#: bits times multiplier halves of 17 (unsigned) and 15 (signed) bits
_PIECE, _TOP, _MLO = 24, 27, 17


def _pieces(v):
    """``v`` as (offset, piece) pairs, low pieces unsigned ``_PIECE`` bits, the top one signed if ``v`` is."""
    out, lo, n = [], 0, len(v)
    signed_v = v.shape().signed
    while n - lo > (_TOP if signed_v else _TOP - 1):
        out.append((lo, v[lo:lo + _PIECE]))
        lo += _PIECE
    top = v[lo:]
    out.append((lo, top.as_signed() if signed_v else top))
    return out


def _tile_products(m: Module, a, b, *, name: str) -> list:
    """``a * b`` (``b`` a signed 32-bit multiplier) as registered one-tile products (offset, product)."""
    halves = [(0, b[:_MLO]), (_MLO, b[_MLO:].as_signed())]
    out = []
    for ia, (oa, pa) in enumerate(_pieces(a)):
        for ib, (ob, pb) in enumerate(halves):
            p = Signal(signed(len(pa) + len(pb) + 1), name=f"{name}_p{ia}{ib}", reset_less=True)
            m.d.sync += p.eq(pa * pb)
            out.append((oa + ob, p))
    return out


def _sum_products(parts: list):
    """The exact sum of (offset, product) pairs, as a balanced tree of shifted adds."""
    vals = [p << o for o, p in parts]
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


class OutputStage(wiring.Component):
    """``R`` parallel requantizers, a 9-stage registered pipeline.

    ``int8`` picks the mode (``raw`` overrides both); ``out_shift`` (INT32) and ``mult``/``shift``
    (INT8, per column) are sampled with ``valid``; ``rows_valid`` rows are valid, the rest read 0.
    ``init`` selects what is added first: 1 ``bias << bias_shift`` (``bias`` per column), 2 the
    ``partial`` sums (popped with ``pop``), 0 nothing. ``y[r]`` is the result sign-extended to 64
    bits (int32, int8 or the raw accumulator).

    ``halves=2`` (the 2:4 pair fire): the ``rows`` are two columns' ``rows / 2`` each; the second
    column's ``mult``, ``shift`` and ``bias`` come on ``mult_odd``, ``shift_odd``, ``bias_odd``, and
    ``rows_valid`` counts the valid rows of each column.
    """

    LATENCY = 9

    def __init__(self, *, rows: int, acc_bits: int, mult_bits: int = 32, max_out_shift: int = 63,
                 max_requant_shift: int = 127, tag_layout=None, halves: int = 1):
        require_positive_ints(rows=rows, acc_bits=acc_bits, mult_bits=mult_bits, max_out_shift=max_out_shift, max_requant_shift=max_requant_shift)
        if halves not in (1, 2) or rows % halves:
            raise ValueError(f"halves must be 1 or 2 and divide rows ({rows}), got {halves!r}")
        if acc_bits > 62:
            raise ValueError(f"acc_bits must be at most 62, got {acc_bits}")
        if mult_bits != 32:
            raise ValueError(f"mult_bits must be 32, got {mult_bits}")
        if max_out_shift > 63 or max_requant_shift > 127:
            raise ValueError(f"shifts are limited to 63 (INT32) and 127 (INT8), got {max_out_shift}, "
                             f"{max_requant_shift}")
        self._rows, self._acc_bits, self._mult_bits = rows, acc_bits, mult_bits
        self._max_out_shift, self._max_requant_shift = max_out_shift, max_requant_shift
        self._halves = halves
        tag_layout = tag_layout if tag_layout is not None else unsigned(1)
        odd = {} if halves == 1 else {"mult_odd": In(signed(mult_bits)), "shift_odd": In(range(max_requant_shift + 1)),
                                      "bias_odd": In(signed(32))}
        super().__init__(odd | {
            "valid": In(1),
            "acc": In(data.ArrayLayout(signed(acc_bits), rows)),
            "int8": In(1),
            "raw": In(1),
            "init": In(2),
            "bias": In(signed(32)),
            "bias_shift": In(6),
            "partial": In(data.ArrayLayout(signed(64), rows)),
            "pop": Out(1),
            "out_shift": In(range(max_out_shift + 1)),
            "mult": In(signed(mult_bits)),
            "shift": In(range(max_requant_shift + 1)),
            "rows_valid": In(range(rows // halves + 1)),
            "tag": In(tag_layout),
            "o_valid": Out(1),
            "y": Out(data.ArrayLayout(signed(64), rows)),
            "o_tag": Out(tag_layout),
        })

    @property
    def latency(self) -> int:
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        R, ab = self._rows, self._acc_bits
        split = min(_SPLIT, ab - 1)

        # Registers only load when their stage holds a column (clock enables).
        v_in = Signal()
        valid0, valid1, valid2, valid3, valid4, valid5, valid6 = (Signal(name=f"valid{i}") for i in range(7))
        m.d.sync += [v_in.eq(self.valid), valid0.eq(v_in), valid1.eq(valid0), valid2.eq(valid1), valid3.eq(valid2),
                     valid4.eq(valid3), valid5.eq(valid4), valid6.eq(valid5),
                     self.o_valid.eq(valid6)]

        def regs(name, shape, n=R):
            return [Signal(shape, name=f"{name}{r}", reset_less=True) for r in range(n)]

        # the column's mode flags, rows and tag travel with it, one register per stage; the shift
        # amounts and the zero-shift flag per column half (``hr``: the half of row r)
        H = self._halves
        Rh = R // H
        hr = [r // Rh for r in range(R)]
        ctl_layout = data.StructLayout({"zero": H, "int8": 1, "raw": 1, "rows": range(Rh + 1),
                                        "tag": self.tag.shape()})

        def carry(valid, ctl, name):
            nxt = Signal(ctl_layout, name=name)
            with m.If(valid):
                m.d.sync += nxt.eq(ctl)
            return nxt

        def per_half(name, shape):
            return [Signal(shape, name=f"{name}" + ("_odd" if h else ""), reset_less=True) for h in range(H)]

        mults = [self.mult] + ([self.mult_odd] if H == 2 else [])
        shifts = [self.shift] + ([self.shift_odd] if H == 2 else [])
        biases = [self.bias] + ([self.bias_odd] if H == 2 else [])

        # in: the inputs and the init (bias or partial sums) registered
        acc_i = regs("acc_i", signed(ab))
        init_i = regs("init_i", signed(ab))
        ctl_i = Signal(ctl_layout, name="ctl_i")
        out_shift_i = Signal.like(self.out_shift)
        mult_i, shift_i = per_half("mult_i", self.mult.shape()), per_half("shift_i", self.shift.shape())
        biased = [Signal(signed(32 + 63), name="biased" + ("_odd" if h else "")) for h in range(H)]
        m.d.comb += [biased[h].eq(biases[h] << self.bias_shift) for h in range(H)]
        m.d.comb += self.pop.eq(self.valid & (self.init == 2))
        with m.If(self.valid):
            m.d.sync += [ctl_i.int8.eq(self.int8), ctl_i.raw.eq(self.raw), ctl_i.tag.eq(self.tag),
                         ctl_i.rows.eq(self.rows_valid), out_shift_i.eq(self.out_shift)]
            m.d.sync += [mult_i[h].eq(mults[h]) for h in range(H)] + [shift_i[h].eq(shifts[h]) for h in range(H)]
            for r in range(R):
                m.d.sync += [acc_i[r].eq(self.acc[r]),
                             init_i[r].eq(Mux(self.init == 1, biased[hr[r]][:ab].as_signed(),
                                              Mux(self.init == 2, self.partial[r][:ab].as_signed(), 0)))]

        # 0: accumulator + init; the sum fits acc_bits by construction
        acc0 = regs("acc_in", signed(ab))
        ctl0 = carry(v_in, ctl_i, "ctl0")
        out_shift0 = Signal.like(self.out_shift)
        mult0, shift0 = per_half("mult0", self.mult.shape()), per_half("shift0", self.shift.shape())
        with m.If(v_in):
            m.d.sync += out_shift0.eq(out_shift_i)
            m.d.sync += [mult0[h].eq(mult_i[h]) for h in range(H)] + [shift0[h].eq(shift_i[h]) for h in range(H)]
            for r in range(R):
                m.d.sync += acc0[r].eq(acc_i[r] + init_i[r])

        # 1: the partial products of acc x mult, each one DSP48E2 tile (registered); k = s - 1.
        ctl1 = carry(valid0, ctl0, "ctl1")
        k1 = per_half("k1", range(128))
        acc1 = regs("acc", signed(ab))
        ph_parts, pl_parts = [], []                       # per row: [(shift, registered product)]
        with m.If(valid0):
            for h in range(H):
                s = Signal(range(128), name="s" + ("_odd" if h else ""))
                m.d.comb += s.eq(Mux(ctl0.int8, shift0[h], out_shift0))
                m.d.sync += [k1[h].eq(Mux(s == 0, 0, s - 1)), ctl1.zero[h].eq(s == 0)]
            for r in range(R):
                a = acc0[r]
                m.d.sync += acc1[r].eq(a)
                ph_parts.append(_tile_products(m, a[split:].as_signed(), mult0[hr[r]], name=f"ph{r}"))
                pl_parts.append(_tile_products(m, a[:split], mult0[hr[r]], name=f"pl{r}"))

        # 2: the partial products summed: ph = ah * mult, pl = al * mult (two adder levels).
        k2 = per_half("k2", range(128))
        ctl2 = carry(valid1, ctl1, "ctl2")
        ph = regs("ph", signed(ab - split + 32))          # ah * mult
        pl = regs("pl", signed(split + 1 + 32))           # al * mult
        acc2 = regs("acc_2", signed(ab))
        with m.If(valid1):
            m.d.sync += [k2[h].eq(k1[h]) for h in range(H)]
            for r in range(R):
                # the INT32 shift's multiple-of-8 part here, the rest in stage 3 (one barrel shifter
                # of up to 127 places is too deep for a cycle)
                coarse = acc1[r] >> Cat(Const(0, 3), k1[hr[r]][3:])
                m.d.sync += [ph[r].eq(_sum_products(ph_parts[r])), pl[r].eq(_sum_products(pl_parts[r])),
                             acc2[r].eq(Mux(ctl1.zero[hr[r]] | ctl1.raw, acc1[r], coarse))]

        # 3: INT8 -> P = hi * 2^split + lo; INT32 -> acc >> k; the shift split at ``split``.
        ctl3 = carry(valid2, ctl2, "ctl3")
        big3 = per_half("big3", 1)
        k_hi3 = per_half("k_hi3", range(128))
        k_lo3 = per_half("k_lo3", range(split + 1))
        hi3 = regs("hi", signed(ab - split + 33))
        lo3 = regs("lo", unsigned(split))
        acc3 = regs("acc_k", signed(ab))
        with m.If(valid2):
            for h in range(H):
                big = k2[h] >= split
                m.d.sync += [big3[h].eq(big), k_hi3[h].eq(Mux(big, k2[h] - split, 0)), k_lo3[h].eq(Mux(big, 0, k2[h]))]
            for r in range(R):
                m.d.sync += [hi3[r].eq(ph[r] + (pl[r] >> split)), lo3[r].eq(pl[r][:split]),
                             acc3[r].eq(Mux(ctl2.zero[hr[r]] | ctl2.raw, acc2[r], acc2[r] >> k2[hr[r]][:3]))]

        # 4: the clamped high part and the two shifted parts of the INT8 product; round the INT32
        # result.
        ctl4 = carry(valid3, ctl3, "ctl4")
        big4 = per_half("big4", 1)
        k_lo4 = per_half("k_lo4", range(split + 1))
        k_fine4 = per_half("k_fine4", range(8))
        hic4 = regs("hic", signed(12))
        lo_sh4 = regs("lo_sh", unsigned(split))
        hi_sh4 = regs("hi_sh", signed(64))
        r32_4 = regs("r32_", signed(ab))                   # the INT32 result rounded, not yet saturated
        acc4 = regs("acc_raw", signed(ab))
        with m.If(valid3):
            m.d.sync += [big4[h].eq(big3[h]) for h in range(H)] + [k_lo4[h].eq(k_lo3[h]) for h in range(H)]
            m.d.sync += [k_fine4[h].eq(k_hi3[h][:3]) for h in range(H)]
            for r in range(R):
                h = hr[r]
                m.d.sync += [hic4[r].eq(_clamp(hi3[r], -_HI_CLAMP, _HI_CLAMP)), lo_sh4[r].eq(lo3[r] >> k_lo3[h]),
                             # the high part's shift in two steps (a 7-bit barrel shifter is too deep
                             # for a cycle): the multiple of 8 here, the rest in stage 5
                             hi_sh4[r].eq(hi3[r] >> Cat(Const(0, 3), k_hi3[h][3:])),
                             r32_4[r].eq(Mux(ctl3.zero[h], acc3[r], (acc3[r] + 1) >> 1)),
                             acc4[r].eq(acc3[r])]

        # 5: the shifted INT8 product's two candidates (the high part's rest of the shift, and the
        # small-shift sum); saturate the INT32 result.
        ctl5 = carry(valid4, ctl4, "ctl5")
        big5 = per_half("big5", 1)
        t_hi5 = regs("t_hi", signed(64))
        t_lo5 = regs("t_lo", signed(12 + split))
        y32_5 = regs("y32_5_", signed(32))
        acc5 = regs("acc_raw5_", signed(ab))
        with m.If(valid4):
            m.d.sync += [big5[h].eq(big4[h]) for h in range(H)]
            for r in range(R):
                h = hr[r]
                # (hic << split) >> k_lo is a multiple of 2^(split - k_lo) and lo_sh is below it: the
                # sum is an OR (no carry chain)
                t_small = ((hic4[r] << split) >> k_lo4[h]) | lo_sh4[r]
                m.d.sync += [t_hi5[r].eq(hi_sh4[r] >> k_fine4[h]), t_lo5[r].eq(t_small),
                             y32_5[r].eq(_clamp(r32_4[r], -(1 << 31), (1 << 31) - 1)), acc5[r].eq(acc4[r])]

        # 6: the INT8 result's two clamps (before and without rounding), of each candidate, then
        # the candidate chosen (clamp(Mux(b, x, y)) == Mux(b, clamp(x), clamp(y))).
        ctl6 = carry(valid5, ctl5, "ctl6")
        tc6 = regs("tc", signed(10))
        z8_6 = regs("z8_", signed(8))
        y32_6 = regs("y32_6_", signed(32))
        acc6 = regs("acc_raw6_", signed(ab))
        with m.If(valid5):
            for r in range(R):
                b = big5[hr[r]]
                m.d.sync += [tc6[r].eq(Mux(b, _clamp(t_hi5[r], -257, 255), _clamp(t_lo5[r], -257, 255))),
                             z8_6[r].eq(Mux(b, _clamp(t_hi5[r], -128, 127), _clamp(t_lo5[r], -128, 127))),
                             y32_6[r].eq(y32_5[r]), acc6[r].eq(acc5[r])]

        # 7: round and saturate the INT8 result; blank rows past the end of the matrix.
        with m.If(valid6):
            m.d.sync += self.o_tag.eq(ctl6.tag)
            for r in range(R):
                y8 = Mux(ctl6.zero[hr[r]], z8_6[r], _clamp((tc6[r] + 1) >> 1, -128, 127))
                m.d.sync += self.y[r].eq(Mux(ctl6.rows > r % Rh, Mux(ctl6.raw, acc6[r],
                                                                    Mux(ctl6.int8, y8, y32_6[r])), 0))
        return m
