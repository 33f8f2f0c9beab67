"""Fire scheduler: walks row blocks x columns x K chunks and decides when the array fires.

Loop order is the order of the weight stream (§4): for each row block, for
each output column ``n``, for each chunk of ``L`` weights along K. The array
fires when everything this fire needs is there: a weight chunk, the row
block's activations, the group's scale(s) when the fire ends a group, the
column's requant parameters when it ends a column in INT8 mode, and output
credit when it ends a column (so back-pressure on the output can never
overflow the fixed-latency pipeline behind the array).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints, require_powers_of_two

__all__ = ["FireScheduler"]


class FireScheduler(wiring.Component):
    """Loop counters and the fire condition; ``*_take`` pop a stream, ``*_last`` end its packet."""

    def __init__(self, *, rows: int, lanes: int, group_size: int, max_k: int):
        require_positive_ints(rows=rows, lanes=lanes, group_size=group_size, max_k=max_k)
        require_powers_of_two(lanes=lanes, group_size=group_size)
        if max_k % max(lanes, group_size):
            raise ValueError(f"max_k {max_k} must be a multiple of max(lanes, group_size)")
        self._rows, self._lanes, self._group, self._max_k = rows, lanes, group_size, max_k
        self._lines = max_k // lanes
        self._fires_per_group = max(1, group_size // lanes)
        super().__init__({
            "start": In(1),
            "m": In(32),
            "n": In(32),
            "kc": In(range(self._lines + 1)),      # K / L, >= fires_per_group
            "int8": In(1),
            "w_valid": In(1), "w_take": Out(1), "w_last": Out(1),
            "s_valid": In(1), "s_take": Out(1), "s_last": Out(1),
            "q_valid": In(1), "q_take": Out(1), "q_last": Out(1),
            "a_ready": In(1), "a_release": Out(1),
            "rd_line": Out(range(self._lines)),
            "credit": In(1),
            "fire": Out(1),
            "grp_first": Out(1), "grp_last": Out(1),
            "col_first": Out(1), "col_last": Out(1),
            "job_last": Out(1),
            "rows_valid": Out(range(rows + 1)),
            "active": Out(1),
        })

    @property
    def fires_per_group(self) -> int:
        return self._fires_per_group

    def elaborate(self, platform):
        m = Module()
        R, fpg = self._rows, self._fires_per_group
        c = Signal(range(max(self._lines, 2)))    # chunk within the column (never zero-width)
        n = Signal(32)                            # column
        rows_left = Signal(32)                    # rows of this and later blocks
        kc_m1 = Signal(range(max(self._lines, 2)))
        n_m1 = Signal(32)
        active = self.active

        with m.If(self.start):
            m.d.sync += [c.eq(0), n.eq(0), rows_left.eq(self.m), kc_m1.eq(self.kc - 1),
                         n_m1.eq(self.n - 1), active.eq(1)]

        m.d.comb += self.rows_valid.eq(Mux(rows_left < R, rows_left, R))
        if fpg > 1:
            pos = c[:fpg.bit_length() - 1]
            m.d.comb += [self.grp_first.eq(pos == 0), self.grp_last.eq(pos == fpg - 1),
                         self.col_first.eq(c < fpg)]
        else:
            m.d.comb += [self.grp_first.eq(1), self.grp_last.eq(1), self.col_first.eq(c == 0)]
        m.d.comb += self.col_last.eq(c == kc_m1)
        blk_last = self.col_last & (n == n_m1)
        m.d.comb += self.job_last.eq(blk_last & (rows_left <= R))

        fire = self.fire
        m.d.comb += fire.eq(active & self.w_valid & self.a_ready
                            & (~self.grp_last | self.s_valid)
                            & (~(self.int8 & self.col_last) | self.q_valid)
                            & (~self.col_last | self.credit))
        m.d.comb += [
            self.w_take.eq(fire), self.w_last.eq(blk_last),
            self.s_take.eq(fire & self.grp_last), self.s_last.eq(blk_last),
            self.q_take.eq(fire & self.col_last & self.int8), self.q_last.eq(blk_last),
            self.a_release.eq(fire & blk_last),
            self.rd_line.eq(c),
        ]
        with m.If(fire & ~self.start):
            m.d.sync += c.eq(Mux(self.col_last, 0, c + 1))
            with m.If(self.col_last):
                m.d.sync += n.eq(Mux(blk_last, 0, n + 1))
            with m.If(blk_last):
                m.d.sync += rows_left.eq(rows_left - self.rows_valid)
                with m.If(self.job_last):
                    m.d.sync += active.eq(0)
        return m
