"""Pass 2 of RMSNorm/LayerNorm: ``y = sat32(rsr((D*x - S1) * M * gamma, sh) + beta)`` per lane.

Golden model: :func:`hbmforge.numerics.vector.norm_rows` (= :func:`hbmforge.numerics.nonlinear.norm_int`
with runtime constants). ``sh = norm_shift + e`` (``(M, e)`` the row's reciprocal square root).
Fixed latency :attr:`LATENCY`, no back-pressure::

    t1  num = D*x - S1          t2  num * M          t3  * gamma          t4  round, + beta, saturate
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .arith import lanes_of, rsr_var, sat32, word_of

__all__ = ["NormApply"]


class NormApply(wiring.Component):
    """``lanes`` int32 lanes; rows of up to ``max_dim`` elements; ``mant_bits`` of ``M``."""

    LATENCY = 4

    def __init__(self, *, lanes: int, max_dim: int, mant_bits: int, shift_bits: int):
        self._lanes, self._max_dim = lanes, max_dim
        self._mant_bits, self._shift_bits = mant_bits, shift_bits
        self._sum_bits = 32 + max_dim.bit_length()
        W = 32 * lanes
        super().__init__({
            "i_valid": In(1), "x": In(W), "gamma": In(W), "beta": In(W),
            "dim": In(range(max_dim + 1)), "s1": In(signed(self._sum_bits)),
            "mant": In(unsigned(mant_bits)), "shift": In(range(1 << shift_bits)),
            "o_valid": Out(1), "o": Out(W),
        })

    @property
    def sum_bits(self) -> int:
        return self._sum_bits

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        v = [Signal(name=f"v{t}") for t in range(self.LATENCY + 1)]
        m.d.comb += v[0].eq(self.i_valid)
        for t in range(1, self.LATENCY + 1):
            m.d.sync += v[t].eq(v[t - 1])
        m.d.comb += self.o_valid.eq(v[self.LATENCY])

        nb = 33 + self._max_dim.bit_length() + 1
        x = lanes_of(self.x, L)
        g1, b1, b2, b3 = (Signal(self.gamma.shape(), name="g1"), Signal(self.beta.shape(), name="b1"),
                          Signal(self.beta.shape(), name="b2"), Signal(self.beta.shape(), name="b3"))
        g2 = Signal(self.gamma.shape(), name="g2")
        m_1, sh_1, sh_2, sh_3 = (Signal.like(self.mant, name="m1"), Signal.like(self.shift, name="sh1"),
                                 Signal.like(self.shift, name="sh2"), Signal.like(self.shift, name="sh3"))
        m.d.sync += [g1.eq(self.gamma), g2.eq(g1), b1.eq(self.beta), b2.eq(b1), b3.eq(b2),
                     m_1.eq(self.mant), sh_1.eq(self.shift), sh_2.eq(sh_1), sh_3.eq(sh_2)]
        out = []
        for i in range(L):
            num = Signal(signed(nb), name=f"num{i}")
            p1 = Signal(signed(nb + self._mant_bits + 1), name=f"p1_{i}")
            p2 = Signal(signed(nb + self._mant_bits + 33), name=f"p2_{i}")
            y = Signal(signed(32), name=f"y{i}")
            m.d.sync += [num.eq(self.dim * x[i] - self.s1), p1.eq(num * m_1),
                         p2.eq(p1 * lanes_of(g2, L)[i])]
            r = rsr_var(m, p2, sh_3, name=f"r{i}")
            m.d.sync += y.eq(sat32(r + lanes_of(b3, L)[i]))
            out.append(y)
        m.d.comb += self.o.eq(word_of(out))
        return m
