"""The whole Kernel with its default engines (matmul + copy) in amaranth.sim against the golden program.

The kernel (``generators/shell/kernel.py``, engines from ``generators/registry.py``) runs over
one AXI memory model per port (``shell_axi_model.AxiMemoryPort``, random latency and
back-pressure on every channel, AXI rule checks), all over one memory. Each program is also run
by :func:`hbmforge.numerics.program.execute` on a copy of the memory taken before the run;
every page of memory, STATUS, DESC_DONE, MAC_OPS and the per-port byte counters must equal the
golden ones. Matmul operands are packed with ``generators/matmul/testing.py``.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import CopyMode, ErrorCode, Opcode, OutMode
from hbmforge.generators.matmul.testing import (pack_activations, pack_requant, pack_scales,
                                                pack_weights, random_case, unpack_outputs)
from hbmforge.layout import DesignLayout
from hbmforge.numerics import program as golden
from hbmforge.numerics.copy import fill_pattern
from kernel_testbench import KernelBench

from designs import tiny_config_dict

AP_DONE, AP_IDLE = 0b0010, 0b0100


def kernel_layout() -> DesignLayout:
    """The tiny matmul (2 rows x 16 lanes, two weight ports, 64-bit words) plus a copy engine."""
    cfg = tiny_config_dict()
    cfg["axi"]["max_burst_beats"] = 8
    cfg["engines"].append({"kind": "copy", "buffer_words": 8})
    return DesignLayout(parse_config(cfg))


@pytest.fixture(scope="module")
def layout() -> DesignLayout:
    return kernel_layout()


def kernel_bench(layout: DesignLayout, *, seed: int = 0, stall: float = 0.25) -> KernelBench:
    """The kernel with its default engines (matmul + copy)."""
    return KernelBench(layout, seed=seed, stall=stall, latency=(2, 12))


# -- scenarios ---------------------------------------------------------------------------------

def copy_d(src_port, src_addr, dst_port, dst_addr, nbytes):
    return {"op": Opcode.COPY, "mode": CopyMode.COPY, "src_port": src_port, "src_addr": src_addr,
            "dst_port": dst_port, "dst_addr": dst_addr, "bytes": nbytes, "value": 0}


def fill_d(dst_port, dst_addr, nbytes, value):
    return {"op": Opcode.COPY, "mode": CopyMode.FILL, "src_port": 0, "src_addr": 0,
            "dst_port": dst_port, "dst_addr": dst_addr, "bytes": nbytes, "value": value}


def place_matmul(bench: KernelBench, base: int, np_rng, *, m, k, n, wbits, out_mode) -> dict:
    """Random operands for one MATMUL at ``base`` (4 KiB apart); returns its descriptor."""
    lay = bench.layout
    wb = lay.word_bytes
    case = random_case(lay, np_rng, m=m, k=k, n=n, wbits=wbits, out_mode=out_mode)
    addr = {name: base + i * 0x1000 for i, name in enumerate(["x", "s", "q", "y", "w0", "w1"])}
    bench.mem.write(addr["x"], pack_activations(case.x, wb))
    bench.mem.write(addr["s"], pack_scales(case.s, wb))
    if out_mode == OutMode.INT8:
        bench.mem.write(addr["q"], pack_requant(case.mult, case.shift, wb))
    bench.mem.write(addr["y"], b"\xA5" * 0x1000)                 # stale output: must be overwritten
    for p, stripe in enumerate(pack_weights(case.w, case.wbits, lay.mm.weight_ports, lay.config.data_width)):
        bench.mem.write(addr[f"w{p}"], stripe)
    d = {"op": Opcode.MATMUL, "m": case.x.shape[0], "k": case.x.shape[1], "n": n, "wbits": case.wbits,
         "out_mode": out_mode, "out_shift": case.out_shift, "x_addr": addr["x"], "s_addr": addr["s"],
         "q_addr": addr["q"], "y_addr": addr["y"]}
    d.update({f"w_addr{p}": addr[f"w{p}"] for p in range(lay.mm.weight_ports)})
    d["case"] = case
    return d


def descriptor(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "case"}


def assert_matches_golden(bench: KernelBench, regs: dict, want: golden.ProgramResult, expected_mem) -> None:
    lay = bench.layout
    diff = bench.differences(expected_mem)
    assert diff == [], (f"{len(diff)} words differ from the golden program, first at {diff[0]:#x}: "
                        f"got {bench.mem.read(diff[0], 8).hex()}, want {expected_mem.read(diff[0], 8).hex()}")
    assert (regs["STATUS"], regs["DESC_DONE"]) == (want.status, want.descriptors_done), want.detail
    assert regs["MAC_OPS"] == want.mac_ops
    for i, p in enumerate(lay.ports):
        assert regs[f"{p.name.upper()}_BYTES_WRITTEN"] == want.bytes_written[i], p.name
        if p.role == "stream":
            assert regs[f"{p.name.upper()}_BYTES_READ"] == want.weight_bytes_read[i - 1], p.name


# -- tests ------------------------------------------------------------------------------------

def test_program_of_copies_fills_and_matmuls_matches_the_golden_program(layout):
    bench = kernel_bench(layout, seed=21, stall=0.25)
    wb = layout.word_bytes
    np_rng = np.random.default_rng(21)
    rng = random.Random(21)
    a = place_matmul(bench, 0x10_0000, np_rng, m=3, k=32, n=4, wbits=4, out_mode=OutMode.INT32)
    b = place_matmul(bench, 0x20_0000, np_rng, m=2, k=48, n=3, wbits=8, out_mode=OutMode.INT8)
    # a's weights are staged by the program itself (w0 -> w1 -> ...), so the matmul reads COPY output
    wbytes = layout.matmul.weight_port_bytes(4, 32, 4)
    staged = [0x30_0000, 0x30_1000]
    blob = 0x40_0F80                                             # 0x80 below a 4 KiB boundary
    bench.mem.write(blob, rng.randbytes(70 * wb))
    bench.mem.write(0x50_0000, rng.randbytes(0x2000))            # stale data under the fills
    descs = [
        copy_d(1, a["w_addr0"], 2, staged[0], wbytes),           # w0 -> w1
        copy_d(2, a["w_addr1"], 1, staged[1], wbytes),           # w1 -> w0
        {**descriptor(a), "w_addr0": staged[0], "w_addr1": staged[1]},
        copy_d(0, a["y_addr"], 2, 0x50_1000, 2 * wb * 3),        # data -> w1: part of a's output
        fill_d(1, 0x50_0010, 37 * wb, 0x0123_4567_89AB_CDEF),
        copy_d(0, blob, 0, blob + 70 * wb, 70 * wb),             # touching, data -> data, crosses 4 KiB
        descriptor(b),
        copy_d(2, blob + 8 * wb, 2, 0x60_0FF8, 33 * wb),         # w1 -> w1, the write crosses 4 KiB
        fill_d(0, 0x50_1800, wb, (1 << 64) - 1),
        fill_d(2, 0x50_1900, 3 * wb, 1 << 63),
        {"op": Opcode.END},
        fill_d(0, blob, 8 * wb, 0),                              # after END: never runs
    ]
    bench.write_program(0x1000, descs)
    expected = bench.snapshot()
    want = golden.execute(expected, 0x1000, len(descs), layout)
    assert want.ok and want.descriptors_done == 10, want.detail
    regs = {}

    async def host(ctx):
        regs.update(await bench.run(ctx, 0x1000, len(descs)))

    bench.simulate(host)
    assert_matches_golden(bench, regs, want, expected)
    assert regs["CTRL"] & (AP_DONE | AP_IDLE) == AP_DONE | AP_IDLE
    assert 0 < regs["STALL_CYCLES"] < regs["CYCLES"]
    # the golden model itself agrees with the matmul reference on the staged weights
    for d in (a, b):
        case = d["case"]
        raw = bench.mem.read(d["y_addr"], layout.matmul.out_bytes(case.x.shape[0], case.w.shape[0], case.out_mode))
        np.testing.assert_array_equal(unpack_outputs(raw, case.x.shape[0], case.w.shape[0], layout.mm.rows,
                                                     case.out_mode), case.expected(layout.mm.group_size))
    # the data port read: descriptors (at most two fetched past END), both matmuls' operands, the copy
    copy_reads = 2 * wb * 3 + 70 * wb
    assert regs["DATA_BYTES_READ"] >= 11 * layout.descriptor_bytes + copy_reads


def _bad_copies(layout):
    """(descriptor, expected code) for each COPY rule and which one wins."""
    wb = layout.word_bytes
    ports = len(layout.ports)
    good = copy_d(0, 0x70_0000, 1, 0x70_1000, 4 * wb)
    return [
        ({**good, "mode": 2}, ErrorCode.BAD_COPY_MODE),
        ({**good, "mode": 3, "dst_port": ports, "bytes": 0}, ErrorCode.BAD_COPY_MODE),
        ({**good, "dst_port": ports}, ErrorCode.BAD_PORT),
        ({**good, "src_port": ports + 4}, ErrorCode.BAD_PORT),
        ({**good, "src_port": 1 << 33}, ErrorCode.BAD_PORT),                 # high bits past the job field
        ({**good, "dst_port": ports, "dst_addr": 0x70_1003}, ErrorCode.BAD_PORT),
        ({**good, "bytes": 0}, ErrorCode.BAD_LENGTH),
        ({**good, "bytes": 3 * wb + 4}, ErrorCode.BAD_LENGTH),
        ({**good, "bytes": 1 << 32}, ErrorCode.BAD_LENGTH),
        ({**good, "bytes": (1 << 32) + wb}, ErrorCode.BAD_LENGTH),           # 32 low bits look fine
        ({**good, "dst_addr": 0x70_1004}, ErrorCode.MISALIGNED),
        ({**good, "src_addr": 0x70_0001}, ErrorCode.MISALIGNED),
        ({**fill_d(1, 0x70_1002, wb, 5)}, ErrorCode.MISALIGNED),
        ({**good, "src_addr": 0x70_1000 + 2 * wb, "dst_port": 2}, ErrorCode.OVERLAP),
        ({**good, "src_addr": 0x70_1000 - 3 * wb}, ErrorCode.OVERLAP),
        ({**good, "src_addr": 0x70_1000, "src_port": 0, "dst_port": 0}, ErrorCode.OVERLAP),
        ({**good, "src_addr": 0x70_0FFC, "bytes": 4 * wb}, ErrorCode.MISALIGNED),   # overlapping too
    ]


def test_bad_copy_descriptors_stop_with_the_golden_code_and_index(layout):
    """One simulation, one run per bad descriptor, each at index 1 between two good fills."""
    bench = kernel_bench(layout, seed=22, stall=0.15)
    wb = layout.word_bytes
    runs = []
    for j, (bad, code) in enumerate(_bad_copies(layout)):
        addr = 0x8000 + j * 0x200
        bench.write_program(addr, [fill_d(2, 0x90_0000 + j * 0x100, 2 * wb, j + 1), bad,
                                   fill_d(0, 0x90_8000 + j * 0x100, wb, 0xEE)])
        runs.append((addr, code))
    # FILL ignores its source; port numbers only fit the job record after the checks
    ok_addr = 0x8000 + len(runs) * 0x200
    ok = [{**fill_d(1, 0x91_0000, 2 * wb, 0x42), "src_port": 1 << 33, "src_addr": 0x3},
          copy_d(2, 0x90_0000, 0, 0x91_1000, 2 * wb)]
    bench.write_program(ok_addr, ok)
    runs.append((ok_addr, ErrorCode.NONE))
    expected = bench.snapshot()
    wants = []
    for addr, code in runs:
        count = 2 if addr == ok_addr else 3
        wants.append(golden.execute(expected, addr, count, layout))
        assert wants[-1].error == code, (code, wants[-1].detail)
    results = []

    async def host(ctx):
        for addr, _ in runs:
            results.append(await bench.run(ctx, addr, 2 if addr == ok_addr else 3))

    bench.simulate(host, cycles=300_000)
    for (addr, code), regs, want in zip(runs, results, wants):
        assert (regs["STATUS"], regs["DESC_DONE"]) == (want.status, want.descriptors_done), \
            f"program at {addr:#x}: want {code.name}"
        if code != ErrorCode.NONE:
            assert regs["STATUS"] == 1 | int(code) << 8 | 1 << 16
        assert [regs[f"{p.name.upper()}_BYTES_WRITTEN"] for p in layout.ports] == want.bytes_written
    diff = bench.differences(expected)
    assert diff == [], f"{len(diff)} words differ, first at {diff[0]:#x}"
    assert bench.mem.read(0x91_1000, 2 * wb) == bench.mem.read(0x90_0000, 2 * wb) != bytes(2 * wb)


def random_program(bench: KernelBench, rng: random.Random, np_rng, jobs: int) -> list[dict]:
    """COPY/FILL descriptors between random ports (lengths one word to several FIFOs, some across
    4 KiB, some reading what an earlier one wrote) around two matmuls whose outputs get copied."""
    lay = bench.layout
    wb = lay.word_bytes
    nports = len(lay.ports)
    fifo = lay.config.engine("copy").buffer_words
    arena = 0xA0_0000                                            # 16 KiB of random data to shuffle
    bench.mem.write(arena, rng.randbytes(0x4000))
    mms = [place_matmul(bench, 0xC0_0000, np_rng, m=3, k=32, n=3, wbits=4, out_mode=OutMode.INT32),
           place_matmul(bench, 0xD0_0000, np_rng, m=4, k=16, n=5, wbits=8, out_mode=OutMode.INT8)]
    descs = []
    for i in range(jobs):
        if i in (jobs // 3, 2 * jobs // 3):
            mm = mms.pop()
            descs.append(descriptor(mm))
            out = lay.matmul.out_bytes(mm["m"], mm["n"], mm["out_mode"])
            descs.append(copy_d(rng.randrange(nports), mm["y_addr"], rng.randrange(nports),
                                arena + rng.randrange(0, 0x4000 - out, wb), out))
            continue
        words = rng.choice([1, 2, rng.randrange(1, fifo + 1), fifo + 1, rng.randrange(fifo, 5 * fifo)])
        n = words * wb
        dst = arena + rng.randrange(0, 0x4000 - n + 1, wb)
        if rng.random() < 0.25:
            descs.append(fill_d(rng.randrange(nports), dst, n, rng.getrandbits(64)))
            continue
        while True:
            src = arena + rng.randrange(0, 0x4000 - n + 1, wb)
            if src + n <= dst or dst + n <= src:
                break
        descs.append(copy_d(rng.randrange(nports), src, rng.randrange(nports), dst, n))
    return descs


@pytest.mark.parametrize("seed,stall", [(31, 0.1), (32, 0.45), (33, 0.3), (34, 0.6)])
def test_random_programs_match_the_golden_program_under_backpressure(layout, seed, stall):
    rng = random.Random(seed)
    bench = kernel_bench(layout, seed=seed, stall=stall)
    jobs = 20
    descs = random_program(bench, rng, np.random.default_rng(seed), jobs=jobs)
    if seed % 2:                                                 # and a bad COPY at the end
        descs.append(copy_d(1, 0xA0_0000, 2, 0xA0_0000 + 8, 64))
    bench.write_program(0x2000, descs)
    expected = bench.snapshot()
    want = golden.execute(expected, 0x2000, len(descs), layout)
    assert want.descriptors_done == jobs + 2 and want.error == (ErrorCode.OVERLAP if seed % 2 else ErrorCode.NONE)
    regs = {}

    async def host(ctx):
        regs.update(await bench.run(ctx, 0x2000, len(descs)))

    bench.simulate(host)
    assert_matches_golden(bench, regs, want, expected)
    assert regs["DATA_BYTES_READ"] == bench.models["data"].stats.r_beats * layout.word_bytes


class FaultyMemory(golden.SparseMemory):
    """The golden memory with ranges that answer SLVERR (MemoryAccessError), like the AXI model's."""

    def __init__(self, pages, error_ranges):
        super().__init__(pages)
        self.error_ranges = error_ranges

    def check(self, addr, n):
        super().check(addr, n)
        for lo, hi in self.error_ranges:
            if addr < hi and lo < addr + n:
                raise golden.MemoryAccessError(f"[{addr:#x}, +{n}) meets the error range [{lo:#x}, {hi:#x})")


@pytest.mark.parametrize("where", ["source_on_w1", "destination_on_data", "fill_destination_on_w0"])
def test_axi_error_on_a_copy_stops_the_run_at_its_descriptor(layout, where):
    wb = layout.word_bytes
    bench = kernel_bench(layout, seed=41, stall=0.2)
    bench.mem.write(0xE0_0000, random.Random(41).randbytes(0x1000))
    bad_range = (0xE0_0800 + 5 * wb, 0xE0_0800 + 6 * wb)          # one word in the middle
    port, bad = {
        "source_on_w1": ("w1", copy_d(2, 0xE0_0800, 0, 0xE0_0000, 16 * wb)),
        "destination_on_data": ("data", copy_d(1, 0xE0_0000, 0, 0xE0_0800, 16 * wb)),
        "fill_destination_on_w0": ("w0", fill_d(1, 0xE0_0800, 16 * wb, 0x77)),
    }[where]
    bench.models[port].error_ranges = [bad_range]
    descs = [fill_d(2, 0xE0_0400, 4 * wb, 0x11), bad, fill_d(0, 0xE0_0600, 4 * wb, 0x22)]
    bench.write_program(0x3000, descs)
    expected = FaultyMemory(bench.snapshot().pages, [bad_range])
    want = golden.execute(expected, 0x3000, 3, layout)
    assert (want.error, want.error_index, want.descriptors_done) == (ErrorCode.AXI_RESP, 1, 1)
    regs = {}

    async def host(ctx):
        regs.update(await bench.run(ctx, 0x3000, 3))

    bench.simulate(host)
    assert (regs["STATUS"], regs["DESC_DONE"]) == (want.status, want.descriptors_done)
    # the golden model writes nothing for the failing descriptor; the kernel may have written its
    # destination (the AXI model lands the words of a write that answers SLVERR), nothing else
    dst = (bad["dst_addr"], bad["dst_addr"] + bad["bytes"])
    diff = [a for a in bench.differences(expected) if not dst[0] <= a < dst[1]]
    assert diff == [], f"words outside the failing destination differ, first at {diff[0]:#x}"
    assert bench.mem.read(0xE0_0600, 4 * wb) != fill_pattern(0x22, 4 * wb)   # the next one never ran


@pytest.mark.parametrize("buffer_words", [2, 32])
def test_kernel_copies_one_word_per_cycle_when_memory_keeps_up(buffer_words):
    """No back-pressure, 30-cycle read and write latency, 16-beat bursts x 4 outstanding: each
    extra word of a COPY or FILL costs one cycle of the run (CYCLES), whatever the FIFO depth."""
    cfg = tiny_config_dict()
    cfg["engines"].append({"kind": "copy", "buffer_words": buffer_words})
    lay = DesignLayout(parse_config(cfg))
    wb = lay.word_bytes
    bench = kernel_bench(lay, seed=51, stall=0.0)
    for model in bench.models.values():
        model.read_latency = model.write_latency = (30, 30)
    programs = []
    for words in (64, 320):
        programs += [[copy_d(1, 0x10_0000, 2, 0x20_0000, words * wb)],
                     [copy_d(0, 0x10_0000, 0, 0x20_0000, words * wb)],
                     [fill_d(1, 0x30_0000, words * wb, 0x5A)]]
    for j, descs in enumerate(programs):
        bench.write_program(0x1000 + j * 0x100, descs)
    cycles = []

    async def host(ctx):
        for j in range(len(programs)):
            regs = await bench.run(ctx, 0x1000 + j * 0x100, 1)
            assert regs["STATUS"] == 0 and regs["DESC_DONE"] == 1
            cycles.append(regs["CYCLES"])

    bench.simulate(host)
    for kind, short, long in zip(["w0 -> w1", "data -> data", "fill w0"], cycles[:3], cycles[3:]):
        per_word = (long - short) / 256
        assert per_word <= 1.01, f"{kind}: {per_word:.3f} cycles per extra word ({short} -> {long})"
