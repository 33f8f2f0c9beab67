"""amaranth.sim support for the switch: AXI4-Stream drivers with random gaps and back-pressure.

:class:`SwitchBench` feeds whole packets (lists of stream words) into the switch's ports,
with random idle cycles between words, takes every packet the switch sends with random
back-pressure, and keeps what it saw per port. Tests compare that with
:class:`hbmforge.numerics.network.GoldenSwitch` (one packet at a time: bit for bit), or run
golden endpoints over it with injected faults (whole all-reduces: bit-exact results).
"""
from __future__ import annotations

import random
from collections import deque

from amaranth.sim import Simulator

from hbmforge.engines.network import SwitchGeometry

from .switch import AggregationSwitch

__all__ = ["SwitchBench"]


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
