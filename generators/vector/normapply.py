"""Pass 2 of RMSNorm/LayerNorm: ``y = sat32(rsr((D*x - S1) * M * gamma, sh) + beta)`` per lane.

Golden model: :func:`hbmforge.numerics.vector.norm_rows` (= :func:`hbmforge.numerics.nonlinear.norm_int`
with runtime constants). ``sh = norm_shift + e`` (``(M, e)`` the row's reciprocal square root).
Fixed latency :attr:`NormApply.latency`, no back-pressure; every product is DSP-sized partial
products summed over registered stages::

    D*x,  num = D*x - S1,  num * M,  * gamma,  round (3 stages),  + beta and saturate
"""
from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..products import pipelined_product, product_latency
from .arith import RSR_STAGES, delayed, lanes_of, registered, rsr_var_staged, sat32, valid_chain, word_of

__all__ = ["NormApply"]


class NormApply(wiring.Component):
    """``lanes`` int32 lanes; rows of up to ``max_dim`` elements; ``mant_bits`` of ``M``.

    :attr:`latency` depends on the widths (the number of DSP-sized partial products)."""

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
        nb = 33 + max_dim.bit_length() + 1                     # D*x - S1
        self._latency = (1 + product_latency(32, len(self.dim)) + 1 + product_latency(nb, mant_bits)
                         + product_latency(nb + mant_bits, 32) + RSR_STAGES + 1)

    @property
    def sum_bits(self) -> int:
        return self._sum_bits

    @property
    def latency(self) -> int:
        return self._latency

    def _stages(self, m: Module):
        """Build the lanes into ``m``: their output registers, :attr:`latency` cycles after the input."""
        L = self._lanes
        nb = 33 + self._max_dim.bit_length() + 1

        def delay(v, n, name):
            return delayed(m, v, n, name=name)

        def reg(shape, name, value):
            return registered(m, shape, value, name=name)

        x = lanes_of(self.x, L)
        # the row's constants, and D*x
        dim1 = reg(unsigned(len(self.dim)), "dim1", self.dim)
        x1 = [reg(signed(32), f"x1_{i}", x[i]) for i in range(L)]
        sh_m1 = reg(unsigned(len(self.shift)), "sh_m1", self.shift - 1)
        sh_z = reg(1, "sh_z", self.shift == 0)
        dx = []
        for i in range(L):
            p, lat_dx = pipelined_product(m, x1[i], dim1, name=f"dx{i}")
            dx.append(p)
        t = 1 + lat_dx
        # num = D*x - S1
        s1 = delay(self.s1, t, "s1")
        num = [reg(signed(nb), f"num{i}", dx[i] - s1) for i in range(L)]
        t += 1
        # num * M
        mant = delay(self.mant, t, "mant")
        p1 = []
        for i in range(L):
            p, lat1 = pipelined_product(m, num[i], mant, name=f"nm{i}")
            p1.append(p)
        t += lat1
        # * gamma
        gamma = lanes_of(delay(self.gamma, t, "gamma"), L)
        p2 = []
        for i in range(L):
            p, lat2 = pipelined_product(m, p1[i], gamma[i], name=f"ng{i}")
            p2.append(p)
        t += lat2
        # round, + beta, saturate
        s_m1, s_z = delay(sh_m1, t - 1, "sh_m1"), delay(sh_z, t - 1, "sh_z")
        r = [rsr_var_staged(m, p2[i], s_m1, s_z, name=f"r{i}") for i in range(L)]
        t += RSR_STAGES
        beta = lanes_of(delay(self.beta, t, "beta"), L)
        out = [reg(signed(32), f"y{i}", sat32(r[i] + beta[i])) for i in range(L)]
        assert t + 1 == self._latency
        return out

    def elaborate(self, platform):
        m = Module()
        out, latency = self._stages(m), self._latency
        v = valid_chain(m, self.i_valid, latency)
        m.d.comb += [self.o_valid.eq(v[latency]), self.o.eq(word_of(out))]
        return m
