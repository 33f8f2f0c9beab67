"""Pass 2 of RMSNorm/LayerNorm: ``y = sat32(rsr((D*x - S1) * M * gamma, sh) + beta)`` per lane.

Golden model: :func:`hbmforge.numerics.vector.norm_rows` (= :func:`hbmforge.numerics.nonlinear.norm_int`
with runtime constants). ``sh = norm_shift + e`` (``(M, e)`` the row's reciprocal square root).
Fixed latency :attr:`NormApply.latency`, no back-pressure; every product is DSP-sized partial
products summed over registered stages::

    D*x,  num = D*x - S1,  num * M,  * gamma,  round (3 stages),  + beta and saturate
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..products import pipelined_product, product_latency
from .arith import I32_MAX, I32_MIN, RSR_STAGES, delayed, lanes_of, registered, shift_stages, valid_chain, word_of

__all__ = ["NormApply"]


_NARROW = 35         # |fine| < 2^35: the sum fits a few bits above 32; beyond it the result saturates


def _rsr_plus_staged(m: Module, v, s_m1, s_zero, beta, *, name: str):
    """``rsr(v, s) + beta`` over :data:`RSR_STAGES` registered stages for :func:`_sat32_of`, as
    :func:`~.arith.rsr_var_staged` with ``beta`` added in the rounding stage: for ``s >= 1``
    ``((f + 1) >> 1) + beta == (f + (2 * beta + 1)) >> 1``, one add (``beta`` comes a stage after
    ``v``, with that stage's input). The add is narrow: with ``f`` (the shifted ``v``) in
    ``[-2^K, 2^K)`` (K = :data:`_NARROW`) the sum is exact in K + 3 bits; outside it the sum's
    magnitude is at least ``2^K - 2^33`` (halved: ``> 2^31``), saturated to ``f``'s sign. Returns
    ``(narrow sum, f outside, f negative)``, registers."""
    v, beta = Value.cast(v), Value.cast(beta)
    assert v.shape().signed and len(beta) <= 32 and len(v) > _NARROW + 1
    fine, z2 = shift_stages(m, v, s_m1, s_zero, name=name)
    K = _NARROW
    top = fine[K:]
    f = fine[:K + 1].as_signed()
    out = Signal(signed(K + 3), name=name)
    outside, neg = Signal(name=f"{name}_out"), Signal(name=f"{name}_neg")
    m.d.sync += [out.eq(Mux(z2, f + beta, (f + Cat(Const(1, 1), beta).as_signed()) >> 1)),
                 outside.eq(~((top == 0) | (top == (1 << len(top)) - 1))), neg.eq(fine[-1])]
    return out, outside, neg


def _sat32_of(r) -> Value:
    """``sat32`` of :func:`_rsr_plus_staged`'s value: the narrow sum's bits from 31 up all equal
    (in range), else the bound of its sign; outside, the bound of ``f``'s sign."""
    out, outside, neg = r
    top = out[31:]
    fits = (top == 0) | (top == (1 << len(top)) - 1)
    bound = Mux(neg, I32_MIN, I32_MAX)
    return Mux(outside, bound, Mux(fits, out[:32].as_signed(), Mux(out[-1], I32_MIN, I32_MAX)))


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
        sh0 = reg(unsigned(len(self.shift)), "sh0", self.shift)     # (the caller's sum registered)
        sh_m1 = reg(unsigned(len(self.shift)), "sh_m1", sh0 - 1)
        sh_z = reg(1, "sh_z", sh0 == 0)
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
        # round and + beta (beta enters the rounding's last add), then saturate
        s_m1, s_z = delay(sh_m1, t - 2, "sh_m1"), delay(sh_z, t - 2, "sh_z")
        beta = lanes_of(delay(self.beta, t + RSR_STAGES - 1, "beta"), L)
        r = [_rsr_plus_staged(m, p2[i], s_m1, s_z, beta[i], name=f"r{i}") for i in range(L)]
        t += RSR_STAGES
        out = [reg(signed(32), f"y{i}", _sat32_of(r[i])) for i in range(L)]
        assert t + 1 == self._latency
        return out

    def elaborate(self, platform):
        m = Module()
        out, latency = self._stages(m), self._latency
        v = valid_chain(m, self.i_valid, latency)
        m.d.comb += [self.o_valid.eq(v[latency]), self.o.eq(word_of(out))]
        return m
