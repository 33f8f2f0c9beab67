"""Ternary table-lookup matmul (TLMM) array: the ``arch: tlmm`` replacement for :class:`MacArray`.

The golden model and the index mapping are in :mod:`hbmforge.numerics.tlmm`. Each fire's
``L`` lanes split into spans of ``min(L, G)`` lanes (one scale group) and each span into
``ceil(span / g)`` *banks* of ``g`` lanes (the last one narrower when ``g`` does not
divide the span). A bank owns one memory: word ``line * E_b + e`` holds, for every row,
entry ``e`` of the half table of that bank's activations in line ``line`` (``E_b =
(3^w + 1) / 2`` for a bank of ``w`` lanes). All ``R`` rows share the address (it only
depends on the weights), so a word is ``R * entry_bits`` wide and one read serves every
row.

* **Build** (once per row block, before its first fire): ``build`` with ``build_line``
  and ``build_entry`` asks for entry ``e`` of line ``l``; the activations of that line
  arrive on ``x`` one cycle later (the activation buffer's synchronous read). Each bank
  adds its ``w`` activations with the constant trit pattern of ``e`` (``+x``, ``-x`` or 0
  per lane) and writes the word two cycles after the request.
* **Fire**: ``valid`` with ``w`` (ternary lanes), ``line`` and ``tag``. Per bank the
  lanes' trits give ``u = sum t_i 3^i``; the bank reads entry ``|u|`` of ``line``,
  negates it when ``u < 0``, and an adder tree per span and row sums the banks.
  ``sums``, ``o_valid`` and ``o_tag`` follow ``latency`` cycles later, exactly as
  :class:`MacArray` (same sum width), so the accumulators behind it are unchanged.

A fire may read a table ``build_gap`` cycles after the last build request of its line at
the earliest, and a build request may follow the last fire of the previous row block in
the next cycle (its write lands after that fire's read).

Weight lanes may be any signed width: a lane reads as +1 when its sign bit is clear and
bit 0 set, -1 when both are set, 0 otherwise (the 2-bit code ``10`` reads as 0).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...numerics.tlmm import TlmmShape, entry_bits, table_entries, trits_of
from ..params import require_positive_ints, require_powers_of_two
from .array import wrap_tree
from .pipe import delay

__all__ = ["TlmmArray", "tlmm_array_latency"]


def _tree_levels(n: int) -> int:
    return (n - 1).bit_length()


def tlmm_array_latency(*, lanes: int, group_size: int, g: int, levels_per_stage: int = 2) -> int:
    """Cycles from a fire to its sums: fire register, table read, sign register, adder tree."""
    span = min(lanes, group_size)
    levels = _tree_levels(-(-span // g))
    return 3 + (-(-levels // levels_per_stage) if levels else 0)


def _times(value, k: int):
    """``value * k`` for a constant ``k`` as shifted adds (synthesis would spend a DSP on ``*``)."""
    terms = [value << i for i in range(k.bit_length()) if k >> i & 1]
    return sum(terms[1:], terms[0])


class TlmmArray(wiring.Component):
    """``R`` rows x ``L`` lanes of int8 x ternary, by half-table lookup (see the module docstring)."""

    BUILD_GAP = 2

    def __init__(self, *, rows: int, lanes: int, group_size: int, g: int, max_k: int, weight_shape,
                 tag_layout, levels_per_stage: int = 2):
        require_positive_ints(rows=rows, lanes=lanes, group_size=group_size, max_k=max_k,
                              levels_per_stage=levels_per_stage)
        require_powers_of_two(lanes=lanes, group_size=group_size)
        if not isinstance(g, int) or not 2 <= g <= 5:
            raise ValueError(f"g (tlmm_group) must be an int in [2, 5], got {g!r}")
        if max_k % lanes:
            raise ValueError(f"max_k {max_k} must be a multiple of lanes {lanes}")
        if weight_shape.width < 2 or not weight_shape.signed:
            raise ValueError(f"weight_shape must be signed and at least 2 bits, got {weight_shape!r}")
        self._shape = TlmmShape(rows=rows, lanes=lanes, group_size=group_size, g=g, max_k=max_k)
        self._rows, self._lanes, self._group, self._g = rows, lanes, group_size, g
        self._span = min(lanes, group_size)
        self._groups = max(1, lanes // group_size)
        self._lines = max_k // lanes
        self._entries = table_entries(g)
        self._entry_bits = entry_bits(g)
        self._weight_shape = weight_shape
        self._levels_per_stage = levels_per_stage
        self._sum_bits = 8 + weight_shape.width + (self._span.bit_length() - 1)
        self._latency = tlmm_array_latency(lanes=lanes, group_size=group_size, g=g,
                                           levels_per_stage=levels_per_stage)
        super().__init__({
            "build": In(1),
            "build_line": In(range(self._lines)),
            "build_entry": In(range(self._entries)),
            "x": In(data.ArrayLayout(data.ArrayLayout(unsigned(8), lanes), rows)),
            "valid": In(1),
            "w": In(data.ArrayLayout(weight_shape, lanes)),
            "line": In(range(self._lines)),
            "tag": In(tag_layout),
            "o_valid": Out(1),
            "sums": Out(data.ArrayLayout(data.ArrayLayout(signed(self._sum_bits), self._groups), rows)),
            "o_tag": Out(tag_layout),
        })

    @property
    def shape(self) -> TlmmShape:
        """Table sizes (:class:`hbmforge.numerics.tlmm.TlmmShape`)."""
        return self._shape

    @property
    def entries(self) -> int:
        """Build steps per line: ``(3^g + 1) / 2``."""
        return self._entries

    @property
    def groups_per_fire(self) -> int:
        return self._groups

    @property
    def sum_shape(self):
        return signed(self._sum_bits)

    @property
    def latency(self) -> int:
        """Cycles from the fire (``valid``/``w``/``line``) to ``o_valid``/``sums``."""
        return self._latency

    @property
    def build_gap(self) -> int:
        """Least cycles from the last build request to a fire that reads its entry."""
        return self.BUILD_GAP

    def elaborate(self, platform):
        m = Module()
        R, g, sb, eb = self._rows, self._g, self._sum_bits, self._entry_bits
        lps = self._levels_per_stage
        ww = self._weight_shape.width
        banks = self._shape.banks

        # -- build: request -> (x, pattern) -> entries register -> write -------------------
        b_valid = delay(m, self.build, 1, name="b_valid")
        b_line = delay(m, self.build_line, 1, name="b_line", reset_less=True)
        b_entry = delay(m, self.build_entry, 1, name="b_entry", reset_less=True)
        p_pos = Signal(g, name="pat_pos", reset_less=True)      # trit pattern of the requested entry
        p_neg = Signal(g, name="pat_neg", reset_less=True)
        with m.Switch(self.build_entry):
            for e in range(self._entries):
                with m.Case(e):
                    t = trits_of(e, g)
                    m.d.sync += [p_pos.eq(sum(1 << i for i in range(g) if t[i] > 0)),
                                 p_neg.eq(sum(1 << i for i in range(g) if t[i] < 0))]

        # x arrives as x + 128: flipping bit 7 gives the signed value.
        def act(r, lane):
            xo = self.x[r][lane]
            return Cat(xo[:7], ~xo[7]).as_signed()

        # -- fire: codes -> (address, sign) -> entry -> signed entry -> trees ---------------
        f_w = delay(m, self.w, 1, name="f_w", reset_less=True)
        f_line = delay(m, self.line, 1, name="f_line", reset_less=True)

        signed_entries = [[] for _ in range(R)]       # per row: (span, value) of every bank
        for b, (l0, width) in enumerate(banks):
            ent = table_entries(width)
            mem = Memory(shape=unsigned(R * eb), depth=self._lines * ent, init=[])
            m.submodules[f"table{b}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()

            # build side
            w_addr = Signal.like(wp.addr, name=f"bw_addr{b}")
            w_data = Signal(R * eb, name=f"bw_data{b}", reset_less=True)
            w_en = Signal(name=f"bw_en{b}")
            terms_rows = []
            for r in range(R):
                terms = []
                for i in range(width):
                    x = act(r, l0 + i)
                    terms.append(Mux(p_pos[i], x, Mux(p_neg[i], -x, 0)))
                total = Signal(signed(eb), name=f"be{r}_{b}")
                m.d.comb += total.eq(sum(terms[1:], terms[0]))
                terms_rows.append(total)
            m.d.sync += [w_addr.eq(_times(b_line, ent) + b_entry), w_data.eq(Cat(*terms_rows)),
                         w_en.eq(b_valid & (b_entry < ent))]
            m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en)]

            # fire side: u = P - N with P (N) the sum of 3^i over the +1 (-1) lanes
            pos = [~f_w[l0 + i][ww - 1] & f_w[l0 + i][0] for i in range(width)]
            neg = [f_w[l0 + i][ww - 1] & f_w[l0 + i][0] for i in range(width)]
            psum = sum(Mux(pos[i], 3 ** i, 0) for i in range(width))
            nsum = sum(Mux(neg[i], 3 ** i, 0) for i in range(width))
            flip = Signal(name=f"neg{b}")
            idx = Signal(range(ent), name=f"idx{b}")
            m.d.comb += [flip.eq(psum < nsum), idx.eq(Mux(flip, nsum - psum, psum - nsum))]
            m.d.comb += rp.addr.eq(_times(f_line, ent) + idx)
            r_flip = delay(m, flip, 1, name=f"r_neg{b}", reset_less=True)
            for r in range(R):
                e = rp.data[r * eb:(r + 1) * eb].as_signed()
                v = Signal(signed(sb), name=f"s{r}_{b}", reset_less=True)
                m.d.sync += v.eq(Mux(r_flip, -e, e))
                signed_entries[r].append((l0 // self._span, v))

        for r in range(R):
            for j in range(self._groups):
                vals = [v for span, v in signed_entries[r] if span == j]
                root, stages = wrap_tree(m, vals, bits=sb, levels_per_stage=lps, name=f"t{r}_{j}")
                assert 3 + stages == self._latency
                m.d.comb += self.sums[r][j].eq(root)

        valid = delay(m, self.valid, self._latency, name="valid")
        tag = delay(m, self.tag, self._latency, name="tag", reset_less=True)
        m.d.comb += [self.o_valid.eq(valid), self.o_tag.eq(tag)]
        return m
