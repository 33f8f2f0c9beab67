"""The shared GELU/SiLU datapath: ``x * g(x)`` with ``g(x) + g(-x) = 1``, as ``x - t(|x|)`` / ``-t(|x|)``.

``t(a) = a * g(-a)`` is a piecewise-linear ROM table (``c0``, ``c1`` per segment, see
:mod:`hbmforge.numerics.nonlinear`). Per lane, a 5-stage pipeline:

0. ``a = |x|`` (a negation: its carry chain and the ROM's address decode are two stages);
1. segment index ``i`` and offset ``r`` from ``a``; the ROM read is issued;
1b. the ROM's entry into a register;
2. ``c1 * r`` (one ``c1_bits x (F - S)`` multiplier) and, beside it, the term it is
   subtracted from (``x*2^G - c0`` or ``-c0``, with both roundings folded in) and the tail's value;
3. one subtraction and a shift into the output register: the same integers as
   ``tq = c0 + rshift_round(c1 * r, F - S)``, ``y = rshift_round(x*2^G - tq, G)`` or
   ``rshift_round(-tq, G)``.

Flow control is a global stall: every stage advances when the output register is empty
or being read (``i.ready = ~o.valid | o.ready``), so the unit takes ``lanes`` elements per
cycle under no back-pressure and keeps order and data under any pattern of stalls.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...numerics.nonlinear import GUARD_BITS, ActivationSpec
from ..params import require_positive_ints

__all__ = ["TailActivation"]


class TailActivation(wiring.Component):
    """Streaming ``lanes``-wide GELU or SiLU (``function``) on signed ``width``-bit fixed point with
    ``frac_bits`` fraction bits; bit-exact with :func:`hbmforge.numerics.nonlinear.activation_int`.

    Ports: ``i`` and ``o``, both ``stream.Signature(ArrayLayout(signed(width), lanes))``.
    """

    LATENCY = 5
    FUNCTION = None                 # set by the subclasses

    def __init__(self, *, width: int = 16, frac_bits: int = 10, seg_bits: int = 4, lanes: int = 1,
                 function: str | None = None):
        require_positive_ints(width=width, frac_bits=frac_bits, lanes=lanes)
        if lanes > 64:
            raise ValueError(f"lanes must be at most 64, got {lanes}")
        function = function if function is not None else self.FUNCTION
        self._spec = ActivationSpec(function, width, frac_bits, seg_bits)     # validates the formats
        self._lanes = lanes
        layout = data.ArrayLayout(signed(width), lanes)
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    @property
    def spec(self) -> ActivationSpec:
        return self._spec

    @property
    def function(self) -> str:
        return self._spec.function

    @property
    def width(self) -> int:
        return self._spec.width

    @property
    def frac_bits(self) -> int:
        return self._spec.frac_bits

    @property
    def seg_bits(self) -> int:
        return self._spec.seg_bits

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def latency(self) -> int:
        """Cycles from accepting an input to its result on ``o`` (without back-pressure)."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        sp = self._spec
        W, F, S, G = sp.width, sp.frac_bits, sp.seg_bits, GUARD_BITS
        rb = F - S                                   # bits of the offset inside a segment
        N = sp.segments
        entry = data.StructLayout({"c0": signed(sp.c0_bits), "c1": signed(sp.c1_bits)})
        init = [{"c0": c0, "c1": c1} for c0, c1 in zip(sp.c0, sp.c1)]

        adv = Signal()
        m.d.comb += [adv.eq(~self.o.valid | self.o.ready), self.i.ready.eq(adv)]
        v0, v1, v1b, v2 = Signal(), Signal(), Signal(), Signal()
        with m.If(adv):
            m.d.sync += [v0.eq(self.i.valid), v1.eq(v0), v1b.eq(v1), v2.eq(v1b), self.o.valid.eq(v2)]

        for ln in range(self._lanes):
            m.submodules[f"rom{ln}"] = rom = Memory(shape=entry, depth=N, init=init)
            rp = rom.read_port(domain="sync")
            # stage 0: x and |x| registered
            x = Signal(signed(W), name=f"x0_{ln}")
            a = Signal(unsigned(W), name=f"a{ln}")
            xi = self.i.payload[ln]
            # "beyond the table" (|x| >> rb >= N) from x itself, beside |x|: two compares with
            # constants in parallel instead of one after the negation
            lim = N << rb
            out0 = Signal(name=f"beyond0_{ln}")
            with m.If(adv):
                m.d.sync += [x.eq(xi), a.eq(Mux(xi < 0, -xi, xi)),
                             out0.eq(Mux(xi < 0, xi <= -lim, xi >= lim))]
            idx = a >> rb
            m.d.comb += [rp.addr.eq(idx), rp.en.eq(adv)]

            # stage 1: ROM data arrives; keep x, r and "beyond the table"
            x1 = Signal(signed(W), name=f"x1_{ln}")
            r1 = Signal(unsigned(max(rb, 1)), name=f"r1_{ln}")
            out1 = Signal(name=f"beyond1_{ln}")
            # stage 2: the interpolation product and, beside it, what stage 3 subtracts it from:
            # with base = x*2^G - c0 (or -c0) + 2^(G-1) and h = 2^(F-S-1),
            # y = (base - ((c1*r + h) >> (F-S))) >> G = (base*2^(F-S) + 2^(F-S) - 1 - h - c1*r) >> (F-S+G)
            # inside the table; beyond it the tail constant's value
            wide = signed(W + G + sp.c0_bits + rb + 3)
            prod2 = Signal(signed(sp.c1_bits + rb + 2), name=f"prod2_{ln}")
            base2 = Signal(wide, name=f"base2_{ln}")
            tail2 = Signal(wide, name=f"tail2_{ln}")
            out2 = Signal(name=f"beyond2_{ln}")
            half = 1 << (G - 1)
            fold = (1 << rb) - 1 - ((1 << (rb - 1)) if rb else 0)
            # stage 1b: the ROM data in a register of its own (the ROM's clock-to-out before the
            # product's DSP input and the adds does not fit a cycle)
            x1b = Signal(signed(W), name=f"x1b_{ln}")
            r1b = Signal(unsigned(max(rb, 1)), name=f"r1b_{ln}")
            out1b = Signal(name=f"beyond1b_{ln}")
            c = Signal(entry, name=f"c_{ln}")
            with m.If(adv):
                m.d.sync += [x1.eq(x), r1.eq(a[:rb] if rb else 0), out1.eq(out0)]
                m.d.sync += [x1b.eq(x1), r1b.eq(r1), out1b.eq(out1), c.eq(rp.data)]
                m.d.sync += [out2.eq(out1b), prod2.eq(c.c1 * r1b if rb else 0),
                             base2.eq(((Mux(x1b < 0, -c.c0, (x1b << G) - c.c0) + half) << rb) + fold),
                             tail2.eq(Mux(x1b < 0, -sp.tail, (x1b << G) - sp.tail) + half)]

            # stage 3: one subtraction and the output shift
            with m.If(adv):
                m.d.sync += self.o.payload[ln].eq(Mux(out2, tail2 >> G, (base2 - prod2) >> (rb + G)))
        return m
