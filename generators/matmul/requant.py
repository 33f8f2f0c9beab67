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

from amaranth.hdl import Mux, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints

__all__ = ["OutputStage"]

_SPLIT = 31           # acc = ah * 2^31 + al
_HI_CLAMP = 1 << 10   # |hi| beyond this saturates int8 for every shift < 31


def _clamp(v, lo: int, hi: int):
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


class OutputStage(wiring.Component):
    """``R`` parallel requantizers, a 5-stage registered pipeline.

    ``int8`` picks the mode (``raw`` overrides both); ``out_shift`` (INT32) and ``mult``/``shift``
    (INT8, per column) are sampled with ``valid``; ``rows_valid`` rows are valid, the rest read 0.
    ``init`` selects what is added first: 1 ``bias << bias_shift`` (``bias`` per column), 2 the
    ``partial`` sums (popped with ``pop``), 0 nothing. ``y[r]`` is the result sign-extended to 64
    bits (int32, int8 or the raw accumulator).
    """

    LATENCY = 5

    def __init__(self, *, rows: int, acc_bits: int, mult_bits: int = 32, max_out_shift: int = 63,
                 max_requant_shift: int = 127, tag_layout=None):
        require_positive_ints(rows=rows, acc_bits=acc_bits, mult_bits=mult_bits, max_out_shift=max_out_shift, max_requant_shift=max_requant_shift)
        if acc_bits > 62:
            raise ValueError(f"acc_bits must be at most 62, got {acc_bits}")
        if mult_bits != 32:
            raise ValueError(f"mult_bits must be 32, got {mult_bits}")
        if max_out_shift > 63 or max_requant_shift > 127:
            raise ValueError(f"shifts are limited to 63 (INT32) and 127 (INT8), got {max_out_shift}, "
                             f"{max_requant_shift}")
        self._rows, self._acc_bits, self._mult_bits = rows, acc_bits, mult_bits
        self._max_out_shift, self._max_requant_shift = max_out_shift, max_requant_shift
        tag_layout = tag_layout if tag_layout is not None else unsigned(1)
        super().__init__({
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
            "rows_valid": In(range(rows + 1)),
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
        valid0, valid1, valid2, valid3 = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [valid0.eq(self.valid), valid1.eq(valid0), valid2.eq(valid1), valid3.eq(valid2),
                     self.o_valid.eq(valid3)]

        def regs(name, shape, n=R):
            return [Signal(shape, name=f"{name}{r}", reset_less=True) for r in range(n)]

        # 0: the init (bias or partial sums); the sum fits acc_bits by construction
        acc0 = regs("acc_in", signed(ab))
        int8_0, raw_0, tag_0 = Signal(reset_less=True), Signal(reset_less=True), Signal.like(self.tag)
        out_shift0 = Signal.like(self.out_shift)
        mult0, shift0 = Signal.like(self.mult), Signal.like(self.shift)
        rows_0 = Signal.like(self.rows_valid)
        biased = Signal(signed(32 + 63), name="biased")
        m.d.comb += [biased.eq(self.bias << self.bias_shift), self.pop.eq(self.valid & (self.init == 2))]
        with m.If(self.valid):
            m.d.sync += [int8_0.eq(self.int8), raw_0.eq(self.raw), tag_0.eq(self.tag), out_shift0.eq(self.out_shift),
                         mult0.eq(self.mult), shift0.eq(self.shift), rows_0.eq(self.rows_valid)]
            for r in range(R):
                init = Mux(self.init == 1, biased[:ab].as_signed(),
                           Mux(self.init == 2, self.partial[r][:ab].as_signed(), 0))
                m.d.sync += acc0[r].eq(self.acc[r] + init)

        # 1: the two partial products (INT8) or the accumulator (INT32); k = s - 1.
        s = Signal(range(128))
        m.d.comb += s.eq(Mux(int8_0, shift0, out_shift0))
        k1 = Signal(range(128), reset_less=True)
        zero1, int8_1, raw_1, tag_1 = (Signal(reset_less=True), Signal(reset_less=True), Signal(reset_less=True),
                                       Signal.like(self.tag))
        rows_1 = Signal.like(self.rows_valid)
        ph = regs("ph", signed(ab - split + 32))          # ah * mult
        pl = regs("pl", signed(split + 1 + 32))           # al * mult
        acc1 = regs("acc", signed(ab))
        with m.If(valid0):
            m.d.sync += [k1.eq(Mux(s == 0, 0, s - 1)), zero1.eq(s == 0), int8_1.eq(int8_0), raw_1.eq(raw_0),
                         tag_1.eq(tag_0), rows_1.eq(rows_0)]
            for r in range(R):
                a = acc0[r]
                m.d.sync += [ph[r].eq(a[split:].as_signed() * mult0),
                             pl[r].eq(a[:split] * mult0), acc1[r].eq(a)]

        # 2: INT8 -> P = hi * 2^split + lo; INT32 -> acc >> k.
        k2 = Signal(range(128), reset_less=True)
        zero2, int8_2, raw_2, tag_2 = (Signal(reset_less=True), Signal(reset_less=True), Signal(reset_less=True),
                                       Signal.like(self.tag))
        rows_2 = Signal.like(self.rows_valid)
        hi2 = regs("hi", signed(ab - split + 33))
        lo2 = regs("lo", unsigned(split))
        acc2 = regs("acc_k", signed(ab))
        with m.If(valid1):
            m.d.sync += [k2.eq(k1), zero2.eq(zero1), int8_2.eq(int8_1), raw_2.eq(raw_1), tag_2.eq(tag_1),
                         rows_2.eq(rows_1)]
            for r in range(R):
                m.d.sync += [hi2[r].eq(ph[r] + (pl[r] >> split)), lo2[r].eq(pl[r][:split]),
                             acc2[r].eq(Mux(zero1 | raw_1, acc1[r], acc1[r] >> k1))]

        # 3: shift the INT8 product; round and saturate the INT32 result.
        big = k2 >= split
        k_hi = Signal(range(128))
        k_lo = Signal(range(split + 1))
        m.d.comb += [k_hi.eq(Mux(big, k2 - split, 0)), k_lo.eq(Mux(big, 0, k2))]
        zero3, int8_3, raw_3, tag_3 = (Signal(reset_less=True), Signal(reset_less=True), Signal(reset_less=True),
                                       Signal.like(self.tag))
        rows_3 = Signal.like(self.rows_valid)
        t3 = regs("t", signed(64))
        y32_3 = regs("y32_", signed(32))
        acc3 = regs("acc_raw", signed(ab))
        with m.If(valid2):
            m.d.sync += [zero3.eq(zero2), int8_3.eq(int8_2), raw_3.eq(raw_2), tag_3.eq(tag_2), rows_3.eq(rows_2)]
            for r in range(R):
                hic = Signal(signed(12), name=f"hic{r}")
                m.d.comb += hic.eq(_clamp(hi2[r], -_HI_CLAMP, _HI_CLAMP))
                t_small = ((hic << split) >> k_lo) + (lo2[r] >> k_lo)   # exact: low bits of hic<<split are 0
                m.d.sync += [t3[r].eq(Mux(big, hi2[r] >> k_hi, t_small)),
                             y32_3[r].eq(_clamp(Mux(zero2, acc2[r], (acc2[r] + 1) >> 1), -(1 << 31), (1 << 31) - 1)),
                             acc3[r].eq(acc2[r])]

        # 4: round and saturate the INT8 result; blank rows past the end of the matrix.
        with m.If(valid3):
            m.d.sync += self.o_tag.eq(tag_3)
            for r in range(R):
                t = t3[r]
                tc = _clamp(t, -257, 255)
                y8 = Mux(zero3, _clamp(t, -128, 127), _clamp((tc + 1) >> 1, -128, 127))
                m.d.sync += self.y[r].eq(Mux(rows_3 > r, Mux(raw_3, acc3[r], Mux(int8_3, y8, y32_3[r])), 0))
        return m
