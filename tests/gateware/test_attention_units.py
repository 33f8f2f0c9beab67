"""exp2 / reciprocal RTL units against their golden models."""
from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from hbmforge.generators.attention.exp2 import Exp2
from hbmforge.generators.attention.recip import Reciprocal
from hbmforge.numerics.softmax import exp2_neg, reciprocal


def _comb_sweep(dut, inp, outs, values):
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(inp, v)
            got.append(tuple(ctx.get(o) for o in outs))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


# The RTL form of the ATTENTION descriptor checks is tested with every other family's in
# tests/gateware/test_engine_checks.py (one rule set, evaluated as RTL and as integers).


def test_exp2_unit_matches_golden_on_every_input_up_to_zero_and_beyond():
    dut = Exp2(25)
    assert dut.LATENCY == 0
    ds = list(range(0, 18 << 8)) + [1 << 20, (1 << 25) - 1]
    got = [g for (g,) in _comb_sweep(dut, dut.d, [dut.p], ds)]
    assert got == [int(exp2_neg(d)) for d in ds]


def test_registered_exp2_matches_golden_one_input_per_cycle_one_cycle_later():
    dut = Exp2(25, registered=True)
    assert dut.LATENCY == 1
    rng = np.random.default_rng(3)
    ds = list(range(0, 18 << 8)) + [1 << 20, (1 << 25) - 1] + [int(v) for v in rng.integers(0, 1 << 25, 500)]
    got = []

    async def bench(ctx):
        for i in range(len(ds) + 1):
            ctx.set(dut.d, ds[i] if i < len(ds) else 0)
            await ctx.tick()
            got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got[:len(ds)] == [int(exp2_neg(d)) for d in ds]


def test_reciprocal_pipeline_matches_golden_one_input_per_cycle():
    dut = Reciprocal(36)
    rng = np.random.default_rng(0)
    ls = [0, 1, 2, 3, (1 << 15), (1 << 17) - 1, (1 << 17), (1 << 36) - 1] + \
        [int(v) for v in rng.integers(1, 1 << 36, 3000)] + list(range(32768, 32768 + 2000))
    got = []

    async def bench(ctx):
        for i in range(len(ls) + dut.LATENCY):
            ctx.set(dut.l, ls[i] if i < len(ls) else 0)
            await ctx.tick()
            if i + 1 >= dut.LATENCY:
                got.append((ctx.get(dut.y), ctx.get(dut.n)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got[:len(ls)] == [reciprocal(l) for l in ls]
