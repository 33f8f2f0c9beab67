"""BurstReader / BurstWriter against a randomised AXI memory model (amaranth.sim)."""
from __future__ import annotations

import random

import pytest

from hbmforge.generators.shell.dma import BurstReader, BurstWriter
from sim_helpers import simulate
from shell_axi_model import (AxiMemoryPort, SparseMemory, set_dma_command, stream_recv,
                             stream_send, assert_rejects)

W = 64
B = W // 8


def _words(mem, addr, nbytes, B=B):
    raw = mem.read(addr, nbytes)
    return [int.from_bytes(raw[i:i + B], "little") for i in range(0, nbytes, B)]


def _fill(mem, rng, addr, nbytes):
    mem.write(addr, bytes(rng.getrandbits(8) for _ in range(nbytes)))


def _run(dut, *benches, background=(), deadline=50_000):
    simulate(dut, *benches, background=background, deadline=deadline)


def _read_scenario(*, commands, max_burst=8, outstanding=4, fifo_depth=None, stall=0.25,
                   consumer_stall=0.2, latency=(2, 12), seed=0, error_ranges=(), interleave=True, width=W):
    rng = random.Random(seed)
    B = width // 8
    mem = SparseMemory()
    for addr, nbytes in commands:
        _fill(mem, rng, addr, nbytes)
    dut = BurstReader(data_width=width, id_width=2, arid=1, max_burst_beats=max_burst,
                      max_outstanding=outstanding, fifo_depth=fifo_depth)
    model = AxiMemoryPort(dut.bus, mem, data_width=width, max_burst_beats=max_burst, rng=rng,
                          read_latency=latency, stall=stall, arids={1}, error_ranges=error_ranges,
                          interleave=interleave, name="rd")
    expected = [w for a, n in commands for w in _words(mem, a, n, B)]
    got, stamps, errors = [], [], []
    finished = []

    async def source(ctx):
        await stream_send(ctx, dut.cmd, commands, rng=random.Random(seed + 1), stall=0.3,
                          set_payload=set_dma_command)

    async def sink(ctx):
        await stream_recv(ctx, dut.data, len(expected), rng=random.Random(seed + 2),
                          stall=consumer_stall, out=got, stamps=stamps)
        for _ in range(3):
            await ctx.tick()
        errors.append(ctx.get(dut.error))
        finished.append(True)

    _run(dut, sink, background=(model.run, source))
    assert finished, "reader did not deliver every word before the deadline"
    return dut, model, expected, got, stamps, errors[0]


def test_reader_delivers_every_word_in_order():
    commands = [(0x1000, 64), (0x2FC0, 0x100), (0x10008, 8), (0x5000, 0x400), (0x7FF8, 16)]
    _, model, expected, got, _, err = _read_scenario(commands=commands, seed=1)
    assert model.violations == []
    assert got == expected
    assert err == 0


@pytest.mark.parametrize("width, max_burst", [(64, 32), (256, 256)])
def test_reader_bursts_never_cross_4k(width, max_burst):
    # start 3 words before a page boundary, and a long run across several pages
    b = width // 8
    commands = [(0x1000 - 3 * b, 8 * b), (0x4000 - b, 0x2000 + 2 * b), (0x8000 - 5 * b, 9 * b)]
    _, model, expected, got, _, _ = _read_scenario(commands=commands, max_burst=max_burst, seed=2,
                                                    width=width)
    assert model.violations == []
    assert got == expected
    for _, _, addr, beats in model.stats.ar_log:
        assert addr // 4096 == (addr + beats * b - 1) // 4096
        assert beats <= max_burst
    # bursts are as long as the rules allow: cut only at 4 KiB, at max_burst or at the end
    assert len(model.stats.ar_log) == sum(_min_bursts(a, n, b, max_burst) for a, n in commands)


def _min_bursts(addr, nbytes, b, max_burst):
    count = 0
    while nbytes:
        take = min(nbytes, max_burst * b, 4096 - addr % 4096)
        addr, nbytes, count = addr + take, nbytes - take, count + 1
    return count


def test_reader_limits_bursts_and_beats_in_flight():
    # a slow consumer: credits must stop the reader from asking for more than its FIFO holds
    commands = [(0x4000, 0x800)]
    _, model, expected, got, _, _ = _read_scenario(commands=commands, max_burst=8, outstanding=3,
                                                    fifo_depth=20, consumer_stall=0.8, seed=3)
    assert model.violations == []
    assert got == expected
    assert max(model.stats.max_reads_in_flight.values()) <= 3
    assert max(model.stats.max_read_beats_in_flight.values()) <= 20


def test_reader_sustains_one_beat_per_cycle_under_latency():
    commands = [(0x10000, 2048 * B)]
    _, model, expected, got, stamps, _ = _read_scenario(
        commands=commands, max_burst=32, outstanding=8, stall=0.0, consumer_stall=0.0,
        latency=(40, 40), seed=4)
    assert got == expected
    span = stamps[-1] - stamps[0] + 1
    rate = len(stamps) / span
    print(f"reader: {rate:.4f} beats/cycle at 40-cycle latency, first word after "
          f"{model.stats.first_r_cycle} cycles")
    assert rate >= 0.99, f"{rate:.3f} beats/cycle"


def test_reader_flags_error_response():
    commands = [(0x1000, 0x100), (0x2000, 0x40)]
    _, model, expected, got, _, err = _read_scenario(commands=commands, seed=5,
                                                     error_ranges=[(0x2000, 0x2008)])
    assert got == expected          # data still delivered, in order
    assert err == 1


def _write_scenario(*, commands, max_burst=8, outstanding=4, stall=0.25, producer_stall=0.2,
                    latency=(2, 12), seed=0, error_ranges=(), width=W):
    rng = random.Random(seed)
    mem = SparseMemory()
    dut = BurstWriter(data_width=width, id_width=2, awid=0, max_burst_beats=max_burst,
                      max_outstanding=outstanding)
    model = AxiMemoryPort(dut.bus, mem, data_width=width, max_burst_beats=max_burst, rng=rng,
                          write_latency=latency, stall=stall, awids={0}, error_ranges=error_ranges,
                          name="wr")
    payload = [[rng.getrandbits(width) for _ in range(n // (width // 8))] for _, n in commands]
    dones, done_cycles, errors = [], [], []
    cycle = [0]

    async def clock(ctx):
        while True:
            await ctx.tick()
            cycle[0] += 1

    async def cmds(ctx):
        await stream_send(ctx, dut.cmd, commands, rng=random.Random(seed + 1), stall=0.3,
                          set_payload=set_dma_command)

    async def data(ctx):
        await stream_send(ctx, dut.data, [w for ws in payload for w in ws],
                          rng=random.Random(seed + 2), stall=producer_stall)

    async def done(ctx):
        r = random.Random(seed + 3)
        while len(dones) < len(commands):
            ready = r.random() >= 0.3
            ctx.set(dut.done.ready, ready)
            _, _, valid, pl = await ctx.tick().sample(dut.done.valid, dut.done.payload)
            if valid and ready:
                dones.append(pl.error)
                done_cycles.append(model.now)
        ctx.set(dut.done.ready, 0)
        await ctx.tick()
        errors.append(ctx.get(dut.error))

    _run(dut, done, background=(model.run, cmds, data, clock))
    assert len(dones) == len(commands), "writer did not report every command done"
    return model, mem, payload, dones, done_cycles, errors[0]


def test_writer_writes_every_word_with_correct_wlast():
    commands = [(0x1000, 64), (0x2FC0, 0x100), (0x10008, 8), (0x5000, 0x400)]
    model, mem, payload, dones, _, err = _write_scenario(commands=commands, seed=10)
    assert model.violations == []
    for (addr, n), words in zip(commands, payload):
        assert _words(mem, addr, n) == words
    assert dones == [0] * len(commands)
    assert err == 0


@pytest.mark.parametrize("width, max_burst", [(64, 32), (256, 256)])
def test_writer_bursts_never_cross_4k(width, max_burst):
    b = width // 8
    commands = [(0x1000 - 3 * b, 8 * b), (0x4000 - b, 0x2000 + 2 * b)]
    model, mem, payload, _, _, _ = _write_scenario(commands=commands, max_burst=max_burst, seed=11,
                                                   width=width)
    assert model.violations == []
    for _, _, addr, beats in model.stats.aw_log:
        assert addr // 4096 == (addr + beats * b - 1) // 4096
    assert len(model.stats.aw_log) == sum(_min_bursts(a, n, b, max_burst) for a, n in commands)
    for (addr, n), words in zip(commands, payload):
        assert _words(mem, addr, n, b) == words


def test_backpressure_keeps_order_with_one_outstanding_burst():
    """The smallest legal configuration: single-beat bursts, one burst in flight."""
    commands = [(0x1000, 0x40), (0x2FF8, 0x18)]
    _, rmodel, expected, got, _, _ = _read_scenario(commands=commands, max_burst=1, outstanding=1,
                                                    stall=0.5, consumer_stall=0.5, seed=15)
    assert rmodel.violations == [] and got == expected
    assert max(rmodel.stats.max_reads_in_flight.values()) == 1
    wmodel, mem, payload, dones, _, _ = _write_scenario(commands=commands, max_burst=1, outstanding=1,
                                                        stall=0.5, producer_stall=0.5, seed=16)
    assert wmodel.violations == [] and dones == [0, 0]
    for (addr, n), words in zip(commands, payload):
        assert _words(mem, addr, n) == words


def test_writer_done_waits_for_every_b_response():
    commands = [(0x8000, 0x300)]
    model, _, _, _, done_cycles, _ = _write_scenario(commands=commands, latency=(20, 30), seed=12)
    assert model.stats.b_resps == model.stats.aw_bursts
    assert done_cycles[0] > model.stats.last_b_cycle


def test_writer_flags_error_response_on_its_command():
    commands = [(0x1000, 0x80), (0x2000, 0x80), (0x3000, 0x80)]
    _, _, _, dones, _, err = _write_scenario(commands=commands, seed=13,
                                             error_ranges=[(0x2040, 0x2048)])
    assert dones == [0, 1, 0]
    assert err == 1


def test_writer_completes_zero_byte_command_in_order():
    commands = [(0x1000, 0x80), (0x2000, 0), (0x3000, 0x40)]
    model, mem, payload, dones, _, _ = _write_scenario(commands=commands, seed=14)
    assert model.violations == []
    assert dones == [0, 0, 0]
    assert _words(mem, 0x3000, 0x40) == payload[2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(data_width=48), "data_width"),
    (dict(data_width=64, max_burst_beats=3), "max_burst_beats"),
    (dict(data_width=64, max_outstanding=0), "max_outstanding"),
    (dict(data_width=64, id_width=2, arid=4), "arid"),
    (dict(data_width=64, max_burst_beats=16, fifo_depth=8), "fifo_depth"),
])
def test_reader_rejects_bad_parameters(kwargs, match):
    assert_rejects(BurstReader, kwargs, ValueError, match)


def test_writer_rejects_bad_awid():
    assert_rejects(BurstWriter, dict(data_width=64, id_width=1, awid=2), ValueError, "awid")
