"""lut_product: the shift-and-add product equals ``x * w`` for every narrow ``w`` and wide ``x``."""
from __future__ import annotations
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from hbmforge.generators.lutmul import lut_product
from amaranth.sim import Simulator
from sim_helpers import rejects


@pytest.mark.parametrize("x_shape,w_bits", [(unsigned(8), 4), (signed(8), 4), (unsigned(16), 4),
                                            (signed(17), 3), (signed(8), 2), (unsigned(5), 1)])
def test_every_narrow_operand_times_a_sweep_of_wide_ones(x_shape, w_bits):
    x, w, y = Signal(x_shape), Signal(signed(8)), Signal(signed(48))
    m = Module()
    m.d.comb += y.eq(lut_product(x, w, w_bits))
    lo = -(1 << (x_shape.width - 1)) if x_shape.signed else 0
    hi = (1 << (x_shape.width - 1)) if x_shape.signed else 1 << x_shape.width
    xs = sorted({lo, lo + 1, 0, 1, hi - 2, hi - 1, *range(lo, hi, max(1, (hi - lo) // 97))})

    async def bench(ctx):
        for xv in xs:
            for wv in range(-(1 << (w_bits - 1)), 1 << (w_bits - 1)):
                ctx.set(x, xv)
                ctx.set(w, wv)
                assert ctx.get(y) == xv * wv, (xv, wv)
                ctx.set(w, (wv & ((1 << w_bits) - 1)) | (0x55 << w_bits & 0x7f))   # garbage upper bits
                assert ctx.get(y) == xv * wv, (xv, wv, "upper bits")

    sim = Simulator(m)         # combinational: no clock
    sim.add_testbench(bench)
    sim.run()


def test_operand_width_is_checked():
    rejects(lambda: lut_product(Signal(8), Signal(8), 5), ValueError, "w_bits must be 1 .. 4")
    rejects(lambda: lut_product(Signal(8), Signal(8), 0), ValueError, "w_bits must be 1 .. 4")
