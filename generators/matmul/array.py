"""The R x L multiply array with per-group adder trees.

One fire multiplies ``L`` weights of one output column with the matching ``L``
activations of each of ``R`` rows and sums the products of each weight group
(``min(L, G)`` lanes): ``max(1, L / G)`` exact partial sums per row.

Arithmetic is modulo ``2^sum_bits`` (two's complement wrap-around), which is
exact because every final group sum fits in ``sum_bits`` signed bits. The
activations arrive offset by +128 (unsigned ``x + 128``, the sign bit flipped
when they were stored), so each product is unsigned x signed and only the
weights need sign extension, once per lane rather than once per row:

    sum_l x[l] * w[l] = sum_l (x[l] + 128) * w[l] - 128 * sum_l w[l]

The weight sum is one more adder tree shared by all rows. This keeps every
operation a plain add or multiply of at most 32 bits, which synthesizes to the
same multipliers and simulates several times faster than sign-extending
adder trees.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..lutmul import LUT_PRODUCT_MAX_BITS, lut_product
from ..params import require_positive_ints, require_powers_of_two
from .pipe import delay

__all__ = ["MacArray", "product", "pair_product", "wrap_tree", "LANE_FORMATS", "array_latency"]


def array_latency(*, lanes: int, group_size: int, levels_per_stage: int, pairs: bool = False,
                  folded: bool = False) -> int:
    """:attr:`MacArray.latency` from its parameters: the fire register, the activation register
    (the pair fire's select), the product register and the tree stages (``folded``: the dense pair
    fire's LUT product, two partial sums a lane, so the trees have twice the leaves)."""
    span = min(lanes, group_size) // (2 if pairs else 1)
    tree_levels = (span * (2 if folded else 1)).bit_length() - 1
    return 3 + (-(-tree_levels // levels_per_stage) if tree_levels else 0)

LANE_FORMATS = ("int", "int4", "int2", "ternary")


def product(x, w, fmt: str, bits: int):
    """``x * w`` modulo ``2^bits`` for unsigned ``x`` and a lane ``w`` of format ``fmt``.

    ``w`` is the weight sign-extended to at least 2 bits (its bits 0 and 1 are the 2-bit
    code for int2/ternary lanes, bits 0 .. 3 the 4-bit one for int4 lanes). ``"int"``: a
    multiplier (a DSP); ``"int4"``: shift-and-add in LUTs (:func:`~..lutmul.lut_product`);
    ``"int2"``: select among 0, x, -x, -2x (two muxes and a subtract); ``"ternary"``: select
    among 0, x, -x.
    """
    if fmt == "int":
        v = x * w
    elif fmt == "int4":
        v = lut_product(x, w, 4)
    elif fmt == "int2":
        v = Mux(w[0], x, 0) - Mux(w[1], x << 1, 0)
    elif fmt == "ternary":
        v = Mux(w[0], Mux(w[1], -x, x), 0)
    else:
        raise ValueError(f"lane format must be one of {LANE_FORMATS}, got {fmt!r}")
    return v[:bits] if len(v) > bits else v         # a narrower signed value sign-extends on assignment


def pair_product(x, x1, code, w, dense, bits: int):
    """The dense pair fire's lane on multiplier lanes (``"int"``): ``x * w``, or when ``dense`` is
    set ``x * code[0:2] + x1 * code[2:4]`` (two int2 weights, selects beside the multiplier),
    modulo ``2^bits``. (LUT lanes share one shift-and-add instead: :func:`_folded_product`.)"""
    # a signed sum of two int2 products (narrower than ``bits``: it sign-extends on assignment)
    two = product(x, code[0:2], "int2", bits) + product(x1, code[2:4], "int2", bits)
    return Mux(dense, two, product(x, w, "int", bits))


def _neg_weight(code: int, pair: int, dense: int, offset: int = 0) -> int:
    """The folded lane's weight-sum entry (in 128s) for a 4-bit lane code: ``-w`` (the sum of a
    dense pair's two weights), less ``offset`` in a dense pair fire (see :class:`MacArray`)."""
    def s2(v):
        return v - 4 if v & 2 else v
    if not pair:
        return -(code - 16 if code & 8 else code)
    if not dense:
        return -s2(code & 3)
    return -(s2(code & 3) + s2(code >> 2)) - offset


def _folded_product(x, x1, code, dense, bits: int):
    """The dense pair fire's LUT lane: ``x * code`` (a 4-bit weight) or, when ``dense`` is set,
    ``x * code[0:2] + x1 * code[2:4] + 511`` (two int2 weights), modulo ``2^bits``, as two partial
    sums (the low terms' and the high terms'), which the tree adds: the four term muxes and both
    adds in one stage were 3.4 ns (4 LUTs + 1.5 CARRY8) in u280_llm512's matmul.

    One shift-and-add serves both modes (Yosys, 64 lanes: 11 LUTs a lane more than
    :func:`~..lutmul.lut_product` alone): the high terms take ``x1`` and ``2 x1`` in place of
    ``4x`` and ``8x``, and the ``-2x`` of the first int2 weight is ``511 - 2x``, the 9-bit
    complement of its term (an XOR with the mode, in the adder's LUTs), which leaves the same 511 in
    every lane whatever its weights: :class:`MacArray` takes it out through the weight sums."""
    t0 = Mux(code[0], x, 0)
    t1 = Mux(code[1], Cat(Const(0, 1), x), 0) ^ Cat(*([dense] * 9))
    t2 = Mux(code[2], Mux(dense, x1, x << 2), 0)
    t3 = Mux(code[3], Mux(dense, x1 << 1, x << 3), 0)
    return tuple(v[:bits] if len(v) > bits else v for v in (t0 + t1, t2 - t3))


def wrap_tree(m: Module, values: list, *, bits: int, levels_per_stage: int, name: str) -> tuple:
    """Sum ``values`` (any count) modulo ``2^bits``; register every ``levels_per_stage`` levels and the root.

    A sum narrower than ``bits`` is kept exact at its own width (one bit more than its widest
    operand), so a tree of narrow signed values gets adders as narrow as its values, not ``bits``
    wide at every level (Yosys sizes each adder by its operands)."""
    def add(a, b):
        v = a + b
        return v if len(v) <= bits else v[:bits]

    stages = level = 0
    while len(values) > 1:
        nxt = [add(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
        level += 1
        if level % levels_per_stage == 0 or len(values) == 1:
            regs = []
            for i, v in enumerate(values):
                r = Signal(v.shape(), name=f"{name}_l{level}_{i}", reset_less=True)
                m.d.sync += r.eq(v)
                regs.append(r)
            values = regs
            stages += 1
    return values[0], stages


class MacArray(wiring.Component):
    """``R`` rows x ``L`` lanes of int8 x int``wbits`` products, summed per weight group.

    Inputs: ``valid``, ``w`` (signed weight lanes) and ``tag`` in the fire
    cycle; ``x`` (activation lanes stored as ``x + 128``) one cycle later, as a
    synchronous memory delivers them. ``sums[r][j]`` is the exact sum over lanes
    ``j*G' .. (j+1)*G' - 1`` of row ``r`` (``G' = min(L, G)``), ``latency``
    cycles after the fire, with ``o_valid`` and ``o_tag``.

    ``lane_format`` picks the product (:func:`product`): ``"int"`` (a multiplier),
    ``"int4"`` (3- or 4-bit lanes, shift-and-add in LUTs), ``"int2"`` (2-bit lanes in
    [-2, 1]) or ``"ternary"`` (2-bit lanes in [-1, 1] only, e.g. an engine whose only
    format is ternary). Default: ``"int2"`` for 2-bit lanes, ``"int"`` otherwise.

    ``pairs``: the 2:4 pair fire (docs/engines/matmul.md, "Pair fire"). A fire with ``pair`` set
    reads each lane as a *slot*: a 2-bit int2 value (bits 0-1) and a 2-bit index (bits 2-3).
    Slots ``4q .. 4q + 3`` serve the 4 activations ``x[4q .. 4q + 3]``: slots ``4q + 2h`` and
    ``4q + 2h + 1`` hold column ``h``'s two non-zeros of that group of 4 and multiply ``x[4q +
    index]``, so the two columns' ``L`` non-zeros go in one fire and the zeros are skipped. A
    dense fire reads lane ``l`` as ``x[l]`` through the same 4:1 select (its index is ``l mod
    4``). The trees sum half groups, entry ``2j + h`` of a row being lanes ``jG .. (j+1)G - 1``
    whose ``(l mod 4) // 2 == h``: column ``h``'s group ``j`` in a pair fire, and entries ``2j``
    plus ``2j + 1`` a dense fire's group ``j``. One more register stage (the select) than without
    ``pairs``.

    ``dense_pairs`` (with ``pairs``): a pair fire with ``dense`` set reads slot ``4q + 2h + e`` as
    two int2 weights of column ``h``, ``k = 4q + 2e`` (bits 0-1) and ``k + 1`` (bits 2-3), and
    sums ``x[k] * w_k + x[k + 1] * w_(k+1)`` (the select takes ``x[4q + 2e]``; ``x[4q + 2e + 1]``
    is wired beside it): two dense columns of ``L`` weights each in one fire, the same half-group
    entries (:func:`~.unpack.dense_pair_slot_lanes` lays the line out so).
    """

    def __init__(self, *, rows: int, lanes: int, group_size: int, weight_shape, tag_layout,
                 levels_per_stage: int = 2, lane_format: str | None = None, pairs: bool = False,
                 dense_pairs: bool = False):
        require_positive_ints(rows=rows, lanes=lanes, group_size=group_size, levels_per_stage=levels_per_stage)
        require_powers_of_two(lanes=lanes, group_size=group_size)
        width = weight_shape.width
        if not isinstance(pairs, bool):
            raise TypeError(f"pairs must be True or False, got {pairs!r}")
        if pairs and (width < 4 or group_size < 8 or lanes < group_size):
            raise ValueError(f"pairs needs weight lanes of at least 4 bits (a 2-bit value and a 2-bit index), "
                             f"group_size >= 8 and lanes >= group_size, got {weight_shape!r}, {group_size}, {lanes}")
        if not isinstance(dense_pairs, bool):
            raise TypeError(f"dense_pairs must be True or False, got {dense_pairs!r}")
        if dense_pairs and not pairs:
            raise ValueError("dense_pairs needs pairs (the pair fire's activation select and half-group trees)")
        if lane_format is None:
            lane_format = "int2" if width == 2 else "int"
        if lane_format not in LANE_FORMATS:
            raise ValueError(f"lane_format must be one of {LANE_FORMATS}, got {lane_format!r}")
        if lane_format in ("int2", "ternary") and width != 2:
            raise ValueError(f"lane_format {lane_format!r} needs 2-bit weight lanes, got {weight_shape!r}")
        if lane_format == "int4" and not 2 <= width <= LUT_PRODUCT_MAX_BITS:
            raise ValueError(f"lane_format 'int4' needs 2- to 4-bit weight lanes, got {weight_shape!r}")
        self._lane_format = lane_format
        self._rows, self._lanes, self._group = rows, lanes, group_size
        if dense_pairs and lane_format not in ("int", "int4"):
            raise ValueError(f"dense_pairs needs lane format 'int' or 'int4', got {lane_format!r}")
        self._pairs = pairs
        self._dense_pairs = dense_pairs
        # lanes per tree (a group, or half a group for the pair fire) and trees per row
        self._span = min(lanes, group_size) // (2 if pairs else 1)
        self._groups = lanes // self._span
        self._levels_per_stage = levels_per_stage
        self._weight_shape = weight_shape
        self._sum_bits = 8 + weight_shape.width + (self._span.bit_length() - 1)
        self._folded = dense_pairs and lane_format == "int4"
        self._latency = array_latency(lanes=lanes, group_size=group_size, levels_per_stage=levels_per_stage,
                                      pairs=pairs, folded=self._folded)
        super().__init__({
            "valid": In(1),
            "pair": In(1),
            "dense": In(1),
            "w": In(data.ArrayLayout(weight_shape, lanes)),
            "x": In(data.ArrayLayout(data.ArrayLayout(unsigned(8), lanes), rows)),
            "tag": In(tag_layout),
            "o_valid": Out(1),
            "sums": Out(data.ArrayLayout(data.ArrayLayout(signed(self._sum_bits), self._groups), rows)),
            "o_tag": Out(tag_layout),
        })

    @property
    def lane_format(self) -> str:
        return self._lane_format

    @property
    def groups_per_fire(self) -> int:
        """Tree sums per row: groups, or half groups with ``pairs``."""
        return self._groups

    @property
    def pairs(self) -> bool:
        return self._pairs

    def _tree_lanes(self, j: int) -> list:
        """The lanes tree ``j`` sums: a group, or with ``pairs`` half a group (see the class docstring)."""
        if not self._pairs:
            return list(range(j * self._span, (j + 1) * self._span))
        g, h = divmod(j, 2)
        group = 2 * self._span
        return [l for l in range(g * group, (g + 1) * group) if (l % 4) // 2 == h]

    @property
    def sum_shape(self):
        return signed(self._sum_bits)

    @property
    def latency(self) -> int:
        """Cycles from the fire (``valid``/``w``) to ``o_valid``/``sums``."""
        return self._latency

    def elaborate(self, platform):
        m = Module()
        R, L, span, sb = self._rows, self._lanes, self._span, self._sum_bits
        ww = self._weight_shape.width
        lps = self._levels_per_stage

        # Fire register: weights sign-extended to sum_bits by arithmetic, w = (w + s mod 2s) - s
        # with s = 2^(ww-1), as unsigned adds: two adds per lane instead of one operation per
        # replicated sign bit. A pair fire's lane is a 2-bit value (the same with ww = 2) and an index.
        we = [None] * L

        def extend(w, bits):
            flip = 1 << (bits - 1)
            return ((w[:bits].as_unsigned() + flip)[:bits] + ((1 << sb) - flip))[:sb]

        dp = self._dense_pairs
        # the dense pair fire on LUT products: one shift-and-add for both modes (see _folded_product)
        folded = self._folded
        dense = self.pair & self.dense if dp else 0      # a job constant, as pair is
        code = [Signal(4, name=f"wc{l}", reset_less=True) for l in range(L)] if dp else None
        firsts = {self._tree_lanes(j)[0] for j in range(self._groups)}
        for l in range(L):
            w = self.w[l]
            if folded:
                # the weight negated, narrow (see below), and the product's code
                u = w.as_unsigned()
                v4, v0 = w[:4].as_signed(), u[:2].as_signed()
                # a table of the 6 bits (a LUT6 per bit), not small adders on carry chains; the
                # first lane of each tree also takes the 4 x span of the trees' 511 x span
                first = l in firsts
                offset = 4 * self._span if first else 0
                table = [_neg_weight(i & 15, (i >> 4) & 1, i >> 5, offset) for i in range(64)]
                neg = Signal(signed(max(5, (offset + 8).bit_length() + 1)), name=f"nw{l}", reset_less=True)
                m.d.sync += [neg.eq(Array(table)[Cat(u[:4], self.pair, self.dense)]),
                             code[l].eq(Mux(dense, u[:4], Mux(self.pair, v0, v4)[:4]))]
                we[l] = neg
                continue
            we[l] = Signal(sb, name=f"we{l}", reset_less=True)
            wide = extend(w, ww)
            if self._pairs:
                # a dense pair lane's two int2 weights enter the weight sum as their sum
                two = extend(w, 2)
                if dp:
                    two = Mux(self.dense, (two + extend(w.as_unsigned()[2:4], 2))[:sb], two)
                wide = Mux(self.pair, two, wide)
            m.d.sync += we[l].eq(wide)
            if dp:
                # the product's 4-bit code: the two int2 weights side by side, else the weight's low bits
                m.d.sync += code[l].eq(Mux(dense, w.as_unsigned()[:4], wide[:4]))
        # what the weight-sum trees add: the weights (times -128 at the root), or with the folded
        # product each lane's -w (times 128); in a dense pair fire the 511 every lane's product
        # carries comes off as 128 (-4 span) (the first lane's table) + span (below bit 7)
        wt = we
        if folded:
            dense_f = delay(m, dense, 1, name="dense_f", reset_less=True)
        x = self.x
        x1 = None
        if self._pairs:
            # the activation select: lane l reads x[4q + index] of its group of 4 (q = l // 4); the
            # index is the slot's (2:4 pair fire), 2 (l mod 2) (dense pair fire) or l mod 4 (dense),
            # chosen once per lane in the fire register. The dense pair fire's second product takes
            # x[4q + 2 (l mod 2) + 1], wired beside it.
            sel = [Signal(2, name=f"sel{l}", reset_less=True) for l in range(L)]
            for l in range(L):
                index = self.w[l].as_unsigned()[2:4]
                if dp:
                    index = Mux(self.dense, 2 * (l % 2), index)
                m.d.sync += sel[l].eq(Mux(self.pair, index, l % 4))
            xs = [[Signal(8, name=f"xs{r}_{l}", reset_less=True) for l in range(L)] for r in range(R)]
            if dp:
                x1 = [[Signal(8, name=f"x1_{r}_{l}", reset_less=True) for l in range(L)]
                      for r in range(R)]
            for l in range(L):
                base, s_ = l - l % 4, sel[l]
                for r in range(R):
                    pick = Mux(s_[1], Mux(s_[0], x[r][base + 3], x[r][base + 2]),
                               Mux(s_[0], x[r][base + 1], x[r][base]))
                    m.d.sync += xs[r][l].eq(pick)
                    if dp:
                        second = x[r][base + 2 * (l % 2) + 1]
                        m.d.sync += x1[r][l].eq(second)
            if dp:
                code = [delay(m, c, 1, name=f"wc{l}_x", reset_less=True) for l, c in enumerate(code)]
                dense = delay(m, dense, 2, name="dense_x", reset_less=True)
            x = xs
        else:
            # the activations from the buffer's block RAM go into a register before the products
            # (a RAM's clock-to-out plus a multiplier does not fit one 300 MHz cycle)
            x = [[delay(m, x[r][l], 1, name=f"xr{r}_{l}", reset_less=True) for l in range(L)] for r in range(R)]
        wt = [delay(m, w, 1, name=f"wt{l}_x", reset_less=True) for l, w in enumerate(wt)]
        if not folded:
            we = wt

        # Products (x + 128) * w mod 2^sb; the weight sum starts one stage earlier (from the
        # fire register) and its root is delayed to line up with the product trees.
        p_stages = self._latency - 3                  # the product trees' stages
        for j in range(self._groups):
            lanes = self._tree_lanes(j)
            wsum, w_stages = wrap_tree(m, [wt[l] for l in lanes], bits=sb, levels_per_stage=lps, name=f"ws{j}")
            if folded:
                if j == 0:      # the mode beside the weight sums' roots
                    dense_r = delay(m, dense_f, int(self._pairs) + w_stages, name="dense_r", reset_less=True)
                rest = Mux(dense_r, span, 0)
                wsum = ((wsum << 7) | rest) if span < 128 else (wsum << 7) + rest
            wsum = delay(m, wsum, 1 + p_stages - w_stages, name=f"ws{j}_root", reset_less=True)
            for r in range(R):
                prods = []
                for l in lanes:
                    if folded:
                        for k, v in enumerate(_folded_product(x[r][l], x1[r][l], code[l], dense, sb)):
                            p = Signal(v.shape() if v.shape().signed and len(v) < sb else sb,
                                       name=f"p{r}_{l}_{k}", reset_less=True)
                            m.d.sync += p.eq(v)
                            prods.append(p)
                        continue
                    if dp:
                        v = pair_product(x[r][l], x1[r][l], code[l], we[l], dense, sb)
                    else:
                        v = product(x[r][l], we[l], self._lane_format, sb)
                    # a narrow signed product stays narrow (the tree widens it as it sums)
                    p = Signal(v.shape() if v.shape().signed and len(v) < sb else sb, name=f"p{r}_{l}",
                               reset_less=True)
                    m.d.sync += p.eq(v)
                    prods.append(p)
                root, stages = wrap_tree(m, prods, bits=sb, levels_per_stage=lps, name=f"t{r}_{j}")
                assert 3 + stages == self._latency
                total = root + wsum if folded else root - (wsum << 7)
                m.d.comb += self.sums[r][j].eq(total[:sb])

        valid = delay(m, self.valid, self._latency, name="valid")
        tag = delay(m, self.tag, self._latency, name="tag", reset_less=True)
        m.d.comb += [self.o_valid.eq(valid), self.o_tag.eq(tag)]
        return m
