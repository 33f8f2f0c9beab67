"""The formal harnesses' Assert/Assume statements hold in amaranth.sim too: a port with several
readers and a writer under a random AXI memory (random latency, back-pressure, interleaved IDs),
the control slave under a random AXI-Lite host, the aggregation switch under random traffic and
the tile cache under its golden-model bench run with every property checked each cycle (a
violated Assert or Assume ends the simulation with an AssertionError)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

from amaranth.sim import Simulator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateware"))

from shell_axi_model import AxiLiteHost, AxiMemoryPort, SparseMemory, set_dma_command, stream_recv, stream_send  # noqa: E402
from sim_helpers import watchdog  # noqa: E402

from hbmforge.config import parse_config  # noqa: E402
from hbmforge.generators.formal.shell import ControlHarness, PortHarness  # noqa: E402
from hbmforge.layout import DesignLayout  # noqa: E402

from designs import tiny_config_dict  # noqa: E402

W = 64
B = W // 8


def test_port_properties_hold_in_simulation_under_random_memory():
    rng = random.Random(3)
    readers = {"cmd": 0, "act": 1, "scale": 2}
    harness = PortHarness(data_width=W, addr_width=32, id_width=2, readers=readers, writer="out",
                          max_burst_beats=8, max_outstanding=2)
    dut = harness.port
    mem = SparseMemory()
    model = AxiMemoryPort(dut.bus, mem, data_width=W, max_burst_beats=8, rng=rng, read_latency=(2, 20),
                          stall=0.3, arids=set(readers.values()), awids={0}, interleave=True, name="data")
    plans = {name: [(0x10000 * (i + 1) + 0xFC0, 0x100), (0x10000 * (i + 1) + 0x2000, 0x48)]
             for i, name in enumerate(readers)}
    words = {name: sum(n for _, n in cmds) // B for name, cmds in plans.items()}
    got = {name: [] for name in readers}

    def sender(name):
        async def bench(ctx):
            await stream_send(ctx, getattr(dut, f"rd_{name}").cmd, plans[name], rng=random.Random(len(name)),
                              stall=0.3, set_payload=set_dma_command)
        return bench

    def receiver(name):
        async def bench(ctx):
            await stream_recv(ctx, getattr(dut, f"rd_{name}").data, words[name], rng=random.Random(7),
                              stall=0.5, out=got[name])
        return bench

    async def writer(ctx):
        await stream_send(ctx, dut.wr_out.cmd, [(0x80FC0, 0x180)], set_payload=set_dma_command)

    async def writer_data(ctx):
        await stream_send(ctx, dut.wr_out.data, [rng.getrandbits(W) for _ in range(0x180 // B)],
                          rng=random.Random(9), stall=0.3)

    async def writer_done(ctx):
        await stream_recv(ctx, dut.wr_out.done, 1, rng=random.Random(5), stall=0.5)

    sim = Simulator(harness)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(watchdog(20_000), background=True)
    for name in readers:
        sim.add_testbench(sender(name), background=True)
        sim.add_testbench(receiver(name))
    sim.add_testbench(writer, background=True)
    sim.add_testbench(writer_data, background=True)
    sim.add_testbench(writer_done)
    sim.run()
    assert model.violations == []
    assert all(len(got[n]) == words[n] for n in readers)


def test_control_properties_hold_in_simulation_under_a_random_host():
    layout = DesignLayout(parse_config(tiny_config_dict()))
    harness = ControlHarness(layout)
    ctl = harness.control
    host = AxiLiteHost(ctl.bus, rng=random.Random(11), stall=0.4)
    reg = {r.name: r.offset for r in layout.registers}
    seen = {}

    async def kernel(ctx):                 # ends each run a few cycles after it starts
        while True:
            await ctx.tick()
            if not ctx.get(ctl.start):
                continue
            await ctx.tick().repeat(5)
            ctx.set(ctl.done, 1)
            await ctx.tick()
            ctx.set(ctl.done, 0)

    async def bench(ctx):
        await host.write(ctx, reg["GIE"], 1)
        await host.write(ctx, reg["IER"], 1)
        for run in range(3):
            await host.write(ctx, reg["CTRL"], 1)
            for _ in range(200):
                if await host.read(ctx, reg["CTRL"]) & 0b10:
                    break
            else:
                raise AssertionError("ap_done never rose")
            seen[run] = await host.read(ctx, reg["ISR"])
            await host.write(ctx, reg["ISR"], 1)

    sim = Simulator(harness)
    sim.add_clock(1e-8)
    sim.add_testbench(kernel, background=True)
    sim.add_testbench(watchdog(20_000), background=True)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {0: 1, 1: 1, 2: 1}


def test_switch_properties_hold_in_simulation_under_random_traffic(monkeypatch):
    """Random packets of every type (and malformed ones) from every port, random gaps and
    back-pressure, on a switch that checks its link and FIFO properties every cycle."""
    import hbmforge.generators.network.testing as net_testing
    from hbmforge.engines.network import SwitchGeometry
    from hbmforge.generators.formal.engines import SelfCheckedSwitch
    from hbmforge.numerics.network import GoldenSwitch
    from test_network_switch import Traffic, quiet

    monkeypatch.setattr(net_testing, "AggregationSwitch", SelfCheckedSwitch)
    g = SwitchGeometry(ports=3, data_width=64, packet_words=2, slots=4, jobs=2, tx_packets=2, rx_packets=2)
    bench = net_testing.SwitchBench(g, seed=4, busy=0.2, stall=0.5)
    assert isinstance(bench.dut, SelfCheckedSwitch)
    gold, traffic = GoldenSwitch(g), Traffic(random.Random(12), g)
    sent = []

    async def tb(ctx, b):
        for burst in range(12):                         # a few packets at once: the FIFOs fill up
            expect = [0] * g.ports
            base = [len(o) for o in b.out]
            for _ in range(4):
                port, pkt = traffic.packet()
                for d in gold.receive(port, pkt):
                    for q in d.ports:
                        expect[q] += 1
                b.send(port, pkt.words(g.data_width))
                sent.append(pkt)
            await quiet(ctx, b, expect, base)
            assert all(len(o) - n >= e for o, n, e in zip(b.out, base, expect)), f"burst {burst} stuck"

    bench.run(tb)
    assert len(sent) == 48 and gold.counters.reduced


def test_cache_properties_hold_in_simulation_against_the_golden_model(monkeypatch):
    """The tile cache's gateware bench (random reads, writes, prefetches, flushes, invalidates
    vs the golden model) on a cache that checks its stream, command, FIFO and job properties."""
    import hbmforge.generators.memory.cache as cache_module
    from hbmforge.engines.memory import CacheGeometry
    from hbmforge.generators.formal.engines import SelfCheckedTileCache
    from hbmforge.generators.memory.testing import random_cache_ops, run_cache_bench
    from hbmforge.numerics.program import SparseMemory as GoldenMemory

    monkeypatch.setattr(cache_module, "TileCache", SelfCheckedTileCache)
    geom = CacheGeometry(8, 1024, 2, 2, "lru", "write_back", 2)
    rng = random.Random(21)
    mem = GoldenMemory()
    base, window = 1 << 20, 8 * 1024
    for a in range(0, window + 4096, 512):
        mem.write(base + a, rng.randbytes(512))
    ops = random_cache_ops(rng, base=base, window=window, line=1024, word=8, count=8, store=0x400000)
    problems, rtl, gold = run_cache_bench(geom, ops, mem, seed=3)
    assert problems == [] and rtl == gold
    kinds = {k for k, *_ in rtl}
    assert {1, 2} <= kinds, f"the ops missed hits or misses: {kinds}"
