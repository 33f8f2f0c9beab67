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
