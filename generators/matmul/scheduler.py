"""Fire scheduler: walks row blocks x columns x K chunks and decides when the array fires.

Loop order is the order of the weight stream (§4): for each row block, for
each output column ``n``, for each chunk of ``L`` weights along K. The array
fires when everything this fire needs is there: a weight chunk, the row
block's activations, the group's scale(s) when the fire ends a group, the
column's requant parameters when it ends a column in INT8 mode, and output
credit when it ends a column (so back-pressure on the output can never
overflow the fixed-latency pipeline behind the array).

TLMM mode (``table_entries`` given, see :mod:`.tlmm`): before a row block's first
fire the scheduler walks the *build* loop, line ``0 .. K/L - 1`` x entry
``0 .. E - 1``, one step per cycle while the block's activations are there
(``build``, ``build_line``/``rd_line``, ``build_entry``). The last build step
releases the activation bank (the tables now hold the block) and fires may start
``build_gap`` cycles after it; fires no longer wait for the activation buffer.
The tables are single-buffered: the next block's build starts after this block's
last fire.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints, require_powers_of_two

__all__ = ["FireScheduler"]


class FireScheduler(wiring.Component):
    """Loop counters and the fire condition; ``*_take`` pop a stream, ``*_last`` end its packet."""

    def __init__(self, *, rows: int, lanes: int, group_size: int, max_k: int,
                 table_entries: int | None = None, build_gap: int = 2):
        require_positive_ints(rows=rows, lanes=lanes, group_size=group_size, max_k=max_k)
        if table_entries is not None:
            require_positive_ints(table_entries=table_entries, build_gap=build_gap)
        require_powers_of_two(lanes=lanes, group_size=group_size)
        if max_k % max(lanes, group_size):
            raise ValueError(f"max_k {max_k} must be a multiple of max(lanes, group_size)")
        self._rows, self._lanes, self._group, self._max_k = rows, lanes, group_size, max_k
        self._lines = max_k // lanes
        self._fires_per_group = max(1, group_size // lanes)
        self._entries, self._build_gap = table_entries, build_gap
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
            "line": Out(range(self._lines)),                    # K chunk of the fire
            "build": Out(1),                                    # TLMM: a table build step
            "build_line": Out(range(self._lines)),
            "build_entry": Out(range(max(table_entries or 1, 1))),
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

    @property
    def tlmm(self) -> bool:
        return self._entries is not None

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

        # TLMM: the tables of this row block are built (and readable), else the build loop runs.
        if self.tlmm:
            E, gap = self._entries, self._build_gap
            tables = Signal()
            hold = Signal(range(gap + 1))
            bl = Signal(range(max(self._lines, 2)))
            be = Signal(range(max(E, 2)))
            last_entry = be == E - 1
            last_step = last_entry & (bl == kc_m1)
            m.d.comb += [self.build.eq(active & ~tables & self.a_ready & ~self.start),
                         self.build_line.eq(bl), self.build_entry.eq(be), self.rd_line.eq(bl)]
            with m.If(self.start):
                m.d.sync += [tables.eq(0), hold.eq(0), bl.eq(0), be.eq(0)]
            with m.Elif(self.build):
                m.d.sync += be.eq(Mux(last_entry, 0, be + 1))
                with m.If(last_entry):
                    m.d.sync += bl.eq(Mux(last_step, 0, bl + 1))
                with m.If(last_step):
                    m.d.sync += [tables.eq(1), hold.eq(gap - 1)]
            with m.Elif(hold != 0):
                m.d.sync += hold.eq(hold - 1)
            inputs_ready = tables & (hold == 0)
        else:
            inputs_ready = self.a_ready
            m.d.comb += self.rd_line.eq(c)

        fire = self.fire
        m.d.comb += fire.eq(active & self.w_valid & inputs_ready
                            & (~self.grp_last | self.s_valid)
                            & (~(self.int8 & self.col_last) | self.q_valid)
                            & (~self.col_last | self.credit))
        m.d.comb += [
            self.w_take.eq(fire), self.w_last.eq(blk_last),
            self.s_take.eq(fire & self.grp_last), self.s_last.eq(blk_last),
            self.q_take.eq(fire & self.col_last & self.int8), self.q_last.eq(blk_last),
            self.line.eq(c),
        ]
        if self.tlmm:
            m.d.comb += self.a_release.eq(self.build & last_step)
            with m.If(fire & blk_last & ~self.start):
                m.d.sync += tables.eq(0)
        else:
            m.d.comb += self.a_release.eq(fire & blk_last)
        with m.If(fire & ~self.start):
            m.d.sync += c.eq(Mux(self.col_last, 0, c + 1))
            with m.If(self.col_last):
                m.d.sync += n.eq(Mux(blk_last, 0, n + 1))
            with m.If(blk_last):
                m.d.sync += rows_left.eq(rows_left - self.rows_valid)
                with m.If(self.job_last):
                    m.d.sync += active.eq(0)
        return m
