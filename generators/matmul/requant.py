"""Output stage: one column's R accumulators -> int32 or int8 results (§5).

INT32: ``sat32(rshift_round(acc, out_shift))``;
INT8:  ``sat8(rshift_round(acc * mult[n], shift[n]))``. Rows past the end of the
matrix (a short last row block) come out as 0. The rounding shift is done as
``((v >> (s - 1)) + 1) >> 1``, which equals ``(v + 2^(s-1)) >> s`` without a
``2^s``-wide rounding constant.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pipe import delay

__all__ = ["OutputStage"]


class OutputStage(wiring.Component):
    """``R`` parallel requantizers, a 3-stage registered pipeline.

    ``int8`` picks the mode; ``out_shift`` (INT32) and ``mult``/``shift`` (INT8,
    per column) are sampled with ``valid``; ``rows`` rows are valid, the rest
    read 0. ``y[r]`` is the int32 result (INT8 results are sign-extended).
    """

    LATENCY = 3

    def __init__(self, *, rows: int, acc_bits: int, mult_bits: int = 32, max_out_shift: int = 63,
                 max_requant_shift: int = 127, tag_layout=None):
        for name, v in (("rows", rows), ("acc_bits", acc_bits), ("mult_bits", mult_bits),
                        ("max_out_shift", max_out_shift), ("max_requant_shift", max_requant_shift)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        self._rows, self._acc_bits, self._mult_bits = rows, acc_bits, mult_bits
        self._max_out_shift, self._max_requant_shift = max_out_shift, max_requant_shift
        tag_layout = tag_layout if tag_layout is not None else unsigned(1)
        super().__init__({
            "valid": In(1),
            "acc": In(data.ArrayLayout(signed(acc_bits), rows)),
            "int8": In(1),
            "out_shift": In(range(max_out_shift + 1)),
            "mult": In(signed(mult_bits)),
            "shift": In(range(max_requant_shift + 1)),
            "rows_valid": In(range(rows + 1)),
            "tag": In(tag_layout),
            "o_valid": Out(1),
            "y": Out(data.ArrayLayout(signed(32), rows)),
            "o_tag": Out(tag_layout),
        })

    @property
    def latency(self) -> int:
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        R = self._rows
        vbits = self._acc_bits + self._mult_bits
        smax = max(self._max_out_shift, self._max_requant_shift)

        # 1: multiply (INT8) and pick the shift.
        v1 = [Signal(signed(vbits), name=f"v{r}") for r in range(R)]
        s = Signal(range(smax + 1))
        m.d.comb += s.eq(Mux(self.int8, self.shift, self.out_shift))
        sm1 = Signal(range(smax + 1))             # s - 1, or 0 when s == 0
        zero1 = Signal()
        m.d.sync += [sm1.eq(Mux(s == 0, 0, s - 1)), zero1.eq(s == 0)]
        for r in range(R):
            m.d.sync += v1[r].eq(Mux(self.int8, self.acc[r] * self.mult, self.acc[r]))
        int8_1 = delay(m, self.int8, 1, name="int8")
        rows_1 = delay(m, self.rows_valid, 1, name="rows")

        # 2: rshift_round.
        v2 = [Signal(signed(vbits), name=f"rounded{r}") for r in range(R)]
        for r in range(R):
            half = Signal(signed(vbits), name=f"half{r}")
            m.d.comb += half.eq(v1[r] >> sm1)
            m.d.sync += v2[r].eq(Mux(zero1, v1[r], (half + 1) >> 1))
        int8_2 = delay(m, int8_1, 1, name="int8")
        rows_2 = delay(m, rows_1, 1, name="rows")

        # 3: saturate and blank the rows past the end of the matrix.
        hi = Mux(int8_2, (1 << 7) - 1, (1 << 31) - 1)
        lo = Mux(int8_2, -(1 << 7), -(1 << 31))
        for r in range(R):
            sat = Mux(v2[r] > hi, hi, Mux(v2[r] < lo, lo, v2[r]))
            m.d.sync += self.y[r].eq(Mux(rows_2 > r, sat, 0))
        m.d.sync += self.o_valid.eq(delay(m, self.valid, 2, name="valid"))
        m.d.comb += self.o_tag.eq(delay(m, self.tag, 3, name="tag"))
        return m
