"""The R x L multiply array with per-group adder trees.

One fire multiplies ``L`` weights of one output column with the matching ``L``
activations of each of ``R`` rows and sums the products of each weight group
(``min(L, G)`` lanes): ``max(1, L / G)`` exact partial sums per row. The tree
is a plain registered pipeline (no stalls): a tag travels alongside so that
downstream stages know what each result is.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pipe import adder_tree, delay

__all__ = ["MacArray"]


class MacArray(wiring.Component):
    """``R`` rows x ``L`` lanes of int8 x int``wbits`` products, summed per weight group.

    ``sums[r][j]`` is the sum over lanes ``j*G' .. (j+1)*G' - 1`` of row ``r``
    (``G' = min(L, G)``), ``latency`` cycles after the inputs; ``tag`` and
    ``valid`` come out with it.
    """

    def __init__(self, *, rows: int, lanes: int, group_size: int, weight_shape, tag_layout,
                 levels_per_stage: int = 2):
        for name, v in (("rows", rows), ("lanes", lanes), ("group_size", group_size),
                        ("levels_per_stage", levels_per_stage)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        for name, v in (("lanes", lanes), ("group_size", group_size)):
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        self._rows, self._lanes, self._group = rows, lanes, group_size
        self._span = min(lanes, group_size)              # lanes per group sum
        self._groups = max(1, lanes // group_size)       # group sums per fire
        self._levels_per_stage = levels_per_stage
        self._weight_shape = weight_shape
        product = signed(8 + weight_shape.width)
        self._sum_shape = signed(product.width + (self._span.bit_length() - 1))
        tree_levels = self._span.bit_length() - 1
        self._latency = 1 + (-(-tree_levels // levels_per_stage) if tree_levels else 0)
        super().__init__({
            "valid": In(1),
            "w": In(data.ArrayLayout(weight_shape, lanes)),
            "x": In(data.ArrayLayout(data.ArrayLayout(signed(8), lanes), rows)),
            "tag": In(tag_layout),
            "o_valid": Out(1),
            "sums": Out(data.ArrayLayout(data.ArrayLayout(self._sum_shape, self._groups), rows)),
            "o_tag": Out(tag_layout),
        })

    @property
    def groups_per_fire(self) -> int:
        return self._groups

    @property
    def sum_shape(self):
        return self._sum_shape

    @property
    def latency(self) -> int:
        """Cycles from inputs to ``o_valid``/``sums``."""
        return self._latency

    def elaborate(self, platform):
        m = Module()
        R, L, span = self._rows, self._lanes, self._span
        for r in range(R):
            prods = []
            for l in range(L):
                p = Signal(signed(8 + self._weight_shape.width), name=f"p{r}_{l}")
                m.d.sync += p.eq(self.x[r][l] * self.w[l])
                prods.append(p)
            for j in range(self._groups):
                root, stages = adder_tree(m, prods[j * span:(j + 1) * span],
                                          levels_per_stage=self._levels_per_stage, name=f"t{r}_{j}")
                assert 1 + stages == self._latency
                m.d.comb += self.sums[r][j].eq(root)

        valid = delay(m, self.valid, self._latency, name="valid")
        tag = delay(m, self.tag, self._latency, name="tag")
        m.d.comb += [self.o_valid.eq(valid), self.o_tag.eq(tag)]
        return m
