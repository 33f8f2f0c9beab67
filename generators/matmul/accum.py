"""Group and column accumulation: exact group partials times their scale mantissas.

``part[m, n, g]`` (exact, ``group_bits``) collects over ``G / L`` fires when
``L < G`` and comes straight from the array when ``L >= G`` (then each fire
carries ``L / G`` groups and as many scales). Each finished group partial is
multiplied by its unsigned scale mantissa and added into the column's
``acc_bits`` accumulator; the last group of a column releases the ``R`` sums.

With ``pairs`` (the 2:4 pair fire, :class:`~.array.MacArray`) the array's sums are half groups:
``2 L / G`` partials a fire, each with its own scale (the caller gives a dense fire's group scale
to both its halves). A fire with ``pair`` set holds two columns, partial ``2j + h`` being column
``2p + h``'s group ``j``: ``acc`` then has ``2 R`` rows, row ``h R + r`` being column ``2p + h``'s
(rows ``R ..`` are 0 for a dense fire).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..params import require_positive_ints
from .pipe import adder_tree, delay

__all__ = ["GroupAccumulator", "accum_latency"]


def accum_tree_stages(groups: int, levels_per_stage: int, pairs: bool) -> int:
    """Register stages of the tree that sums one fire's scaled partials (of each column half with
    ``pairs``)."""
    tree = (groups // (2 if pairs else 1)).bit_length() - 1
    return -(-tree // levels_per_stage) if tree else 0


def accum_latency(*, groups: int, levels_per_stage: int, pairs: bool = False) -> int:
    """:attr:`GroupAccumulator.latency` from its parameters (the pair fire adds the halves' join)."""
    return 3 + accum_tree_stages(groups, levels_per_stage, pairs) + int(pairs)


class GroupAccumulator(wiring.Component):
    """Per-row group partials -> scaled -> column accumulators (a registered pipeline).

    Inputs per fire: ``sums[r][j]`` (``groups`` partial sums of ``sum_shape``),
    ``grp_first``/``grp_last`` (the fire starts/ends its group), ``col_first``
    (the group is the column's first), ``col_last`` (the fire ends the column),
    ``scales[j]`` (valid with ``grp_last``) and a pass-through ``tag``.
    ``o_valid`` pulses with ``acc`` = the column's ``R`` sums, ``latency``
    cycles after the column's last fire.
    """

    def __init__(self, *, rows: int, groups: int, sum_shape, group_bits: int, scale_bits: int,
                 acc_bits: int, tag_layout, fires_per_group: int = 1, levels_per_stage: int = 2,
                 pairs: bool = False):
        require_positive_ints(rows=rows, groups=groups, fires_per_group=fires_per_group, group_bits=group_bits, scale_bits=scale_bits, acc_bits=acc_bits)
        if not isinstance(pairs, bool):
            raise TypeError(f"pairs must be True or False, got {pairs!r}")
        if pairs and (groups < 2 or fires_per_group > 1):
            raise ValueError(f"pairs needs at least two half-group partials a fire and one fire per group, "
                             f"got groups={groups}, fires_per_group={fires_per_group}")
        if groups > 1 and fires_per_group > 1:
            raise ValueError(f"a fire holds several groups ({groups}) or a group spans several fires "
                             f"({fires_per_group}), not both")
        if groups & (groups - 1):
            raise ValueError(f"groups must be a power of two, got {groups}")
        if sum_shape.width > group_bits:
            raise ValueError(f"group_bits {group_bits} is narrower than the array sums ({sum_shape.width})")
        self._rows, self._groups, self._fires_per_group = rows, groups, fires_per_group
        self._group_bits, self._scale_bits, self._acc_bits = group_bits, scale_bits, acc_bits
        self._levels_per_stage = levels_per_stage
        self._pairs = pairs
        self._tree_stages = accum_tree_stages(groups, levels_per_stage, pairs)
        self._latency = accum_latency(groups=groups, levels_per_stage=levels_per_stage, pairs=pairs)
        super().__init__({
            "valid": In(1),
            "pair": In(1),
            "sums": In(data.ArrayLayout(data.ArrayLayout(sum_shape, groups), rows)),
            "grp_first": In(1),
            "grp_last": In(1),
            "col_first": In(1),
            "col_last": In(1),
            "scales": In(data.ArrayLayout(unsigned(scale_bits), groups)),
            "tag": In(tag_layout),
            "o_valid": Out(1),
            "acc": Out(data.ArrayLayout(signed(acc_bits), rows * (2 if pairs else 1))),
            "o_tag": Out(tag_layout),
        })

    @property
    def latency(self) -> int:
        """Cycles from a column's last fire at the inputs to ``o_valid``."""
        return self._latency

    def elaborate(self, platform):
        m = Module()
        R, NG = self._rows, self._groups
        gb, sb, ab = self._group_bits, self._scale_bits, self._acc_bits

        # A: group partials (accumulated over fires when a group spans several).
        a_valid = Signal()
        m.d.sync += a_valid.eq(self.valid & self.grp_last)
        # with a reset, so Yosys does not fold this register into the tag's shift register (an SRL's
        # clock-to-out before the scale multiplier's unregistered input would not fit one cycle)
        a_scales = delay(m, self.scales, 1, name="a_scales")
        a_first = delay(m, self.col_first, 1, name="a_col_first")
        a_last = delay(m, self.col_last, 1, name="a_col_last")
        a_tag = delay(m, self.tag, 1, name="a_tag", reset_less=True)
        parts = [[Signal(signed(gb), name=f"part{r}_{j}", reset_less=True) for j in range(NG)]
                 for r in range(R)]
        for r in range(R):
            for j in range(NG):
                if self._fires_per_group == 1:
                    nxt = self.sums[r][j]
                else:
                    g = Signal(signed(gb), name=f"grp{r}_{j}", reset_less=True)
                    nxt = Mux(self.grp_first, 0, g) + self.sums[r][j]
                    with m.If(self.valid):
                        m.d.sync += g.eq(nxt)
                with m.If(self.valid & self.grp_last):
                    m.d.sync += parts[r][j].eq(nxt)

        # B: scale.
        b_valid = delay(m, a_valid, 1, name="b_valid")
        b_first = delay(m, a_first, 1, name="b_col_first")
        b_last = delay(m, a_last, 1, name="b_col_last")
        b_tag = delay(m, a_tag, 1, name="b_tag", reset_less=True)
        scaled = []
        for r in range(R):
            row = []
            for j in range(NG):
                s = Signal(signed(gb + sb), name=f"scaled{r}_{j}", reset_less=True)
                with m.If(a_valid):
                    m.d.sync += s.eq(parts[r][j] * a_scales[j])
                row.append(s)
            scaled.append(row)

        # C: sum the groups of one fire (L > G only); with pairs each column half on its own, then
        # (C2) the halves joined for a dense fire.
        t = self._tree_stages
        c_valid = delay(m, b_valid, t, name="c_valid")
        c_first = delay(m, b_first, t, name="c_col_first")
        c_last = delay(m, b_last, t, name="c_col_last")
        c_tag = delay(m, b_tag, t, name="c_tag", reset_less=True)
        lps = self._levels_per_stage
        if not self._pairs:
            halves = [[adder_tree(m, scaled[r], levels_per_stage=lps, name=f"ss{r}")[0] for r in range(R)]]
        else:
            halves = [[adder_tree(m, scaled[r][h::2], levels_per_stage=lps, name=f"ss{r}_{h}")[0]
                       for r in range(R)] for h in range(2)]
            b_pair = delay(m, delay(m, self.pair, 2, name="a_pair"), t, name="c_pair")
            joined = [Signal(signed(ab), name=f"col{r}", reset_less=True) for r in range(R)]
            odd = [Signal(signed(ab), name=f"col_odd{r}", reset_less=True) for r in range(R)]
            for r in range(R):
                lo, hi = halves[0][r], halves[1][r]
                m.d.sync += [joined[r].eq(Mux(b_pair, lo, lo + hi)), odd[r].eq(Mux(b_pair, hi, 0))]
            halves = [joined, odd]
            c_valid = delay(m, c_valid, 1, name="c2_valid")
            c_first = delay(m, c_first, 1, name="c2_col_first")
            c_last = delay(m, c_last, 1, name="c2_col_last")
            c_tag = delay(m, c_tag, 1, name="c2_tag", reset_less=True)

        # D: column accumulators (one per row and column half).
        for h, ssum in enumerate(halves):
            for r in range(R):
                acc = Signal(signed(ab), name=f"acc{r}" + ("_odd" if h else ""), reset_less=True)
                nxt = Mux(c_first, 0, acc) + ssum[r]
                with m.If(c_valid):
                    m.d.sync += acc.eq(nxt)
                with m.If(c_valid & c_last):
                    m.d.sync += self.acc[h * R + r].eq(nxt)
        m.d.sync += [self.o_valid.eq(c_valid & c_last), self.o_tag.eq(c_tag)]
        return m
