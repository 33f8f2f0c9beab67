"""The pipelined wide product (unsigned and signed) against Python integers (amaranth.sim)."""
from __future__ import annotations

import random

import pytest
from amaranth.hdl import ClockDomain, Module, Signal, signed
from amaranth.sim import Simulator

from hbmforge.generators.products import pipelined_product, pipelined_sum


@pytest.mark.parametrize("a_bits,b_bits,a_signed,b_signed", [
    (15, 78, False, False), (47, 47, False, False), (17, 26, False, False), (3, 100, False, False),
    (32, 31, True, False), (32, 32, True, True), (32, 16, True, True), (18, 40, False, True)])
def test_pipelined_product_is_exact_after_its_latency(a_bits, b_bits, a_signed, b_signed):
    m = Module()
    a, b = Signal(signed(a_bits) if a_signed else a_bits), Signal(signed(b_bits) if b_signed else b_bits)
    out, latency = pipelined_product(m, a, b, name="p")
    assert len(out) == a_bits + b_bits and latency >= 1
    assert out.shape().signed == (a_signed or b_signed)
    rng = random.Random(a_bits * 1000 + b_bits)

    def lo(bits, sgn):
        return -(1 << (bits - 1)) if sgn else 0

    def hi(bits, sgn):
        return (1 << (bits - 1)) - 1 if sgn else (1 << bits) - 1

    ends = [(x, y) for x in (lo(a_bits, a_signed), hi(a_bits, a_signed), 0, 1)
            for y in (lo(b_bits, b_signed), hi(b_bits, b_signed), 0, 1)]
    cases = ends + [(rng.randint(lo(a_bits, a_signed), hi(a_bits, a_signed)),
                     rng.randint(lo(b_bits, b_signed), hi(b_bits, b_signed))) for _ in range(40)]
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


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_pipelined_sum_is_exact_after_its_latency(n):
    m = Module()
    m.domains.sync = ClockDomain()            # n == 1 has no register of its own
    xs = [Signal(signed(32), name=f"x{i}") for i in range(n)]
    out, latency = pipelined_sum(m, xs, name="s")
    assert latency == (n - 1).bit_length()
    rng = random.Random(n)
    cases = [[-(1 << 31)] * n, [(1 << 31) - 1] * n] + [[rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(n)]
                                                         for _ in range(30)]
    got = []

    async def bench(ctx):
        for i in range(len(cases) + latency):
            if i < len(cases):
                for x, v in zip(xs, cases[i]):
                    ctx.set(x, v)
            if i >= latency:
                got.append(ctx.get(out))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [sum(c) for c in cases]
