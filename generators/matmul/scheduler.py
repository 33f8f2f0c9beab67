"""Fire scheduler: walks each pass's tiles x row blocks x columns x K chunks, decides each fire.

Loop nest per pass (a K slice over a chunk of row blocks; docs/engines/matmul.md)::

    for tile t (tile_n columns): for row block b of the chunk: for column j of t: for chunk c of K

so every column of a weight tile is fired ``nblk`` times (once per row block) from the weight
ring and each row block ``tiles`` times from the activation ring. A fire needs: its weight line
in the ring (the loader may still be writing that column: line-granular, so a GEMV streams at the
port rate); its row block in the activation ring; at a column's last fire, output credit, the
tile's column parameters when the pass uses them (INT8 requant in the last slice, bias in the
first) and, from the second K slice on, the column's partial sums.

Ring bookkeeping: a weight column is freed after its fire in the chunk's last row block, a row
block after its last column of the last tile; so at those points the thing fired is always the
oldest in its ring and its offset is 0, otherwise the offset is ``j`` (weights) or ``b``
(activations).

TLMM (``geometry.tlmm``, one row block per chunk): before a pass's first fire the scheduler walks
the *build* loop, line ``0 .. kc - 1`` x entry ``0 .. E - 1``, one step per cycle, from the
block's activations; the last step releases the block and fires may start ``build_gap`` cycles
later without the activation ring. Tables are single-buffered.

Every output is for the *issue* cycle: the engine registers fire and tag once while the rings'
synchronous reads deliver the weight line, column parameters and (one cycle later) activations.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ...encodings import OutMode
from ...mathutil import exact_log2
from .geometry import EngineGeometry, pass_layout

__all__ = ["FireScheduler", "OUT_RAW", "INIT_NONE", "INIT_BIAS", "INIT_PARTIAL"]

#: the output mode of a column of a non-last K slice: the raw accumulator (a partial sum, int64)
OUT_RAW = 2
INIT_NONE, INIT_BIAS, INIT_PARTIAL = 0, 1, 2


class FireScheduler(wiring.Component):
    """Loop counters, ring pointers and the fire condition (see the module docstring)."""

    def __init__(self, geometry: EngineGeometry, *, build_gap: int = 2):
        if not isinstance(geometry, EngineGeometry):
            raise TypeError(f"geometry must be an EngineGeometry, got {type(geometry).__name__}")
        self._geom = G = geometry
        self._build_gap = build_gap
        T = G.tile_n
        super().__init__({
            "passes": In(stream.Signature(pass_layout(G))),
            "start": In(1),
            "tiles": In(32),
            "last_cols": In(range(T + 1)),
            "stride_log": In(range(G.line_bits + 1)),
            "int8": In(1),
            "bias": In(1),
            # ring states
            "cols_ahead": In(range(G.weight_slots + 1)),
            "cur_lines": In(range(G.kc_max + 1)),
            "act_ahead": In(range(G.max_blocks + 1)),
            "param_tiles": In(range(3)),
            "partials": In(1),                       # a partial-sum entry is queued and not yet claimed
            "credit": In(1),
            # the fire and its addresses
            "fire": Out(1),
            "w_addr": Out(range(G.weight_depth)),
            "a_addr": Out(range(G.act_depth)),
            "p_addr": Out(range(2 * T)),
            "line": Out(range(max(G.line_stride, 2))),
            "build": Out(1),
            "build_line": Out(range(max(G.line_stride, 2))),
            "build_entry": Out(range(max(G.tlmm_entries, 2))),
            # ring releases
            "free_col": Out(1),
            "release": Out(1),
            "free_params": Out(1),
            "claim": Out(1),
            # the fire's tag
            "grp_first": Out(1), "grp_last": Out(1),
            "col_first": Out(1), "col_last": Out(1),
            "rows_valid": Out(range(G.rows + 1)),
            "mode": Out(2),                          # OutMode value, or OUT_RAW
            "init": Out(2),                          # INIT_*
            "flush": Out(1),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        G = self._geom
        R, T, fpg = G.rows, G.tile_n, G.fires_per_group
        abits = exact_log2(G.act_depth)

        have = Signal()
        rec = self.passes.payload
        # loop bounds minus one, registered (at the pass's load, or from the job's sizes every
        # cycle: they settle in the sequencer's SETUP, long before its first pass), so the loop
        # ends below are plain equalities, not a subtraction feeding a compare
        kc_m1 = Signal.like(rec.kc)
        nblk_m1 = Signal.like(rec.nblk)
        tiles_m1 = Signal(32)
        last_cols_m1 = Signal(range(T))
        one_last_col = Signal()                  # the last tile has one column
        two_last_col = Signal()                  # ... two columns
        tiles_1, tiles_2 = Signal(), Signal()    # tiles == 1, tiles == 2
        m.d.sync += [tiles_m1.eq(self.tiles - 1), last_cols_m1.eq(self.last_cols - 1),
                     one_last_col.eq(self.last_cols == 1), two_last_col.eq(self.last_cols == 2),
                     tiles_1.eq(self.tiles == 1), tiles_2.eq(self.tiles == 2)]
        rows = Signal(32)
        first, last, final = Signal(), Signal(), Signal()
        need_params = Signal()                   # the pass loads column parameters (set with the pass)
        t_left = Signal(32)                      # tiles after the current one
        final_tile = Signal()                    # t_left == 0, registered
        t_left_1 = Signal()                      # t_left == 1, registered
        b = Signal.like(rec.nblk)
        b_p1 = Signal(len(b) + 1)                # b + 1, kept beside b
        j = Signal(range(T + 1))
        j_p1 = Signal(len(j) + 1)                # j + 1, kept beside j
        c = Signal(range(max(G.kc_max, 2)))
        c_p1 = Signal(len(c) + 1)                # c + 1, kept beside c
        # the row-block and K-chunk loop ends as registered flags (down-counters of what follows):
        # they gate every fire and the rings' frees, so they are flip-flops, not compares
        b_left = Signal.like(rec.nblk)
        final_blk = Signal()
        c_left = Signal.like(rec.kc)
        # the loops' bounds and "one after this" tests as flags too (set with the pass, and kept
        # beside the down-counters): the flags' next values are selects between flip-flops
        kc_1, kc_2, nblk_1, nblk_2 = Signal(), Signal(), Signal(), Signal()    # kc == 1, 2; nblk == 1, 2
        c_nl, b_nl = Signal(), Signal()         # c_left == 1, b_left == 1
        col_last = Signal()
        last_col = Signal()                      # j is the tile's last column (registered flag)
        brows = Signal(32)                       # rows of this and the later blocks of the chunk
        w_old = Signal(exact_log2(G.weight_slots))
        a_old = Signal(abits)
        p_old = Signal()
        m.d.comb += self.active.eq(have)

        with m.If(~have):
            m.d.comb += self.passes.ready.eq(1)
            with m.If(self.passes.valid):
                m.d.sync += [have.eq(1), kc_m1.eq(rec.kc - 1), nblk_m1.eq(rec.nblk - 1), rows.eq(rec.rows),
                             brows.eq(rec.rows), first.eq(rec.first), last.eq(rec.last), final.eq(rec.final),
                             need_params.eq((self.int8 & rec.last) | (self.bias & rec.first)),
                             t_left.eq(tiles_m1), t_left_1.eq(tiles_2), b.eq(0), b_p1.eq(1), j.eq(0),
                             j_p1.eq(1), c.eq(0), c_p1.eq(1),
                             b_left.eq(rec.nblk - 1), c_left.eq(rec.kc - 1),
                             kc_1.eq(rec.kc == 1), kc_2.eq(rec.kc == 2), nblk_1.eq(rec.nblk == 1),
                             nblk_2.eq(rec.nblk == 2)]

        # The loop steps are registers too: at_tile = col_last & last_col, at_blk = ... &
        # final_blk, at_pass = ... & final_tile, each a flip-flop, so a step is the fire AND one
        # flip-flop. Their next values (and the flags') are written as a select by the fire (which
        # arrives last) between values of registers only: if this cycle fires (the column, tile or
        # block ends by the current flags), if a pass loads, else unchanged.
        at_tile, at_blk, at_pass = Signal(name="at_tile"), Signal(name="at_blk"), Signal(name="at_pass")
        load = ~have & self.passes.valid
        # the tile's columns after the current one, with the one-after-this flag beside them, so
        # the last-column flag's next value is a flag (not a compare of j + 1 with the tile's end)
        cols_left = Signal(range(max(T, 2)))
        cols_nl = Signal()                       # cols_left == 1
        next_final = Mux(final_blk, t_left_1, final_tile)      # the tile after a tile's end is final
        fired = {                                # each flag if this cycle fires
            "col_last": Mux(col_last, kc_1, c_nl),
            "last_col": Mux(at_tile, Mux(next_final, one_last_col, T == 1), Mux(col_last, cols_nl, last_col)),
            "final_blk": Mux(at_tile, Mux(final_blk, nblk_1, b_nl), final_blk),
            "final_tile": Mux(at_blk, t_left_1, final_tile),
        }
        loaded = {"col_last": rec.kc == 1, "last_col": Mux(tiles_1, one_last_col, T == 1),
                  "final_blk": rec.nblk == 1, "final_tile": tiles_1}
        fired_s, loaded_s = {}, {}
        for k in fired:
            fired_s[k], loaded_s[k] = Signal(name=f"{k}_if_fire"), Signal(name=f"{k}_if_load")
            m.d.comb += [fired_s[k].eq(fired[k]), loaded_s[k].eq(loaded[k])]
        flags = {"col_last": col_last, "last_col": last_col, "final_blk": final_blk, "final_tile": final_tile}
        steps = [(at_tile, ("col_last", "last_col")), (at_blk, ("col_last", "last_col", "final_blk")),
                 (at_pass, ("col_last", "last_col", "final_blk", "final_tile"))]

        def next_value(reg, f, ld):
            return Mux(self.fire, f, Mux(load, ld, reg))
        cols_fire, cols_load = Signal.like(cols_left), Signal.like(cols_left)
        nl_fire, nl_load = Signal(), Signal()
        m.d.comb += [cols_fire.eq(Mux(at_tile, Mux(next_final, last_cols_m1, T - 1),
                                      Mux(col_last, cols_left - 1, cols_left))),
                     nl_fire.eq(Mux(at_tile, Mux(next_final, two_last_col, T == 2),
                                    Mux(col_last, cols_left == 2, cols_nl))),
                     cols_load.eq(Mux(tiles_1, last_cols_m1, T - 1)),
                     nl_load.eq(Mux(tiles_1, two_last_col, T == 2))]
        m.d.sync += [cols_left.eq(next_value(cols_left, cols_fire, cols_load)),
                     cols_nl.eq(next_value(cols_nl, nl_fire, nl_load)),
                     c_nl.eq(next_value(c_nl, Mux(col_last, kc_2, c_left == 2), rec.kc == 2)),
                     b_nl.eq(next_value(b_nl, Mux(at_tile, Mux(final_blk, nblk_2, b_left == 2), b_nl),
                                        rec.nblk == 2))]
        for k, reg in flags.items():
            m.d.sync += reg.eq(next_value(reg, fired_s[k], loaded_s[k]))
        for reg, ks in steps:
            f_all, l_all = Signal(name=f"{reg.name}_if_fire"), Signal(name=f"{reg.name}_if_load")
            m.d.comb += [f_all.eq(Cat(*(fired_s[k] for k in ks)).all()), l_all.eq(Cat(*(loaded_s[k] for k in ks)).all())]
            m.d.sync += reg.eq(next_value(reg, f_all, l_all))
        pass_end = at_pass
        m.d.comb += self.rows_valid.eq(Mux(brows < R, brows, R))
        if fpg > 1:
            pos = c[:exact_log2(fpg)]
            m.d.comb += [self.grp_first.eq(pos == 0), self.grp_last.eq(pos == fpg - 1), self.col_first.eq(c < fpg)]
        else:
            m.d.comb += [self.grp_first.eq(1), self.grp_last.eq(1), self.col_first.eq(c == 0)]
        m.d.comb += self.col_last.eq(col_last)
        need_q = self.int8 & last
        need_b = self.bias & first
        need_p = ~first
        m.d.comb += [self.mode.eq(Mux(last, Mux(self.int8, OutMode.INT8, OutMode.INT32), OUT_RAW)),
                     self.init.eq(Mux(need_p, INIT_PARTIAL, Mux(need_b, INIT_BIAS, INIT_NONE))),
                     self.flush.eq(pass_end & (~last | final)), self.line.eq(c)]

        # -- the weight line: ring slot of the column (offset j unless this is its last block) ----
        w_off = Mux(final_blk, 0, j)
        w_slot = Signal.like(w_old)
        m.d.comb += w_slot.eq(w_old + w_off)
        if G.line_bits:
            m.d.comb += self.w_addr.eq((w_slot << G.line_bits) | c[:G.line_bits])
        else:
            m.d.comb += self.w_addr.eq(w_slot)
        # the ring's column at w_off complete (cols_ahead > w_off) or being written (==), as
        # registered flags: the fire only selects among compares of flip-flops (below)
        # (and the column's lines written past c, registered the same way: below)
        w_gt, w_eq, lines_gt = Signal(), Signal(), Signal()
        w_ok = w_gt | (w_eq & lines_gt)
        m.d.comb += self.p_addr.eq((p_old << exact_log2(T)) | (j if T > 1 else 0))

        # -- the row block: ring slot (offset b unless this is its last tile) ---------------------
        a_off = Mux(final_tile, 0, b)
        m.d.comb += self.a_addr.eq((a_old + (a_off << self.stride_log) + c)[:abits])

        params_ok = ~(need_params & col_last) | (self.param_tiles != 0)
        partial_ok = ~(need_p & col_last) | self.partials
        credit_ok = ~col_last | self.credit

        if G.tlmm:
            E, gap = G.tlmm_entries, self._build_gap
            tables = Signal()
            hold = Signal(range(gap + 1))
            bl = Signal(range(max(G.kc_max, 2)))
            be = Signal(range(max(E, 2)))
            last_entry = be == E - 1
            last_step = last_entry & (bl == kc_m1)
            m.d.comb += [self.build.eq(have & ~tables & (self.act_ahead != 0)),
                         self.build_line.eq(bl), self.build_entry.eq(be)]
            with m.If(self.build):
                m.d.comb += self.a_addr.eq((a_old + bl)[:abits])
                m.d.sync += be.eq(Mux(last_entry, 0, be + 1))
                with m.If(last_entry):
                    m.d.sync += bl.eq(Mux(last_step, 0, bl + 1))
                with m.If(last_step):
                    m.d.sync += [tables.eq(1), hold.eq(gap - 1)]
                    m.d.comb += self.release.eq(1)
            with m.Elif(hold != 0):
                m.d.sync += hold.eq(hold - 1)
            inputs_ok = tables & (hold == 0)
        else:
            a_gt = Signal()                      # act_ahead > a_off, registered (below)
            inputs_ok = a_gt

        fire = self.fire
        m.d.comb += fire.eq(have & w_ok & inputs_ok & params_ok & partial_ok & credit_ok)

        # -- the rings' flags for the next cycle ----------------------------------------------------
        # Candidates from the flip-flops for each outcome of this cycle's fire: no column advance,
        # an advance inside the tile, the tile's last column (or no pass: offsets 0). A column or
        # block that arrives this cycle counts from the next one (a cycle of latency, the same
        # rate); the frees and offsets are this scheduler's own, so a flag never runs ahead.
        e_col = fire & col_last                  # the fire ends a column
        e_tile = fire & at_tile                  # ... the tile's last column
        e_blk = fire & at_blk                    # ... of the chunk's last row block
        e_pass = fire & at_pass                  # ... of the pass's last tile
        # (cols_ahead - 1 compared with 0 is cols_ahead compared with 1; j + 1 is a register)
        ca = self.cols_ahead
        gt_in = Mux(final_blk, ca > 1, ca > j_p1)           # after an advance inside the tile
        eq_in = Mux(final_blk, ca == 1, ca == j_p1)
        gt_wrap = Mux(final_blk, ca > 1, ca > 0)            # offset 0 at the tile's end
        eq_wrap = Mux(final_blk, ca == 1, ca == 0)
        gt_stay, eq_stay = ca > w_off, ca == w_off
        # each flag's next value: the fire (which arrives last) selects between candidates of
        # registers only (a fire needs a pass, so no pass means offset 0 and no advance)
        def by_fire(col_end, tile_end, stay, idle):
            return Mux(fire, Mux(col_last, Mux(at_tile, tile_end, col_end), stay), Mux(have, stay, idle))
        m.d.sync += [w_gt.eq(by_fire(gt_in, gt_wrap, gt_stay, ca > 0)),
                     w_eq.eq(by_fire(eq_in, eq_wrap, eq_stay, ca == 0))]
        # the column's lines: from this cycle's count (one cycle late for a line written now; the
        # count and cols_ahead are one snapshot, and a column's count only grows until it completes)
        cl = self.cur_lines
        m.d.sync += lines_gt.eq(Mux(fire, Mux(col_last, cl > 0, cl > c_p1), Mux(have, cl > c, cl > 0)))
        if not G.tlmm:
            aa = self.act_ahead
            # the tile's last column: the block is released on the pass's last tile; the next
            # offset is 0 after the last row block or on the last tile, else b + 1
            a_wrap = Mux(final_tile, aa > 1, Mux(final_blk, aa > 0, aa > b_p1))
            a_stay = aa > a_off
            m.d.sync += a_gt.eq(Mux(fire, Mux(col_last & at_tile, a_wrap, a_stay), Mux(have, a_stay, aa > 0)))
        m.d.comb += [self.free_col.eq(fire & col_last & final_blk),
                     self.free_params.eq(e_blk & need_params),
                     self.claim.eq(fire & col_last & need_p)]
        if not G.tlmm:
            m.d.comb += self.release.eq(e_tile & final_tile)

        with m.If(fire):
            m.d.sync += [c.eq(Mux(col_last, 0, c_p1)), c_p1.eq(Mux(col_last, 1, c_p1 + 1)),
                         c_left.eq(Mux(col_last, kc_m1, c_left - 1))]
        with m.If(e_col):
            m.d.sync += [j.eq(Mux(last_col, 0, j_p1)), j_p1.eq(Mux(last_col, 1, j_p1 + 1))]
        with m.If(e_tile):
            m.d.sync += [b.eq(Mux(final_blk, 0, b_p1)), b_p1.eq(Mux(final_blk, 1, b_p1 + 1)),
                         brows.eq(Mux(final_blk, rows, brows - R)),
                         b_left.eq(Mux(final_blk, nblk_m1, b_left - 1))]
        with m.If(e_blk):
            m.d.sync += [t_left.eq(t_left - 1), t_left_1.eq(t_left == 2)]
        with m.If(e_pass):
            m.d.sync += have.eq(0)
            if G.tlmm:
                m.d.sync += tables.eq(0)
        with m.If(self.free_col):
            m.d.sync += w_old.eq(w_old + 1)
        with m.If(self.release):
            m.d.sync += a_old.eq(a_old + (1 << self.stride_log))
        with m.If(self.free_params):
            m.d.sync += p_old.eq(~p_old)
        with m.If(self.start):
            m.d.sync += [have.eq(0), w_old.eq(0), a_old.eq(0), p_old.eq(0), w_gt.eq(0), w_eq.eq(0)]
            if not G.tlmm:
                m.d.sync += a_gt.eq(0)
            if G.tlmm:
                m.d.sync += [tables.eq(0), hold.eq(0), bl.eq(0), be.eq(0)]
        return m
