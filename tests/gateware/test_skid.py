"""SkidBuffer (the register slice in front of the matmul engine's weight inputs) and HoldSlice (the
one-register slice of each engine's job record) in amaranth.sim."""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator  # noqa: F401  (simulate() below wraps it)

from hbmforge.generators.skid import HoldSlice, SkidBuffer
from sim_helpers import put, random_gap, simulate


def _run(dut, words, rng, *, in_stall, out_stall, ready_log=None):
    """Send ``words`` with random gaps, take them with random back-pressure; the words received."""
    got = []

    async def send(ctx):
        for w in words:
            await random_gap(ctx, dut.i, rng, in_stall)
            await put(ctx, dut.i, w)
        ctx.set(dut.i.valid, 0)

    async def take(ctx):
        while len(got) < len(words):
            ctx.set(dut.o.ready, rng.random() >= out_stall)
            _, _, valid, ready, payload, i_ready = await ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload, dut.i.ready)
            if ready_log is not None:
                ready_log.append(i_ready)
            if valid and ready:
                got.append(payload)

    simulate(dut, take, background=[send])
    return got


@pytest.mark.parametrize("in_stall,out_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.4, 0.4)])
def test_skid_buffer_keeps_every_word_in_order_under_backpressure(in_stall, out_stall):
    rng = random.Random(int(100 * in_stall) * 7 + int(100 * out_stall))
    words = [rng.getrandbits(64) for _ in range(200)]
    assert _run(SkidBuffer(64), words, rng, in_stall=in_stall, out_stall=out_stall) == words


def test_skid_buffer_moves_one_word_per_cycle():
    dut = SkidBuffer(16)
    words = list(range(1, 65))
    first_valid, cycles = [], []

    async def send(ctx):
        for w in words:
            await put(ctx, dut.i, w)
        ctx.set(dut.i.valid, 0)

    async def take(ctx):
        ctx.set(dut.o.ready, 1)
        got, c = [], 0
        while len(got) < len(words):
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            c += 1
            if valid:
                if not first_valid:
                    first_valid.append(c)
                got.append(payload)
        cycles.append(c - first_valid[0] + 1)
        assert got == words

    simulate(dut, take, background=[send])
    assert cycles == [len(words)]


def test_skid_buffer_ready_is_a_register_that_drops_only_when_the_output_stalls():
    # with the output never ready, the slice holds two words and then refuses a third
    dut = SkidBuffer(8)
    readies = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        for w in (1, 2, 3, 4):
            ctx.set(dut.i.payload, w)
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            readies.append(ready)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 1
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        assert ctx.get(dut.o.payload) == 2

    simulate(dut, bench)
    assert readies == [1, 1, 0, 0]


@pytest.mark.parametrize("cls", [SkidBuffer, HoldSlice])
def test_slices_validate_width(cls):
    with pytest.raises((TypeError, ValueError), match="width"):
        cls(0)


@pytest.mark.parametrize("in_stall,out_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.4, 0.4)])
def test_hold_slice_keeps_every_word_in_order_under_backpressure(in_stall, out_stall):
    rng = random.Random(int(100 * in_stall) * 11 + int(100 * out_stall) + 1)
    words = [rng.getrandbits(40) for _ in range(150)]
    readies = []
    assert _run(HoldSlice(40), words, rng, in_stall=in_stall, out_stall=out_stall, ready_log=readies) == words
    assert 0 in readies                     # it refuses while full


def test_hold_slice_holds_one_word_and_takes_one_every_other_cycle():
    dut = HoldSlice(8)
    log = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 0)
        for w in (1, 2, 3):                  # output stalled: the first word stays, the rest wait
            ctx.set(dut.i.payload, w)
            _, _, ready, valid, payload = await ctx.tick().sample(dut.i.ready, dut.o.valid, dut.o.payload)
            log.append((ready, valid))
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 1 and not ctx.get(dut.i.ready)
        ctx.set(dut.o.ready, 1)              # taken: empty the next cycle, the next word a cycle later
        ctx.set(dut.i.payload, 2)
        await ctx.tick()
        assert not ctx.get(dut.o.valid) and ctx.get(dut.i.ready)
        await ctx.tick()
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 2

    simulate(dut, bench)
    assert log == [(1, 0), (0, 1), (0, 1)]
