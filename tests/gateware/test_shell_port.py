"""AxiPort: several readers and a writer sharing one AXI4 manager (amaranth.sim)."""
from __future__ import annotations

import random

from amaranth.sim import Simulator

from hbmforge.generators.shell.port import AxiPort
from shell_axi_model import (AxiMemoryPort, SparseMemory, assert_rejects, set_dma_command,
                             stream_recv, stream_send)
from sim_helpers import watchdog

W = 64
B = W // 8


def _words(mem, addr, nbytes):
    raw = mem.read(addr, nbytes)
    return [int.from_bytes(raw[i:i + B], "little") for i in range(0, nbytes, B)]


def test_port_routes_interleaved_read_data_by_id_and_writes():
    rng = random.Random(7)
    readers = {"cmd": 0, "act": 1, "scale": 2, "rq": 3}
    dut = AxiPort(data_width=W, id_width=2, readers=readers, writer="out", max_burst_beats=8,
                  max_outstanding=2)
    mem = SparseMemory()
    model = AxiMemoryPort(dut.bus, mem, data_width=W, max_burst_beats=8, rng=rng,
                          read_latency=(3, 25), stall=0.2, arids=set(readers.values()), awids={0},
                          interleave=True, name="data")
    plans = {}
    for i, name in enumerate(readers):
        cmds = [(0x10000 * (i + 1) + 0xFC0, 0x100), (0x10000 * (i + 1) + 0x3000, 0x48)]
        for a, n in cmds:
            mem.write(a, bytes(rng.getrandbits(8) for _ in range(n)))
        plans[name] = cmds
    expected = {name: [w for a, n in cmds for w in _words(mem, a, n)] for name, cmds in plans.items()}
    out_cmds = [(0x80FC0, 0x180)]
    out_words = [rng.getrandbits(W) for _ in range(0x180 // B)]
    got = {name: [] for name in readers}
    finished = []
    result = {}

    def sender(name):
        async def bench(ctx):
            await stream_send(ctx, getattr(dut, f"rd_{name}").cmd, plans[name],
                              rng=random.Random(hash(name) & 0xFF), stall=0.3,
                              set_payload=set_dma_command)
        return bench

    def receiver(name):
        async def bench(ctx):
            await stream_recv(ctx, getattr(dut, f"rd_{name}").data, len(expected[name]),
                              rng=random.Random(len(name)), stall=0.4, out=got[name])
            finished.append(name)
        return bench

    async def writer_cmd(ctx):
        await stream_send(ctx, dut.wr_out.cmd, out_cmds, set_payload=set_dma_command)

    async def writer_data(ctx):
        await stream_send(ctx, dut.wr_out.data, out_words, rng=random.Random(9), stall=0.3)

    async def writer_done(ctx):
        done = await stream_recv(ctx, dut.wr_out.done, 1)
        result["done_error"] = done[0].error
        while len(finished) < len(readers):
            await ctx.tick()
        await ctx.tick().repeat(3)
        result["bytes_read"] = ctx.get(dut.bytes_read)
        result["bytes_written"] = ctx.get(dut.bytes_written)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(watchdog(20_000), background=True)
    for name in readers:
        sim.add_testbench(sender(name), background=True)
        sim.add_testbench(receiver(name))
    sim.add_testbench(writer_cmd, background=True)
    sim.add_testbench(writer_data, background=True)
    sim.add_testbench(writer_done)
    sim.run()

    assert model.violations == []
    assert got == expected
    assert _words(mem, 0x80FC0, 0x180) == out_words
    assert result["done_error"] == 0
    assert result["bytes_read"] == sum(n for cmds in plans.values() for _, n in cmds)
    assert result["bytes_written"] == 0x180
    # responses of different IDs really were interleaved by the model
    ids = [i for _, i, _, _ in model.stats.ar_log]
    assert len(set(ids)) == 4


def test_read_only_port_ties_write_channels_idle():
    dut = AxiPort(data_width=W, id_width=1, readers={"w": 0}, max_burst_beats=4)
    result = {}

    async def bench(ctx):
        ctx.set(dut.bus.awready, 1)
        ctx.set(dut.bus.wready, 1)
        for _ in range(4):
            await ctx.tick()
            result.setdefault("aw", []).append(ctx.get(dut.bus.awvalid))
            result.setdefault("w", []).append(ctx.get(dut.bus.wvalid))
        result["bready"] = ctx.get(dut.bus.bready)
        result["awsize"] = ctx.get(dut.bus.awsize)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert result["aw"] == [0] * 4 and result["w"] == [0] * 4
    assert result["bready"] == 1
    assert result["awsize"] == 3
    assert not hasattr(dut, "wr_out")


def test_port_rejects_shared_arids():
    assert_rejects(AxiPort, dict(data_width=W, readers={"a": 1, "b": 1}), ValueError, "distinct")


def test_port_rejects_arid_wider_than_id_width():
    assert_rejects(AxiPort, dict(data_width=W, id_width=1, readers={"a": 0, "b": 2}),
                   ValueError, "ARID")


def test_a_background_reader_bursts_only_while_the_others_are_quiet():
    """``background=("pf",)``: while ``w`` has bursts to issue, every AR is ``w``'s; ``pf`` gets
    the channel before and after (a weight prefetch must not slow the engine that runs)."""
    rng = random.Random(11)
    readers = {"w": 0, "pf": 1}
    dut = AxiPort(data_width=W, id_width=2, readers=readers, max_burst_beats=4, max_outstanding=2,
                  reader_fifo_depth={"pf": 512}, background=("pf",))
    mem = SparseMemory()
    model = AxiMemoryPort(dut.bus, mem, data_width=W, max_burst_beats=4, rng=rng, read_latency=(3, 12),
                          stall=0.2, arids=set(readers.values()), name="w0")
    plans = {"pf": [(0x40000, 0x800)], "w": [(0x10000, 0x200), (0x20000, 0x100)]}
    for cmds in plans.values():
        for a, n in cmds:
            mem.write(a, bytes(rng.getrandbits(8) for _ in range(n)))
    got = {name: [] for name in readers}

    async def pf_cmd(ctx):
        await stream_send(ctx, dut.rd_pf.cmd, plans["pf"], set_payload=set_dma_command)

    async def w_cmd(ctx):
        await ctx.tick().repeat(40)                       # pf streams alone first
        await stream_send(ctx, dut.rd_w.cmd, plans["w"], set_payload=set_dma_command)

    def receiver(name, stall):
        async def bench(ctx):
            await stream_recv(ctx, getattr(dut, f"rd_{name}").data, sum(n for _, n in plans[name]) // B,
                              rng=random.Random(len(name)), stall=stall, out=got[name])
        return bench

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(watchdog(20_000), background=True)
    sim.add_testbench(pf_cmd, background=True)
    sim.add_testbench(w_cmd, background=True)
    sim.add_testbench(receiver("w", 0.0))
    sim.add_testbench(receiver("pf", 0.0))
    sim.run()

    assert model.violations == []
    assert got == {name: [w for a, n in cmds for w in _words(mem, a, n)] for name, cmds in plans.items()}
    ids = [i for _, i, _, _ in model.stats.ar_log]
    first_w, last_w = ids.index(0), len(ids) - 1 - ids[::-1].index(0)
    assert 1 in ids[:first_w] and 1 in ids[last_w:]         # pf before and after
    assert set(ids[first_w:last_w + 1]) == {0}, "".join(map(str, ids))
