"""amaranth.sim conveniences shared by the gateware tests."""
from __future__ import annotations

import gc
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

CLOCK_PERIOD = 1e-8


class SimTimeout(AssertionError):
    pass


def watchdog(cycles: int, period: float = CLOCK_PERIOD):
    """A background testbench that fails the simulation after ``cycles`` clock periods."""
    async def bench(ctx):
        await ctx.delay(cycles * period)
        raise SimTimeout(f"simulation did not finish within {cycles} cycles")
    return bench


def simulate(dut, *benches, background=(), deadline: int | None = None) -> None:
    """Clock ``dut``, run ``benches`` to completion beside ``background`` ones, optionally with a watchdog."""
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    for b in background:
        sim.add_testbench(b, background=True)
    for b in benches:
        sim.add_testbench(b)
    if deadline is not None:
        sim.add_testbench(watchdog(deadline), background=True)
    sim.run()


def rejects(make, exc, match) -> None:
    """``make()`` raises ``exc`` matching ``match``; the half-built component warns about nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(exc, match=match) as info:
            make()
        del info
        gc.collect()


async def put(ctx, port, payload=None) -> None:
    """Offer ``payload`` (if given) on stream ``port`` with ``valid`` high until a cycle takes it;
    ``valid`` stays high (the caller lowers it or offers the next word)."""
    if payload is not None:
        ctx.set(port.payload, payload)
    ctx.set(port.valid, 1)
    while True:
        _, _, ready = await ctx.tick().sample(port.ready)
        if ready:
            return


async def random_gap(ctx, port, rng, stall: float) -> None:
    """Hold ``port``'s ``valid`` low for a random number of cycles (each with probability ``stall``)."""
    while rng.random() < stall:
        ctx.set(port.valid, 0)
        await ctx.tick()


def run_gearbox(dut, packets, rng, *, stall: float = 0.3) -> list[int]:
    """Feed ``packets`` (``[(items, words)]``) into a gearbox (``i``, ``o``, ``o_last``) with random
    input stalls and output readiness, raising ``o_last`` with each packet's last item; returns
    the items taken, in order."""
    got = []

    async def source(ctx):
        for _, words in packets:
            for word in words:
                await random_gap(ctx, dut.i, rng, stall)
                await put(ctx, dut.i, word)
            ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        for items, _ in packets:
            for i in range(items):
                ctx.set(dut.o_last, i == items - 1)
                ctx.set(dut.o.ready, 1)
                payload, = await ctx.tick().sample(dut.o.payload).until(dut.o.valid)
                got.append(payload)
                ctx.set(dut.o.ready, 0)
                if rng.random() < stall:
                    await ctx.tick()

    simulate(dut, sink, background=[source])
    return got


def gearbox_output_valid(dut, words, cycles: int) -> list[bool]:
    """``o.valid`` over ``cycles`` cycles while ``words`` stream in without a gap and ``o`` is
    always ready (a gearbox that keeps up shows no bubble once primed)."""
    seen = []

    async def source(ctx):
        ctx.set(dut.i.valid, 1)
        for w in words:
            ctx.set(dut.i.payload, w)
            while True:             # not tick().until(): background benches end mid-wait
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                if ready:
                    break

    async def sink(ctx):
        ctx.set(dut.o.ready, 1)
        for _ in range(cycles):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            seen.append(valid)

    simulate(dut, sink, background=[source])
    return seen


def rtl_check_codes(layout, opcode, descs) -> list[int]:
    """The error code the RTL form of ``opcode``'s descriptor checks gives for each descriptor
    (``generators.engine.rtl_error_code`` on 64-bit field signals), to compare with the host checks."""
    from amaranth.hdl import Module, Signal

    from hbmforge.generators.engine import rtl_error_code

    fields = {n: Signal(64, name=n) for n in layout.fields_for(opcode)}
    m = Module()
    code = rtl_error_code(m, layout.checks(opcode), fields)
    got = []

    async def bench(ctx):
        for d in descs:
            for n, sig in fields.items():
                ctx.set(sig, d[n])
            got.append(ctx.get(code))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got
