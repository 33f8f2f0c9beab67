"""The shared GELU/SiLU datapath: ``x * g(x)`` with ``g(x) + g(-x) = 1``, as ``x - t(|x|)`` / ``-t(|x|)``.

``t(a) = a * g(-a)`` is a piecewise-linear ROM table (``c0``, ``c1`` per segment, see
:mod:`hbmforge.numerics.nonlinear`). Per lane, a 3-stage pipeline:

1. ``a = |x|``, segment index ``i`` and offset ``r``; the ROM read is issued;
2. ``c1 * r`` (one ``c1_bits x (F - S)`` multiplier);
3. ``tq = c0 + rshift_round(c1 * r, F - S)`` (or the tail constant beyond the table),
   ``y = rshift_round(x*2^G - tq, G)`` or ``rshift_round(-tq, G)`` into the output register.

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

    LATENCY = 3
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
        v1, v2 = Signal(), Signal()
        with m.If(adv):
            m.d.sync += [v1.eq(self.i.valid), v2.eq(v1), self.o.valid.eq(v2)]

        for ln in range(self._lanes):
            m.submodules[f"rom{ln}"] = rom = Memory(shape=entry, depth=N, init=init)
            rp = rom.read_port(domain="sync")
            x = self.i.payload[ln]
            a = Signal(unsigned(W), name=f"a{ln}")
            m.d.comb += a.eq(Mux(x < 0, -x, x))
            idx = a >> rb
            m.d.comb += [rp.addr.eq(idx), rp.en.eq(adv)]

            # stage 1: ROM data arrives; keep x, r and "beyond the table"
            x1 = Signal(signed(W), name=f"x1_{ln}")
            r1 = Signal(unsigned(max(rb, 1)), name=f"r1_{ln}")
            out1 = Signal(name=f"beyond1_{ln}")
            # stage 2: the interpolation product
            x2 = Signal(signed(W), name=f"x2_{ln}")
            c0_2 = Signal(signed(sp.c0_bits), name=f"c0_2_{ln}")
            prod2 = Signal(signed(sp.c1_bits + rb + 1), name=f"prod2_{ln}")
            out2 = Signal(name=f"beyond2_{ln}")
            with m.If(adv):
                m.d.sync += [x1.eq(x), r1.eq(a[:rb] if rb else 0), out1.eq(idx >= N)]
                m.d.sync += [x2.eq(x1), c0_2.eq(rp.data.c0), out2.eq(out1),
                             prod2.eq(rp.data.c1 * r1)]

            # stage 3: tail value, output rounding
            tq = Signal(signed(sp.c0_bits + 1), name=f"tq{ln}")
            interp = c0_2 + ((prod2 + (1 << (rb - 1))) >> rb) if rb else c0_2
            m.d.comb += tq.eq(Mux(out2, sp.tail, interp))
            full = Signal(signed(W + G + 1), name=f"yfull{ln}")
            m.d.comb += full.eq(Mux(x2 < 0, -tq, (x2 << G) - tq))
            with m.If(adv):
                m.d.sync += self.o.payload[ln].eq((full + (1 << (G - 1))) >> G)
        return m
