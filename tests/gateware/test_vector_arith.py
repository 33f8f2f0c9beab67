"""The vector engine's pipelined wide product against Python integers (amaranth.sim)."""
from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hbmforge.generators.vector.arith import pipelined_product


@pytest.mark.parametrize("a_bits,b_bits", [(15, 78), (47, 47), (17, 26), (3, 100)])
def test_pipelined_product_is_exact_after_its_latency(a_bits, b_bits):
    m = Module()
    a, b = Signal(a_bits), Signal(b_bits)
    out, latency = pipelined_product(m, a, b, name="p")
    assert len(out) == a_bits + b_bits and latency >= 1
    rng = random.Random(a_bits * 1000 + b_bits)
    cases = [((1 << a_bits) - 1, (1 << b_bits) - 1), (0, 0), (1, (1 << b_bits) - 1)]
    cases += [(rng.getrandbits(a_bits), rng.getrandbits(b_bits)) for _ in range(40)]
    got = []

    async def bench(ctx):
        for i in range(len(cases) + latency):          # a new operand pair every cycle
            if i < len(cases):
                ctx.set(a, cases[i][0])
                ctx.set(b, cases[i][1])
            await ctx.tick()
            if i + 1 >= latency:
                got.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got[:len(cases)] == [x * y for x, y in cases]
