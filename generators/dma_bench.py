"""amaranth.sim test support shared by every engine bench: serve DMA from a Python byte memory.

An engine (docs/architecture.md §6) asks its readers and its writer for memory with
``DmaCommand`` records. :class:`DmaBench` answers them from ``self.mem`` (a bytearray
mapped at address 0) with random stalls on every reader's command and data streams
and random back-pressure on the writer, and records each command per channel.
Engine benches (``generators/matmul/testing.py``, ``generators/attention/testing.py``)
add the jobs, the driver and the checks.
"""
from __future__ import annotations

import random
from collections import deque

__all__ = ["DmaBench", "until"]


async def until(ctx, cond, *samples):
    """``await ctx.tick().sample(*samples).until(cond)`` without an async generator
    (background testbenches are dropped mid-wait when the simulation ends)."""
    while True:
        _, _, *values, flag = await ctx.tick().sample(*samples, cond)
        if flag:
            return values


class DmaBench:
    """``stall``: chance per cycle that a reader holds back a word (or a command port its
    ready); ``backpressure``: chance that the writer is not ready for ``out_data``;
    ``response_delay``: cycles (range) before ``out_done`` follows a command's last word;
    ``port_stall``: a reader's own ``stall`` by channel name (e.g. a slow ``w2``)."""

    def __init__(self, layout, dut, *, seed: int, stall: float, backpressure: float,
                 response_delay: tuple[int, int] = (1, 8)):
        self.layout = layout
        self.dut = dut
        self.rng = random.Random(seed)
        self.stall, self.backpressure = stall, backpressure
        self.response_delay = response_delay
        self.port_stall: dict[str, float] = {}
        self.mem = bytearray()
        self.commands: dict[str, list] = {}

    def check_read(self, name: str, addr: int, nbytes: int) -> None:
        """Called for every read command as it is accepted; benches override it to police reads."""

    def check_write(self, name: str, addr: int, nbytes: int) -> None:
        """Called for every written word before it lands; benches override it to police writes."""

    def write_error(self, name: str, addr: int, nbytes: int) -> bool:
        """The error flag of the ``done`` answering a write command; benches override it to
        inject write errors (SLVERR/DECERR seen by the shell's writer)."""
        return False

    async def submit(self, ctx, max_cycles: int, describe) -> None:
        """Hand over the job whose payload the caller set on ``dut.job`` and wait for ``done``;
        a job not done within ``max_cycles`` raises TimeoutError naming ``describe()``."""
        dut = self.dut
        ctx.set(dut.job.valid, 1)
        await ctx.tick().until(dut.job.ready)
        ctx.set(dut.job.valid, 0)
        ctx.set(dut.done.ready, 1)
        waited = 0
        async for _, _, valid in ctx.tick().sample(dut.done.valid):
            waited += 1
            if valid:
                break
            if waited > max_cycles:
                raise TimeoutError(f"{describe()} not done after {max_cycles} cycles")
        ctx.set(dut.done.ready, 0)

    @staticmethod
    def run_sim(sim, vcd: str | None) -> None:
        """Run ``sim`` to the end of its testbenches, writing a VCD when ``vcd`` names a file."""
        if vcd:
            with sim.write_vcd(vcd):
                sim.run()
        else:
            sim.run()

    def add_dma(self, sim) -> None:
        """Serve every channel the engine's signature declares: its data-port readers (by
        name), its ``w<i>`` readers, the data writer (``out``) and its ``w<i>`` writers (``sw<i>``)."""
        dut = self.dut
        ch = dut.signature.channels
        readers = [(n, getattr(dut, f"{n}_cmd"), getattr(dut, f"{n}_data")) for n in ch.data_readers]
        readers += [(f"w{i}", dut.w_cmd[i], dut.w_data[i]) for i in range(ch.stream_readers)]
        for name, cmd, data in readers:
            for proc in self._reader(name, cmd, data):
                sim.add_testbench(proc, background=True)
        writers = [("out", dut.out_cmd, dut.out_data, dut.out_done)] if ch.data_writer else []
        writers += [(f"sw{i}", dut.sw_cmd[i], dut.sw_data[i], dut.sw_done[i]) for i in range(ch.stream_writers)]
        for name, cmd, data, done in writers:
            for proc in self._writer(name, cmd, data, done):
                sim.add_testbench(proc, background=True)

    def _reader(self, name, cmd, data):
        queue: deque = deque()
        wb = self.layout.word_bytes
        self.commands[name] = []

        def stall():
            return self.rng.random() < self.port_stall.get(name, self.stall)

        async def take_commands(ctx):
            while True:
                while stall():
                    await ctx.tick()
                ctx.set(cmd.ready, 1)
                addr, nbytes = await until(ctx, cmd.valid, cmd.payload.addr, cmd.payload.bytes)
                ctx.set(cmd.ready, 0)
                self.commands[name].append((addr, nbytes))
                assert addr % wb == 0 and nbytes % wb == 0 and nbytes > 0, (name, addr, nbytes)
                self.check_read(name, addr, nbytes)
                queue.append((addr, nbytes))

        async def deliver(ctx):
            while True:
                if not queue:
                    await ctx.tick()
                    continue
                addr, nbytes = queue.popleft()
                for a in range(addr, addr + nbytes, wb):
                    while stall():
                        ctx.set(data.valid, 0)
                        await ctx.tick()
                    ctx.set(data.payload, int.from_bytes(self.mem[a:a + wb], "little"))
                    ctx.set(data.valid, 1)
                    await until(ctx, data.ready)
                    ctx.set(data.valid, 0)

        return take_commands, deliver

    def _writer(self, name, cmd, data, done):
        wb = self.layout.word_bytes
        self.commands[name] = []

        async def write(ctx):
            while True:
                ctx.set(cmd.ready, 1)
                addr, nbytes = await until(ctx, cmd.valid, cmd.payload.addr, cmd.payload.bytes)
                ctx.set(cmd.ready, 0)
                self.commands[name].append((addr, nbytes))
                assert addr % wb == 0 and nbytes % wb == 0 and nbytes > 0, (name, addr, nbytes)
                for a in range(addr, addr + nbytes, wb):
                    while self.rng.random() < self.backpressure:
                        ctx.set(data.ready, 0)
                        await ctx.tick()
                    ctx.set(data.ready, 1)
                    word, = await until(ctx, data.valid, data.payload)
                    ctx.set(data.ready, 0)
                    self.check_write(name, a, wb)
                    self.mem[a:a + wb] = int(word).to_bytes(wb, "little")
                for _ in range(self.rng.randrange(*self.response_delay)):   # write responses take a while
                    await ctx.tick()
                ctx.set(done.valid, 1)
                ctx.set(done.payload.error, int(self.write_error(name, addr, nbytes)))
                await until(ctx, done.ready)
                ctx.set(done.valid, 0)
                ctx.set(done.payload.error, 0)

        return (write,)
