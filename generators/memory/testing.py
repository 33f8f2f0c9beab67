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
                offered = ctx.get(data.valid)
                if offered and dready:
                    pending.popleft()
                    offered = False
                ctx.set(cmd.ready, int(self.rng.random() >= self.stall))
                if offered:
                    continue                    # a word once offered stays until taken (stream rules)
                if pending and pending[0][1] > 0:
                    pending[0] = (pending[0][0], pending[0][1] - 1)
                    ctx.set(data.valid, 0)
                elif pending and self.rng.random() >= self.stall:
                    ctx.set(data.payload, int.from_bytes(self.mem.read(pending[0][0], self.wb), "little"))
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


# -- whole-unit benches: the RTL against the golden models ---------------------------------------
def random_cache_ops(rng, *, base: int, window: int, line: int, word: int, count: int, store: int) -> list:
    """CONFIGURE, then ``count`` random reads, writes, prefetches, flushes and invalidates around a
    window of ``window`` bytes (some outside it), then a FLUSH of the window."""
    from hbmforge.encodings import CacheAction

    ops = [("ctl", CacheAction.CONFIGURE, base, window, store)]
    for _ in range(count):
        r = rng.random()
        if r < 0.55:
            ops.append(("read", base + rng.randrange(0, window + 2 * line, word), word * rng.randint(1, 3 * line // word)))
        elif r < 0.8:
            a, n = base + rng.randrange(0, window + 2 * line, word), word * rng.choice([1, 5, 64, line // word])
            if rng.random() < 0.3:
                a, n = base + rng.randrange(0, window, line), line
            ops.append(("write", a, rng.randbytes(n)))
        elif r < 0.88:
            ops.append(("ctl", CacheAction.PREFETCH, base + line * rng.randrange(0, window // line), line * rng.randint(1, 3), 0))
        elif r < 0.94:
            ops.append(("ctl", CacheAction.FLUSH, base + line * rng.randrange(0, window // line), line * rng.randint(1, 8), 0))
        else:
            ops.append(("ctl", CacheAction.INVALIDATE, base + line * rng.randrange(0, window // line),
                        line * rng.randint(1, 4), 0))
    ops.append(("ctl", CacheAction.FLUSH, base, window, 0))
    return ops


def run_cache_bench(geometry, ops, memory, *, seed: int = 1, stall: float = 0.25, latency=(0, 20),
                    ready: float = 0.7):
    """Run ``ops`` (see :func:`random_cache_ops`) on a TileCache in amaranth.sim and on the golden
    model over a copy of ``memory``; return (problems, rtl events, golden events) where problems
    lists every read, tag word, counter or memory byte that differs."""
    import random

    from amaranth.sim import Simulator

    from hbmforge.encodings import CacheAction
    from hbmforge.numerics.memory import TileCacheModel
    from hbmforge.numerics.program import SparseMemory

    from .cache import EVENT_KINDS, TileCache

    rng = random.Random(seed)
    wb = geometry.word_bytes
    gold_mem = SparseMemory({k: bytearray(v) for k, v in memory.pages.items()})
    model = TileCacheModel(geometry, memory=gold_mem)
    expect = []
    for op in ops:
        if op[0] == "read":
            expect.append(model.read(op[1], op[2]))
            continue
        expect.append(None)
        if op[0] == "write":
            model.write(op[1], op[2])
        else:
            _, act, a, n, st = op
            {CacheAction.CONFIGURE: lambda: model.configure(a, n, st), CacheAction.PREFETCH: lambda: model.prefetch(a, n),
             CacheAction.FLUSH: lambda: model.flush(a, n), CacheAction.INVALIDATE: lambda: model.invalidate(a, n)
             }.get(act, lambda: None)()
    dut = TileCache(geometry, data_width=8 * wb)
    bench = ChannelBench(memory, word_bytes=wb, readers={"bk": (dut.bk_cmd, dut.bk_data), "st": (dut.st_cmd, dut.st_data)},
                         writers={"bkw": (dut.bk_wcmd, dut.bk_wdata, dut.bk_wdone),
                                  "stw": (dut.st_wcmd, dut.st_wdata, dut.st_wdone)},
                         stall=stall, seed=seed, latency=latency)
    events, problems = [], []

    async def monitor(ctx):
        async for _, _, v, k, w, s, wy in ctx.tick().sample(dut.event_valid, dut.event_kind, dut.event_write,
                                                              dut.event_set, dut.event_way):
            if v:
                events.append((k, w, s, wy))

    async def drive(ctx):
        for i, op in enumerate(ops):
            if op[0] == "read":
                ctx.set(dut.up_cmd.payload.addr, op[1])
                ctx.set(dut.up_cmd.payload.bytes, op[2])
                ctx.set(dut.up_cmd.valid, 1)
                await ctx.tick().until(dut.up_cmd.ready)
                ctx.set(dut.up_cmd.valid, 0)
                got = bytearray()
                while len(got) < op[2]:
                    take = rng.random() < ready
                    ctx.set(dut.up_data.ready, take)
                    _, _, v, d = await ctx.tick().sample(dut.up_data.valid, dut.up_data.payload)
                    if v and take:
                        got += int(d).to_bytes(wb, "little")
                ctx.set(dut.up_data.ready, 0)
                if bytes(got) != expect[i]:
                    problems.append(f"op {i}: read [{op[1]:#x}, +{op[2]}) differs from the golden model")
            elif op[0] == "write":
                data = op[2]
                words = len(data) // wb
                ctx.set(dut.up_wcmd.payload.addr, op[1])
                ctx.set(dut.up_wcmd.payload.bytes, len(data))
                ctx.set(dut.up_wcmd.valid, 1)
                await ctx.tick().until(dut.up_wcmd.ready)
                ctx.set(dut.up_wcmd.valid, 0)
                ctx.set(dut.up_wdone.ready, 1)
                k, done = 0, False
                while k < words or not done:
                    offer = k < words and rng.random() < ready
                    if offer:
                        ctx.set(dut.up_wdata.payload, int.from_bytes(data[k * wb:(k + 1) * wb], "little"))
                    ctx.set(dut.up_wdata.valid, offer)
                    _, _, r, dv = await ctx.tick().sample(dut.up_wdata.ready, dut.up_wdone.valid)
                    k += int(offer and r)
                    done = done or bool(dv)
                ctx.set(dut.up_wdata.valid, 0)
                ctx.set(dut.up_wdone.ready, 0)
            else:
                _, act, a, n, st = op
                for name, value in (("action", act), ("addr", a), ("bytes", n), ("store", st)):
                    ctx.set(getattr(dut.ctl.payload, name), value)
                ctx.set(dut.ctl.valid, 1)
                await ctx.tick().until(dut.ctl.ready)
                ctx.set(dut.ctl.valid, 0)
                while not ctx.get(dut.ctl_done):
                    await ctx.tick()
                await ctx.tick()
        for _ in range(200_000):
            if ctx.get(dut.idle):
                break
            await ctx.tick()
        else:
            problems.append("the cache never became idle")
        tags = []
        for t in range(geometry.lines):
            ctx.set(dut.tag_addr, t)
            await ctx.tick()
            tags.append(ctx.get(dut.tag_word))
        if tags != [line.word() for row in model.lines for line in row]:
            problems.append("tag words differ from the golden model")
        for c, v in model.counters.items():
            if ctx.get(getattr(dut, c)) != v:
                problems.append(f"counter {c}: RTL {ctx.get(getattr(dut, c))}, golden {v}")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for p in bench.processes():
        sim.add_testbench(p, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(drive)
    sim.run()
    gold = [(EVENT_KINDS[e.kind], int(e.write), 0 if e.kind == "bypass" else e.set,
             e.way if e.kind not in ("bypass", "skip") and e.way >= 0 else 0) for e in model.events]
    rtl = [(k, w, 0 if k == EVENT_KINDS["bypass"] else s, 0 if k in (EVENT_KINDS["bypass"], EVENT_KINDS["skip"]) else y)
           for k, w, s, y in events]
    for page in set(memory.pages) | set(gold_mem.pages):
        if bytes(memory.pages.get(page, bytes(4096))) != bytes(gold_mem.pages.get(page, bytes(4096))):
            problems.append(f"memory page {page * 4096:#x} differs from the golden model")
    return problems, rtl, gold


def run_omap_bench(geometry, jobs, memory, *, seed: int = 1, stall: float = 0.2, latency=(0, 6)):
    """Run OMAP ``jobs`` (descriptor field dicts) on an ObliviousMapUnit in amaranth.sim and the
    golden model on a copy of ``memory``, job by job; return (problems, faults, host commands)."""
    from amaranth.sim import Simulator

    from hbmforge.engines.memory import CB_BYTES, ControlBlock
    from hbmforge.numerics.omap import OmapFault, run_omap
    from hbmforge.numerics.program import SparseMemory

    from .omap import ObliviousMapUnit

    gold = SparseMemory({k: bytearray(v) for k, v in memory.pages.items()})
    snaps, gold_faults = [], []
    for d in jobs:
        try:
            run_omap(gold, d, geometry)
            gold_faults.append(0)
        except OmapFault as err:
            gold_faults.append(int(err.code))
        snaps.append({k: bytes(v) for k, v in gold.pages.items()})
    dut = ObliviousMapUnit(geometry)
    wb = geometry.word_bytes
    bench = ChannelBench(memory, word_bytes=wb, readers={"rd": (dut.rd_cmd, dut.rd_data), "h": (dut.h_cmd, dut.h_data)},
                         writers={"wr": (dut.wr_cmd, dut.wr_data, dut.wr_done),
                                  "hw": (dut.h_wcmd, dut.h_wdata, dut.h_wdone)}, stall=stall, seed=seed, latency=latency)
    problems, faults = [], []
    timing = {name for name in ControlBlock.TIMING_FIELDS}

    def same(page, want, ctrl):
        got = bytes(memory.pages.get(page, bytes(4096)))
        if got == want:
            return True
        if page * 4096 <= ctrl < (page + 1) * 4096:        # the control block: timing fields aside
            off = ctrl - page * 4096
            a = ControlBlock.unpack(got[off:off + CB_BYTES])
            b = ControlBlock.unpack(want[off:off + CB_BYTES])
            for name in timing:
                setattr(a, name, 0)
                setattr(b, name, 0)
            rest_a = got[:off] + got[off + CB_BYTES:]
            rest_b = want[:off] + want[off + CB_BYTES:]
            return a == b and rest_a == rest_b
        return False

    async def drive(ctx):
        for i, d in enumerate(jobs):
            for k, v in d.items():
                ctx.set(getattr(dut.job.payload, k), int(v))
            ctx.set(dut.job.valid, 1)
            await ctx.tick().until(dut.job.ready)
            ctx.set(dut.job.valid, 0)
            ctx.set(dut.done.ready, 1)
            for _ in range(2_000_000):
                if ctx.get(dut.done.valid):
                    break
                await ctx.tick()
            faults.append(ctx.get(dut.fault))
            await ctx.tick()
            ctx.set(dut.done.ready, 0)
            pages = set(snaps[i]) | set(memory.pages)
            bad = [p for p in pages if not same(p, snaps[i].get(p, bytes(4096)), d["ctrl_addr"])]
            if bad:
                problems.append(f"job {i}: memory pages {[hex(p * 4096) for p in sorted(bad)]} differ from golden")
            if faults[-1] != gold_faults[i]:
                problems.append(f"job {i}: fault {faults[-1]}, golden {gold_faults[i]}")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for p in bench.processes():
        sim.add_testbench(p, background=True)
    sim.add_testbench(drive)
    sim.run()
    return problems, faults, bench.commands
