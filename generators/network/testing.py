"""amaranth.sim support for the network family: the switch's and the endpoint's benches.

:class:`SwitchBench` feeds whole packets (lists of stream words) into the switch's ports,
with random idle cycles between words, takes every packet the switch sends with random
back-pressure, and keeps what it saw per port. Tests compare that with
:class:`hbmforge.numerics.network.GoldenSwitch` (one packet at a time: bit for bit), or run
golden endpoints over it with injected faults (whole all-reduces: bit-exact results).
"""
from __future__ import annotations

import heapq
import random
from collections import deque

import numpy as np
from amaranth.sim import Simulator

from hbmforge.engines.network import EndpointGeometry, SwitchGeometry
from hbmforge.numerics.network import GoldenEndpoint, GoldenSwitch, Packet, job_of

from ..dma_bench import DmaBench, until
from .switch import AggregationSwitch

__all__ = ["SwitchBench", "EndpointBench"]


class SwitchBench:
    """``busy``: chance per word that the sender idles a cycle first; ``stall``: chance per cycle
    that a receiver is not ready."""

    def __init__(self, geom: SwitchGeometry, *, seed: int = 0, busy: float = 0.3, stall: float = 0.3):
        self.geom = geom
        self.dut = AggregationSwitch(geom)
        self.rng = random.Random(seed)
        self.busy, self.stall = busy, stall
        self.inq: list[deque] = [deque() for _ in range(geom.ports)]
        self.out: list[list] = [[] for _ in range(geom.ports)]
        self.cycle = 0
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1e-8)
        for p in range(geom.ports):
            self.sim.add_testbench(self._sender(p), background=True)
            self.sim.add_testbench(self._receiver(p), background=True)
        self.sim.add_testbench(self._clock, background=True)

    def send(self, port: int, words: list[int]) -> None:
        self.inq[port].append(list(words))

    @property
    def idle(self) -> bool:
        return not any(self.inq)

    async def _clock(self, ctx):
        while True:
            await ctx.tick()
            self.cycle += 1

    def _sender(self, port: int):
        axis = getattr(self.dut, f"s_axis_p{port}")

        async def run(ctx):
            while True:
                if not self.inq[port]:
                    await ctx.tick()
                    continue
                words = self.inq[port][0]
                for i, word in enumerate(words):
                    while self.rng.random() < self.busy:
                        await ctx.tick()
                    ctx.set(axis.tdata, word)
                    ctx.set(axis.tlast, i == len(words) - 1)
                    ctx.set(axis.tvalid, 1)
                    while True:
                        _, _, ready = await ctx.tick().sample(axis.tready)
                        if ready:
                            break
                    ctx.set(axis.tvalid, 0)
                self.inq[port].popleft()
        return run

    def _receiver(self, port: int):
        axis = getattr(self.dut, f"m_axis_p{port}")

        async def run(ctx):
            words = []
            while True:
                ready = self.rng.random() >= self.stall
                ctx.set(axis.tready, ready)
                _, _, valid, data, last = await ctx.tick().sample(axis.tvalid, axis.tdata, axis.tlast)
                if ready and valid:
                    words.append(data)
                    if last:
                        self.out[port].append(words)
                        words = []
        return run

    def counters(self, ctx) -> dict:
        return {name: ctx.get(getattr(self.dut, name)) for name in AggregationSwitch.counter_names(self.geom)}

    def run(self, testbench, vcd: str | None = None) -> None:
        """Run ``testbench(ctx, bench)`` (an async function) to its end."""
        async def main(ctx):
            await testbench(ctx, self)
        self.sim.add_testbench(main)
        if vcd:
            with self.sim.write_vcd(vcd):
                self.sim.run()
        else:
            self.sim.run()


class EndpointBench(DmaBench):
    """The ALLREDUCE engine as worker ``worker`` of ``workers``: the golden switch and golden
    endpoints for the other workers behind its ``net`` streams, DMA served from ``self.mem``.

    Packets between the engine and the switch, and between the switch and the golden peers,
    are lost, duplicated or held back (reordered) with the given probabilities; the engine's
    input stream gets random gaps, its output stream random back-pressure. ``drop(where, port,
    packet)`` (``where`` "up" or "down") loses chosen packets on top of that.
    """

    def __init__(self, layout, dut, *, worker: int, workers: int, seed: int = 0, stall: float = 0.2,
                 backpressure: float = 0.2, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 gaps: float = 0.2, mem_bytes: int = 1 << 14, absent: tuple = (), drop=None):
        super().__init__(layout, dut, seed=seed, stall=stall, backpressure=backpressure)
        eng = layout.config.engine("network")
        self.geom = SwitchGeometry(ports=workers, data_width=layout.config.data_width,
                                   packet_words=eng.packet_words, slots=eng.window, jobs=eng.jobs)
        self.switch = GoldenSwitch(self.geom)
        eg = EndpointGeometry.of(layout)
        self.worker, self.workers, self.absent = worker, workers, set(absent)
        self.peers = {i: GoldenEndpoint(i, eg, self.geom.data_width) for i in range(workers)
                      if i != worker and i not in self.absent}
        self.fault_rng = random.Random(seed + 77)
        self.loss, self.dup, self.reorder, self.gaps, self.drop = loss, dup, reorder, gaps, drop
        self.mem = bytearray(np.random.default_rng(seed).integers(0, 256, mem_bytes, dtype=np.uint8).tobytes())
        self.cycle = 0
        self.later: list = []
        self.seq = 0
        self.to_dut: deque = deque()
        self.from_dut: list = []
        self.results: list = []

    # -- the network -------------------------------------------------------------------------
    def _fault(self, where, port, pkt) -> None:
        rng = self.fault_rng
        if rng.random() < self.loss or (self.drop is not None and self.drop(where, port, pkt)):
            return
        for _ in range(2 if rng.random() < self.dup else 1):
            delay = rng.randint(1, 200) if rng.random() < self.reorder else 0
            self.seq += 1
            heapq.heappush(self.later, (self.cycle + 1 + delay, self.seq, where, port, pkt))

    def _to_switch(self, port, pkt) -> None:
        for d in self.switch.receive(port, pkt):
            for q in d.ports:
                self._fault("down", q, d.packet)

    def _network_step(self) -> None:
        while self.later and self.later[0][0] <= self.cycle:
            _, _, where, port, pkt = heapq.heappop(self.later)
            if where == "up":
                self._to_switch(port, pkt)
            elif port == self.worker:
                self.to_dut.append(pkt.words(self.geom.data_width))
            elif port in self.peers:
                self.peers[port].on_packet(pkt, self.cycle)
        for i, ep in self.peers.items():
            if ep.next_deadline() <= self.cycle:
                ep.on_timer(self.cycle)
            for pkt in ep.take_outbox():
                self._fault("up", i, pkt)
        while self.from_dut:
            self._fault("up", self.worker, Packet.from_words(self.from_dut.pop(0), self.geom.data_width))

    def add_net(self, sim) -> None:
        dut = self.dut

        async def clock(ctx):
            while True:
                self._network_step()
                await ctx.tick()
                self.cycle += 1

        async def into_dut(ctx):
            axis = dut.s_axis_net
            while True:
                if not self.to_dut:
                    await ctx.tick()
                    continue
                words = self.to_dut.popleft()
                for i, word in enumerate(words):
                    while self.rng.random() < self.gaps:
                        ctx.set(axis.tvalid, 0)
                        await ctx.tick()
                    ctx.set(axis.tdata, word)
                    ctx.set(axis.tlast, i == len(words) - 1)
                    ctx.set(axis.tvalid, 1)
                    await until(ctx, axis.tready)
                    ctx.set(axis.tvalid, 0)

        async def out_of_dut(ctx):
            axis = dut.m_axis_net
            words = []
            while True:
                ready = self.rng.random() >= self.backpressure
                ctx.set(axis.tready, ready)
                _, _, valid, data, last = await ctx.tick().sample(axis.tvalid, axis.tdata, axis.tlast)
                if ready and valid:
                    words.append(data)
                    if last:
                        self.from_dut.append(words)
                        words = []

        for proc in (clock, into_dut, out_of_dut):
            sim.add_testbench(proc, background=True)

    # -- jobs ----------------------------------------------------------------------------------
    async def allreduce(self, ctx, d: dict, peer_buffers: dict, *, max_cycles: int = 200_000) -> int:
        """Run the ALLREDUCE descriptor ``d`` on the engine while the peers run the same job on
        ``peer_buffers`` (worker -> int32 array); the engine's fault code."""
        dut = self.dut
        for i, ep in self.peers.items():
            if i in peer_buffers:
                ep.start(job_of(dict(d, worker=i)), peer_buffers[i], self.cycle)
        for name, value in d.items():
            if name != "op":
                ctx.set(getattr(dut.job.payload, name), value)
        ctx.set(dut.job.valid, 1)
        await until(ctx, dut.job.ready)
        ctx.set(dut.job.valid, 0)
        ctx.set(dut.done.ready, 1)
        for _ in range(max_cycles):
            _, _, valid, fault = await ctx.tick().sample(dut.done.valid, dut.fault)
            if valid:
                break
        else:
            raise TimeoutError(f"ALLREDUCE {d} not done after {max_cycles} cycles")
        ctx.set(dut.done.ready, 0)
        for _ in range(max_cycles):                 # the peers finish too (their results may still be on the way)
            if all(ep.done for i, ep in self.peers.items() if i in peer_buffers):
                break
            await ctx.tick()
        return int(fault)

    def run(self, testbench, vcd: str | None = None) -> None:
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        self.add_dma(sim)
        self.add_net(sim)

        async def main(ctx):
            await testbench(ctx, self)
        sim.add_testbench(main)
        self.run_sim(sim, vcd)
