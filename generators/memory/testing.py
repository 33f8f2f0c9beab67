"""amaranth.sim support for the memory family's units: DMA channels served from a Python memory.

:class:`ChannelBench` answers any set of reader (``cmd``/``data``) and writer
(``cmd``/``data``/``done``) stream pairs of a component from one byte memory with random
stalls and back-pressure, records every command per channel, and can hold a channel's
commands back (to exercise ordering). The oblivious-map and tile-cache gateware tests use it.
"""
from __future__ import annotations

import random
from collections import deque

__all__ = ["ChannelBench"]


class ChannelBench:
    """``readers``/``writers``: name -> (cmd, data) / (cmd, data, done) members of the DUT;
    ``memory``: read(addr, n) / write(addr, data); ``stall``: chance per cycle of a held word."""

    def __init__(self, memory, *, word_bytes: int, readers: dict, writers: dict, seed: int = 1,
                 stall: float = 0.2, latency: tuple[int, int] = (0, 6)):
        self.mem = memory
        self.wb = word_bytes
        self.readers, self.writers = readers, writers
        self.rng = random.Random(seed)
        self.stall = stall
        self.latency = latency
        self.commands: dict[str, list] = {n: [] for n in (*readers, *writers)}
        self.cycle = 0

    def processes(self):
        """One background testbench per channel."""
        out = [self._clock]
        for name, (cmd, data) in self.readers.items():
            out.append(self._reader(name, cmd, data))
        for name, (cmd, data, done) in self.writers.items():
            out.append(self._writer(name, cmd, data, done))
        return out

    async def _clock(self, ctx):
        async for _ in ctx.tick():
            self.cycle += 1

    def _reader(self, name, cmd, data):
        async def proc(ctx):
            pending: deque = deque()
            ctx.set(cmd.ready, 1)
            async for clk_edge, rst, cvalid, caddr, cbytes, dready in ctx.tick().sample(
                    cmd.valid, cmd.payload.addr, cmd.payload.bytes, data.ready):
                if cvalid and ctx.get(cmd.ready):
                    self.commands[name].append((self.cycle, caddr, cbytes))
                    delay = self.rng.randint(*self.latency)
                    for i in range(cbytes // self.wb):
                        pending.append((caddr + i * self.wb, delay if i == 0 else 0))
                if ctx.get(data.valid) and dready:
                    pending.popleft()
                ctx.set(cmd.ready, int(self.rng.random() >= self.stall))
                if pending:
                    addr, wait = pending[0]
                    if wait > 0:
                        pending[0] = (addr, wait - 1)
                        ctx.set(data.valid, 0)
                    elif self.rng.random() < self.stall:
                        ctx.set(data.valid, 0)
                    else:
                        ctx.set(data.payload, int.from_bytes(self.mem.read(addr, self.wb), "little"))
                        ctx.set(data.valid, 1)
                else:
                    ctx.set(data.valid, 0)
        return proc

    def _writer(self, name, cmd, data, done):
        async def proc(ctx):
            jobs: deque = deque()              # [addr, words left]
            dones: deque = deque()             # cycles until each done
            ctx.set(cmd.ready, 1)
            async for clk_edge, rst, cvalid, caddr, cbytes, dvalid, dpayload, doneready in ctx.tick().sample(
                    cmd.valid, cmd.payload.addr, cmd.payload.bytes, data.valid, data.payload, done.ready):
                if cvalid and ctx.get(cmd.ready):
                    self.commands[name].append((self.cycle, caddr, cbytes))
                    jobs.append([caddr, cbytes // self.wb])
                if dvalid and ctx.get(data.ready):
                    job = jobs[0]
                    self.mem.write(job[0], int(dpayload).to_bytes(self.wb, "little"))
                    job[0] += self.wb
                    job[1] -= 1
                    if job[1] == 0:
                        jobs.popleft()
                        dones.append(self.rng.randint(*self.latency))
                if ctx.get(done.valid) and doneready:
                    dones.popleft()
                ctx.set(cmd.ready, int(self.rng.random() >= self.stall))
                ctx.set(data.ready, int(bool(jobs) and self.rng.random() >= self.stall))
                if dones and dones[0] <= 0:
                    ctx.set(done.valid, 1)
                    ctx.set(done.payload.error, 0)
                else:
                    if dones:
                        dones[0] -= 1
                    ctx.set(done.valid, 0)
        return proc
