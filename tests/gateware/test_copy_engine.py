"""CopyEngine alone in amaranth.sim: bit-exact with hbmforge.numerics.copy, one command each way.

A :class:`CopyBench` (a :class:`~hbmforge.generators.dma_bench.DmaBench`) serves every channel
of the engine's signature from one byte memory (every port reaches the same memory), with
random stalls on the readers and random back-pressure on the writers. Each scenario runs
random COPY/FILL jobs back to back and compares the whole memory with
:func:`hbmforge.numerics.copy.run_copy` applied to a copy of it, so a word written outside the
destination, a word missed or a word out of order all fail. The bench also polices every
write as it lands (destination channel, range, once per word), the DMA commands of each job,
and the engine's ``busy``/``stall``/``mac_inc``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from amaranth.sim import Simulator

from hbmforge.config import parse_config
from hbmforge.encodings import CopyMode
from hbmforge.engines import first_error
from hbmforge.engines.copy import copy_checks
from hbmforge.generators.copy.engine import CopyEngine
from hbmforge.generators.dma_bench import DmaBench
from hbmforge.layout import DesignLayout
from hbmforge.numerics.copy import fill_pattern, run_copy

from designs import tiny_config_dict
from sim_helpers import rejects

MEM_BYTES = 1 << 15


def copy_layout(*, data_width: int = 64, buffer_words: int = 4, weight_ports: int = 2) -> DesignLayout:
    """tiny (matmul, small) + a copy engine: ports ``data`` and ``w0 .. w<weight_ports-1>``."""
    cfg = tiny_config_dict(weight_ports=weight_ports)
    cfg["axi"]["data_width"] = data_width
    cfg["engines"].append({"kind": "copy", "buffer_words": buffer_words})
    return DesignLayout(parse_config(cfg))


class ByteMemory:
    """A bytearray as the golden model's memory (read/write/check at address 0)."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)

    def check(self, addr: int, n: int) -> None:
        assert 0 <= addr and addr + n <= len(self.data), (addr, n)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.data[addr:addr + n])

    def write(self, addr: int, data: bytes) -> None:
        self.data[addr:addr + len(data)] = data


@dataclass
class Job:
    """One COPY/FILL job (descriptor slots) and what the bench saw while it ran."""

    d: dict
    write_error: bool = False           # the destination writer answers with an error
    done_error: int | None = None       # done.payload.error the engine reported
    cycles: int = 0                     # cycles after the job handshake up to the done handshake
    words_moved: int = 0                # destination word handshakes
    first_word: int | None = None       # cycle (1 = the one after the job handshake) of the first word out
    last_word: int | None = None
    busy_cycles: int = 0
    stall_cycles: int = 0
    written: list = field(default_factory=list)     # word addresses, in write order


@dataclass(frozen=True)
class Cycle:
    """What the monitor samples at one clock edge."""

    busy: int
    stall: int
    mac_inc: int
    job_hs: bool
    done_hs: bool
    done_error: int
    moved: bool           # a destination word handshake


def reader_name(port: int) -> str:
    return "src" if port == 0 else f"w{port - 1}"


def writer_name(port: int) -> str:
    return "out" if port == 0 else f"sw{port - 1}"


class CopyBench(DmaBench):
    """Runs :class:`Job` records on a ``CopyEngine`` and checks every write as it lands.

    The writer is the DmaBench writer plus an error flag per command (``Job.write_error``).
    """

    def __init__(self, layout: DesignLayout, *, seed: int = 0, stall: float = 0.3,
                 backpressure: float = 0.3, response_delay=(1, 8)):
        super().__init__(layout, CopyEngine(layout), seed=seed, stall=stall,
                         backpressure=backpressure, response_delay=response_delay)
        self.mem = bytearray(random.Random(seed + 1000).randbytes(MEM_BYTES))
        self.initial = bytes(self.mem)
        self.jobs: list[Job] = []
        self.current: Job | None = None
        self.violations: list[str] = []
        self.monitor_log: list[tuple] = []

    def add(self, job: Job | dict) -> Job:
        job = job if isinstance(job, Job) else Job(job)
        code, why = first_error(copy_checks(self.layout), job.d)
        assert int(code) == 0, f"the scenario made an invalid job: {why}"
        self.jobs.append(job)
        return job

    # -- policing ------------------------------------------------------------------------
    def check_read(self, name, addr, nbytes):
        job = self.current
        if job is None or job.d["mode"] != CopyMode.COPY or name != reader_name(job.d["src_port"]):
            self.violations.append(f"unexpected read on {name} at {addr:#x}+{nbytes} during {job}")

    def check_write(self, name, addr, nbytes):
        job = self.current
        if job is None or name != writer_name(job.d["dst_port"]):
            self.violations.append(f"write on {name} at {addr:#x} during {job}")
            return
        lo, hi = job.d["dst_addr"], job.d["dst_addr"] + job.d["bytes"]
        if not lo <= addr < hi or addr + nbytes > hi:
            self.violations.append(f"write at {addr:#x}+{nbytes} outside [{lo:#x}, {hi:#x})")
        if addr in job.written:
            self.violations.append(f"word {addr:#x} written twice")
        job.written.append(addr)

    def write_error(self, name, addr, nbytes):
        return self.current is not None and self.current.write_error

    # -- running ------------------------------------------------------------------------
    def run(self, max_cycles: int = 20_000) -> list[Job]:
        dut = self.dut
        lay = self.layout
        writers = [dut.out_data] + [dut.sw_data[i] for i in range(len(lay.ports) - 1)]
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        self.add_dma(sim)

        async def monitor(ctx):
            """Per cycle: busy, stall, mac_inc, the job/done handshakes, a destination word moved."""
            sigs = [dut.busy, dut.stall, dut.mac_inc, dut.job.valid, dut.job.ready,
                    dut.done.valid, dut.done.ready, dut.done.payload.error]
            for w in writers:
                sigs += [w.valid, w.ready]
            async for _, _, busy, stall, mac, jv, jr, dv, dr, derr, *wv in ctx.tick().sample(*sigs):
                moved = any(wv[i] and wv[i + 1] for i in range(0, len(wv), 2))
                self.monitor_log.append(Cycle(busy, stall, mac, jv and jr, dv and dr, derr, moved))

        async def driver(ctx):
            for job in self.jobs:
                for name, value in job.d.items():
                    if name != "op":
                        ctx.set(getattr(dut.job.payload, name), value)
                self.current = job
                await self.submit(ctx, max_cycles, lambda: f"job {job.d}")
                await ctx.tick()
                self.current = None
            for _ in range(4):
                await ctx.tick()

        sim.add_testbench(monitor, background=True)
        sim.add_testbench(driver)
        self.run_sim(sim, None)
        self._job_stats()
        return self.jobs

    def _job_stats(self) -> None:
        """Cut the monitor log at the job and done handshakes into per-job figures."""
        log = self.monitor_log
        starts = [i for i, c in enumerate(log) if c.job_hs]
        ends = [i for i, c in enumerate(log) if c.done_hs]
        assert len(starts) == len(ends) == len(self.jobs), (len(starts), len(ends), len(self.jobs))
        for job, start, end in zip(self.jobs, starts, ends):
            assert start < end
            part = log[start + 1:end + 1]          # busy from the cycle after the job handshake
            moved = [i + 1 for i, c in enumerate(part) if c.moved]
            job.cycles = end - start
            job.busy_cycles = sum(c.busy for c in part)
            job.stall_cycles = sum(c.stall for c in part)
            job.words_moved = len(moved)
            job.first_word, job.last_word = (moved[0], moved[-1]) if moved else (None, None)
            job.done_error = log[end].done_error

    def golden(self) -> bytes:
        mem = ByteMemory(self.initial)
        for job in self.jobs:
            run_copy(mem, job.d)
        return bytes(mem.data)


# -- scenarios ---------------------------------------------------------------------------------

def copy_job(src_port, src_addr, dst_port, dst_addr, nbytes, **extra) -> dict:
    return {"mode": CopyMode.COPY, "src_port": src_port, "src_addr": src_addr, "dst_port": dst_port,
            "dst_addr": dst_addr, "bytes": nbytes, "value": extra.get("value", 0)}


def fill_job(dst_port, dst_addr, nbytes, value, *, src_port=0, src_addr=0) -> dict:
    return {"mode": CopyMode.FILL, "src_port": src_port, "src_addr": src_addr, "dst_port": dst_port,
            "dst_addr": dst_addr, "bytes": nbytes, "value": value}


def random_range(rng, layout, words, avoid=None) -> int:
    """A word-aligned address for ``words`` words inside the bench memory, not overlapping ``avoid``."""
    wb = layout.word_bytes
    while True:
        addr = rng.randrange(0, MEM_BYTES - words * wb + 1, wb)
        if avoid is None or addr + words * wb <= avoid[0] or avoid[0] + avoid[1] <= addr:
            return addr


def random_words(rng, layout) -> int:
    """One word, a few words, or up to several FIFOs' worth."""
    fifo = layout.config.engine("copy").buffer_words
    return rng.choice([1, 2, rng.randrange(1, fifo + 1), fifo, fifo + 1,
                       rng.randrange(fifo, 4 * fifo + 2)])


def random_copy(rng, layout, src_port, dst_port) -> dict:
    wb = layout.word_bytes
    words = random_words(rng, layout)
    src = random_range(rng, layout, words)
    dst = random_range(rng, layout, words, avoid=(src, words * wb))
    return copy_job(src_port, src, dst_port, dst, words * wb, value=rng.getrandbits(64))


def assert_memory_matches_golden(bench: CopyBench) -> None:
    golden = bench.golden()
    assert bench.violations == []
    if bytes(bench.mem) != golden:
        diff = [a for a in range(0, MEM_BYTES, 8) if bench.mem[a:a + 8] != golden[a:a + 8]]
        raise AssertionError(f"{len(diff)} memory words differ from run_copy, first at {diff[0]:#x}: "
                             f"got {bench.mem[diff[0]:diff[0] + 8].hex()}, want {golden[diff[0]:diff[0] + 8].hex()}")
    for job in bench.jobs:
        wb = bench.layout.word_bytes
        want = list(range(job.d["dst_addr"], job.d["dst_addr"] + job.d["bytes"], wb))
        assert job.written == want, f"job {job.d}: words written out of order or missing"


def expected_commands(bench: CopyBench) -> dict[str, list]:
    want = {name: [] for name in bench.commands}
    for job in bench.jobs:
        d = job.d
        if d["mode"] == CopyMode.COPY:
            want[reader_name(d["src_port"])].append((d["src_addr"], d["bytes"]))
        want[writer_name(d["dst_port"])].append((d["dst_addr"], d["bytes"]))
    return want


# -- tests ------------------------------------------------------------------------------------

def test_copies_between_every_pair_of_ports_match_the_golden_model_under_stalls():
    lay = copy_layout()
    rng = random.Random(11)
    bench = CopyBench(lay, seed=11, stall=0.3, backpressure=0.3)
    ports = range(len(lay.ports))
    for src in ports:
        for dst in ports:                       # same port included: its reader and its writer
            bench.add(random_copy(rng, lay, src, dst))
    rng.shuffle(bench.jobs)
    bench.run()
    assert_memory_matches_golden(bench)
    assert bench.commands == expected_commands(bench)


def test_a_copy_may_read_what_the_previous_job_wrote():
    """Jobs run in order: a chain data -> w0 -> w1 -> data moves one buffer three times."""
    lay = copy_layout()
    wb = lay.word_bytes
    bench = CopyBench(lay, seed=12, stall=0.4, backpressure=0.2)
    n = 9 * wb
    a, b, c, d = 0x100, 0x2000, 0x4000, 0x6000
    bench.add(copy_job(0, a, 1, b, n))
    bench.add(copy_job(1, b, 2, c, n))
    bench.add(fill_job(1, b, n, 0x1122334455667788))       # the middle copy is overwritten afterwards
    bench.add(copy_job(2, c, 0, d, n))
    bench.run()
    assert_memory_matches_golden(bench)
    assert bench.mem[d:d + n] == bench.initial[a:a + n]


def test_fill_repeats_the_pattern_under_backpressure():
    lay = copy_layout(data_width=128, buffer_words=4)           # two pattern copies per word
    rng = random.Random(13)
    bench = CopyBench(lay, seed=13, stall=0.2, backpressure=0.6)
    wb = lay.word_bytes
    values = [0, (1 << 64) - 1, 0x0123_4567_89AB_CDEF, 1 << 63, 0x8000_0000_0000_0001, rng.getrandbits(64)]
    for i, value in enumerate(values):
        words = random_words(rng, lay)
        # FILL ignores the source: give it a source port and address that a COPY could not use
        bench.add(fill_job(i % len(lay.ports), random_range(rng, lay, words), words * wb, value,
                           src_port=len(lay.ports) - 1 - i % len(lay.ports), src_addr=0x7FFF_FFF0 + 3))
    bench.run()
    assert_memory_matches_golden(bench)
    for job in bench.jobs:
        d = job.d
        got = bench.mem[d["dst_addr"]:d["dst_addr"] + d["bytes"]]
        assert got == fill_pattern(d["value"], d["bytes"])
        assert got[:8] == d["value"].to_bytes(8, "little")
    assert bench.commands["src"] == [] and bench.commands["w0"] == [] and bench.commands["w1"] == []


def test_random_copy_and_fill_jobs_with_a_two_word_fifo():
    """The smallest FIFO: the reader waits for the writer on almost every word."""
    lay = copy_layout(buffer_words=2)
    rng = random.Random(14)
    bench = CopyBench(lay, seed=14, stall=0.25, backpressure=0.5)
    nports = len(lay.ports)
    for _ in range(30):
        if rng.random() < 0.3:
            words = random_words(rng, lay)
            bench.add(fill_job(rng.randrange(nports), random_range(rng, lay, words), words * lay.word_bytes,
                               rng.getrandbits(64)))
        else:
            bench.add(random_copy(rng, lay, rng.randrange(nports), rng.randrange(nports)))
    bench.run()
    assert_memory_matches_golden(bench)
    assert bench.commands == expected_commands(bench)


def test_each_job_issues_one_read_and_one_write_command_of_its_size():
    lay = copy_layout(buffer_words=8)
    wb = lay.word_bytes
    bench = CopyBench(lay, seed=15, stall=0.1, backpressure=0.1)
    bench.add(copy_job(2, 0x1000, 1, 0x3000, 40 * wb))                  # 5 FIFOs' worth
    bench.add(fill_job(0, 0x5008, wb, 0xDEAD_BEEF_0000_0001))
    bench.add(copy_job(0, 0x0, 0, 0x0 + wb, wb))                        # touching, same port
    bench.run()
    assert_memory_matches_golden(bench)
    assert bench.commands == {
        "src": [(0x0, wb)], "w0": [], "w1": [(0x1000, 40 * wb)],
        "out": [(0x5008, wb), (wb, wb)], "sw0": [(0x3000, 40 * wb)], "sw1": [],
    }


def test_busy_stall_and_mac_inc_follow_the_job():
    lay = copy_layout()
    rng = random.Random(16)
    bench = CopyBench(lay, seed=16, stall=0.3, backpressure=0.3)
    for src, dst in [(0, 1), (1, 1), (2, 0)]:
        bench.add(random_copy(rng, lay, src, dst))
    bench.add(fill_job(2, 0x100, 7 * lay.word_bytes, 5))
    bench.run()
    assert_memory_matches_golden(bench)
    assert bench.dut.mac_inc.shape().width == 0 and bench.dut.signature.max_mac_inc == 0
    # busy rises the cycle after the job handshake and falls the cycle after done's
    running = False
    for cycle, c in enumerate(bench.monitor_log):
        assert c.busy == running, f"cycle {cycle}: busy {c.busy}, a job is {'' if running else 'not '}running"
        assert c.stall == (c.busy and not c.moved), f"cycle {cycle}: {c}"
        assert c.mac_inc == 0
        if c.job_hs:
            assert not running
            running = True
        if c.done_hs:
            running = False
    for job in bench.jobs:
        words = job.d["bytes"] // lay.word_bytes
        assert job.words_moved == words
        assert job.busy_cycles == job.cycles
        assert job.stall_cycles == job.busy_cycles - words


def test_writer_error_is_passed_to_done_and_the_next_job_runs_clean():
    lay = copy_layout()
    rng = random.Random(17)
    bench = CopyBench(lay, seed=17, stall=0.2, backpressure=0.2)
    jobs = [bench.add(random_copy(rng, lay, 1, 0)),
            bench.add(Job(random_copy(rng, lay, 0, 2), write_error=True)),
            bench.add(Job(fill_job(1, 0x40, 3 * lay.word_bytes, 9), write_error=True)),
            bench.add(random_copy(rng, lay, 2, 1))]
    bench.run()
    assert_memory_matches_golden(bench)        # the bench still lands the words; only B says error
    assert [j.done_error for j in jobs] == [0, 1, 1, 0]


@pytest.mark.parametrize("data_width,buffer_words", [(64, 2), (64, 4), (256, 32)])
def test_copy_streams_one_word_per_cycle_when_neither_side_stalls(data_width, buffer_words):
    """Reader and writer both always ready: one destination word per cycle, after a fixed start-up,
    whatever the FIFO depth the config allows."""
    lay = copy_layout(data_width=data_width, buffer_words=buffer_words)
    wb = lay.word_bytes
    words = 256
    bench = CopyBench(lay, seed=18, stall=0.0, backpressure=0.0, response_delay=(1, 2))
    bench.add(copy_job(1, 0x0, 2, words * wb, words * wb))
    bench.add(copy_job(0, 0x0, 0, words * wb, words * wb))
    bench.add(fill_job(1, 0x0, words * wb, 0x5A5A_0F0F_3C3C_A5A5))
    bench.run()
    assert_memory_matches_golden(bench)
    for job in bench.jobs:
        span = job.last_word - job.first_word + 1
        assert span == words, f"{words} words took {span} cycles: {job}"
        # start-up (job -> first word) and wind-down (last word -> done, 1 response cycle) are small
        assert job.first_word <= 4, job
        assert job.cycles - job.last_word <= 4, job
        print(f"{data_width}-bit, {buffer_words}-word FIFO, {CopyMode(job.d['mode']).name}: {words} words in {job.cycles} cycles "
              f"(first word at {job.first_word}, {span / words:.3f} cycles/word while streaming)")


def test_engine_converts_to_verilog_and_rejects_designs_without_a_copy_engine():
    from amaranth.back import verilog

    text = verilog.convert(CopyEngine(copy_layout()), name="copy_engine")
    assert "module copy_engine" in text
    rejects(lambda: CopyEngine(DesignLayout(parse_config(tiny_config_dict()))), ValueError, "no copy engine")
    rejects(lambda: CopyEngine({"kind": "copy"}), TypeError, "DesignLayout")


def test_signature_has_a_reader_and_a_writer_on_every_port():
    lay = copy_layout(weight_ports=4)
    eng = CopyEngine(lay)
    eng._MustUse__silence = True
    ch = eng.signature.channels
    assert ch.data_readers == ("src",) and ch.data_writer
    assert ch.stream_readers == ch.stream_writers == len(lay.ports) - 1 == 4
    assert all(p.reads and p.writes for p in lay.ports)
    assert eng.buffer_words == lay.config.engine("copy").buffer_words


def edge_descriptors(layout, rng, count):
    """Random COPY descriptors near every rule's edges (ports, lengths, alignment, overlap)."""
    wb = layout.word_bytes
    ports = len(layout.ports)
    top = (((1 << 32) - 1) // wb) * wb
    for _ in range(count):
        n = rng.choice([0, wb - 1, wb, wb + 4, 7 * wb, top, top + wb, 1 << 32, (1 << 32) + wb,
                        rng.getrandbits(64), rng.randrange(1, 64) * wb])
        dst = rng.choice([0x1_0000, 0x1_0000 + rng.choice([1, 4, wb // 2]), (1 << 64) - wb,
                          rng.getrandbits(64) & ~(wb - 1)])
        near = dst + rng.choice([-n, -n + wb, -wb, 0, wb, n - wb, n, n + wb, rng.randrange(-4, 5)])
        yield {
            "mode": rng.choice([0, 0, 1, 1, 2, 3, 1 << 63, rng.getrandbits(64)]),
            "src_port": rng.choice([0, 1, ports - 1, ports, ports + 1, 1 << 32, rng.getrandbits(64)]),
            "src_addr": near % (1 << 64),
            "dst_port": rng.choice([0, 1, ports - 1, ports, 1 << 40]),
            "dst_addr": dst,
            "bytes": n % (1 << 64),
            "value": rng.getrandbits(64),
        }


@pytest.mark.parametrize("data_width,weight_ports", [(64, 2), (256, 4)])
def test_rtl_checks_give_the_golden_code_for_every_edge_descriptor(data_width, weight_ports):
    """The command processor's form of copy_checks (rtl_error_code) against the golden first_error."""
    from amaranth.hdl import Module, Signal

    from hbmforge.generators.engine import rtl_error_code

    lay = copy_layout(data_width=data_width, weight_ports=weight_ports)
    m = Module()
    fields = {name: Signal(64, name=name) for name in ("mode", "src_port", "src_addr", "dst_port",
                                                       "dst_addr", "bytes", "value")}
    code = rtl_error_code(m, copy_checks(lay), fields)
    rng = random.Random(data_width)
    cases = list(edge_descriptors(lay, rng, 1500))
    seen = set()
    mismatches = []

    async def bench(ctx):
        for d in cases:
            for name, value in d.items():
                ctx.set(fields[name], value)
            got = ctx.get(code)
            want, why = first_error(copy_checks(lay), d)
            seen.add(want)
            if got != want:
                mismatches.append((d, got, want, why))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert mismatches == [], mismatches[:3]
    from hbmforge.engines import FAMILIES

    assert seen == {0, *FAMILIES["copy"].errors}, seen             # every rule was reached
