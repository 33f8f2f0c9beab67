"""StepFIFO / StepFIFOBuffered behave cycle for cycle like amaranth's SyncFIFO / SyncFIFOBuffered
(the shell's DMA FIFOs; only their counters are built differently, for timing)."""
from __future__ import annotations

import random

import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.sim import Simulator

from hbmforge.generators.fifo import StepFIFO, StepFIFOBuffered

PORTS = ("w_rdy", "r_rdy", "r_data", "level", "w_level", "r_level")


def _trace(make_ref, make_new, depth: int, seed: int, cycles: int = 600):
    """Drive both FIFOs with the same random w_en / r_en / w_data; every output, every cycle."""
    m = Module()
    m.domains.sync = ClockDomain()        # depth 0 has no logic of its own
    m.submodules.ref = ref = make_ref(width=16, depth=depth)
    m.submodules.new = new = make_new(width=16, depth=depth)
    rng = random.Random(seed)
    mismatches = []

    async def bench(ctx):
        for cycle in range(cycles):
            # phases of filling, draining and both, so the FIFO reaches full and empty
            phase = (cycle // 50) % 3
            w_en = rng.random() < (0.9, 0.2, 0.6)[phase]
            r_en = rng.random() < (0.2, 0.9, 0.6)[phase]
            data = rng.getrandbits(16)
            for f in (ref, new):
                ctx.set(f.w_en, w_en)
                ctx.set(f.r_en, r_en)
                ctx.set(f.w_data, data)
            a = {p: ctx.get(getattr(ref, p)) for p in PORTS}
            b = {p: ctx.get(getattr(new, p)) for p in PORTS}
            if not a["r_rdy"]:
                a.pop("r_data"), b.pop("r_data")
            if a != b:
                mismatches.append((cycle, a, b))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return mismatches


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 5, 8])
def test_step_fifo_matches_amaranth_sync_fifo(depth):
    assert _trace(SyncFIFO, StepFIFO, depth, seed=depth) == []


@pytest.mark.parametrize("depth", [2, 3, 4, 7, 17])
def test_step_fifo_buffered_matches_amaranth_sync_fifo_buffered(depth):
    assert _trace(SyncFIFOBuffered, StepFIFOBuffered, depth, seed=100 + depth) == []


@pytest.mark.parametrize("cls,depth", [(StepFIFO, -1), (StepFIFOBuffered, 1), (StepFIFOBuffered, 2.5)])
def test_step_fifo_refuses_a_bad_depth(cls, depth):
    with pytest.raises(ValueError, match="depth"):
        cls(width=8, depth=depth)


def test_deep_step_fifo_carries_the_storage_attributes():
    from hbmforge.generators.shell.dma import URAM_FIFO_DEPTH, _read_fifo
    from amaranth.back import rtlil
    for depth, ultra in ((URAM_FIFO_DEPTH * 2 + 1, True), (257, False)):
        fifo = _read_fifo(33, depth)
        text = rtlil.convert(fifo, ports=[fifo.w_en, fifo.w_data, fifo.r_en, fifo.r_data, fifo.r_rdy])
        assert ('attribute \\ram_style "ultra"' in text) == ultra
