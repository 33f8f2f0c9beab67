"""The whole shell end to end (control, command processor, ports, counters) with a copy engine.

The engine is the test fixture :class:`shell_fixture_engine.PassThroughEngine`, so
these tests check the shell alone: descriptors fetched and validated, the
job record, DMA traffic, STATUS/DESC_DONE, counters and ap_ctrl_hs.
"""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.generators.shell.kernel import Kernel
from hbmforge.encodings import ErrorCode, Opcode, OutMode
from hbmforge.layout import DesignLayout
from kernel_testbench import KernelBench
from shell_axi_model import assert_rejects
from shell_fixture_engine import PassThroughEngine, passthrough_engines, expected_bytes

AP_DONE, AP_IDLE = 0b0010, 0b0100
PROGRAM = 0x1000


def small_config(**axi):
    return parse_config({
        "version": 1, "name": "shelltest", "board": "u280",
        "axi": {"data_width": 64, "id_width": 2, "max_burst_beats": 8, "max_outstanding": 4, **axi},
        "engines": [{"kind": "matmul", "rows": 2, "lanes": 16, "weight_ports": 2,
                     "weight_bits": [4, 8], "group_size": 16, "max_k": 256}],
    }, )


@pytest.fixture(scope="module")
def layout() -> DesignLayout:
    return DesignLayout(small_config())


def matmul(layout, i, *, m=3, k=32, n=4, wbits=4, out_mode=OutMode.INT32, out_shift=0, **over):
    """A MATMUL descriptor with its buffers in a private 64 KiB window."""
    base = 0x10_0000 + i * 0x1_0000
    d = {"op": Opcode.MATMUL, "m": m, "k": k, "n": n, "wbits": wbits, "out_mode": out_mode,
         "out_shift": out_shift, "x_addr": base, "s_addr": base + 0x2000, "q_addr": base + 0x3000,
         "y_addr": base + 0x4000}
    for p in range(layout.mm.weight_ports):
        d[f"w_addr{p}"] = base + 0x8000 + p * 0x2000
    d.update(over)
    return d


def encode(layout, descs):
    out = bytearray()
    for d in descs:
        raw = bytearray(layout.descriptor_bytes)
        for name in layout.fields_for(Opcode.MATMUL):      # bad opcodes too: the matmul slots
            off = layout.field_offset(name, Opcode.MATMUL)
            raw[off:off + 8] = (d.get(name, 0) & (2**64 - 1)).to_bytes(8, "little")
        out += raw
    return bytes(out)


class PassThroughBench(KernelBench):
    """The kernel with the pass-through engine as its matmul engine (the shell alone)."""

    def __init__(self, layout, *, seed=0, stall=0.2, error_ranges=()):
        super().__init__(layout, engines=passthrough_engines(layout), seed=seed, stall=stall,
                         error_ranges=error_ranges)

    def fill_inputs(self, descs):
        for d in descs:
            if d.get("op") != Opcode.MATMUL:
                continue
            e = expected_bytes(self.layout, d["m"], d["k"], d["n"], d["wbits"], d["out_mode"])
            self.mem.write(d["x_addr"], bytes(self.rng.getrandbits(8) for _ in range(e["act"])))

    async def run(self, ctx, count, program=PROGRAM, max_cycles=20_000):
        return await super().run(ctx, program, count, max_cycles)

    def simulate(self, bench, cycles=60_000, extra=()):
        super().simulate(bench, cycles, extra)


def status(code, index):
    return 1 | code << 8 | index << 16


def test_kernel_runs_a_program_and_counts(layout):
    tb = PassThroughBench(layout, seed=1)
    descs = [matmul(layout, 0, m=3, k=32, n=4, wbits=4),
             matmul(layout, 1, m=1, k=64, n=8, wbits=8, out_mode=OutMode.INT8),
             matmul(layout, 2, m=5, k=16, n=2, wbits=4, out_shift=63)]
    tb.mem.write(PROGRAM, encode(layout, descs))
    tb.fill_inputs(descs)
    res = {}
    jobs = []

    async def bench(ctx):
        res.update(await tb.run(ctx, count=len(descs)))
        again = await tb.run(ctx, count=len(descs))
        # counters and status are cleared by each start, not accumulated
        assert {k: v for k, v in again.items() if k != "CYCLES" and k != "STALL_CYCLES"} == \
            {k: v for k, v in res.items() if k != "CYCLES" and k != "STALL_CYCLES"}
        assert abs(again["CYCLES"] - res["CYCLES"]) < res["CYCLES"] // 2

    async def watch_jobs(ctx):
        job = tb.dut.engine("matmul").job
        async for _, _, valid, ready, payload in ctx.tick().sample(job.valid, job.ready, job.payload):
            if valid and ready:
                jobs.append(payload)

    tb.simulate(bench, extra=[watch_jobs])
    fields = ["m", "k", "n", "wbits", "out_mode", "out_shift", "x_addr", "s_addr", "q_addr", "y_addr"]
    assert len(jobs) == 6
    jobs = jobs[:3]
    for job, d in zip(jobs, descs):
        assert {f: getattr(job, f) for f in fields} == {f: d[f] for f in fields}
        assert [job.w_addr[p] for p in range(layout.mm.weight_ports)] == \
            [d[f"w_addr{p}"] for p in range(layout.mm.weight_ports)]
    exp = [expected_bytes(layout, d["m"], d["k"], d["n"], d["wbits"], d["out_mode"]) for d in descs]
    for d, e in zip(descs, exp):
        assert tb.mem.read(d["y_addr"], e["out"]) == tb.mem.read(d["x_addr"], e["act"])
    assert res["STATUS"] == 0
    assert res["DESC_DONE"] == 3
    assert res["CTRL"] & (AP_DONE | AP_IDLE) == AP_DONE | AP_IDLE
    assert res["interrupt_after_ack"] == 0
    assert res["DATA_BYTES_READ"] == (3 * layout.descriptor_bytes
                                      + sum(e["act"] + e["scale"] + e["rq"] for e in exp))
    assert res["DATA_BYTES_WRITTEN"] == sum(e["out"] for e in exp)
    for p in range(layout.mm.weight_ports):
        assert res[f"W{p}_BYTES_READ"] == sum(e["w"] for e in exp)
        assert res[f"W{p}_BYTES_WRITTEN"] == 0
    assert res["MAC_OPS"] == sum(e["fires"] * e["fire_rows"] * layout.mm.lanes for e in exp)
    assert 0 < res["STALL_CYCLES"] < res["CYCLES"]


def test_end_opcode_stops_cleanly_and_skips_the_rest(layout):
    tb = PassThroughBench(layout, seed=2)
    descs = [matmul(layout, 0), {"op": Opcode.END}, matmul(layout, 2)]
    tb.mem.write(PROGRAM, encode(layout, descs))
    tb.fill_inputs(descs)
    res = {}

    async def bench(ctx):
        res.update(await tb.run(ctx, count=3))

    tb.simulate(bench)
    assert res["STATUS"] == 0 and res["DESC_DONE"] == 1
    assert tb.mem.read(descs[2]["y_addr"], 64) == bytes(64)


BAD = [
    ({"op": 7}, ErrorCode.BAD_OPCODE),
    ({"wbits": 2}, ErrorCode.BAD_WBITS),
    ({"k": 24}, ErrorCode.BAD_K),             # not a multiple of k_align (16)
    ({"k": 4096 + 16}, ErrorCode.BAD_K),      # > split_k x max_k (16 x 256)
    ({"k": 0}, ErrorCode.BAD_K),
    ({"m": 0}, ErrorCode.BAD_SHAPE),
    ({"n": 1 << 32}, ErrorCode.BAD_SHAPE),
    ({"out_mode": 2}, ErrorCode.BAD_OUT_MODE),
    ({"out_shift": 64}, ErrorCode.BAD_OUT_MODE),
    ({"w_addr1": 0x12_0004}, ErrorCode.MISALIGNED),
    ({"q_addr": 0x12_0004, "out_mode": OutMode.INT8}, ErrorCode.MISALIGNED),
    ({"op": 9, "wbits": 2, "k": 0}, ErrorCode.BAD_OPCODE),          # first check wins
]


def test_bad_descriptors_stop_with_code_and_index_and_runs_restart(layout):
    """One simulation, one run per bad descriptor (each at index 1 after a good one)."""
    tb = PassThroughBench(layout, seed=3, stall=0.1)
    progs = []
    for j, (over, code) in enumerate(BAD):
        addr = PROGRAM + j * 0x400
        descs = [matmul(layout, 0, m=1, k=16, n=1), matmul(layout, 1, **over), matmul(layout, 2)]
        tb.mem.write(addr, encode(layout, descs))
        tb.fill_inputs(descs[:1])
        progs.append((addr, code))
    # q_addr misaligned but out_mode INT32: q_addr is ignored, the descriptor is good
    ok_addr = PROGRAM + len(BAD) * 0x400
    ok = [matmul(layout, 3, m=1, k=16, n=1, q_addr=0x12_0004)]
    tb.mem.write(ok_addr, encode(layout, ok))
    tb.fill_inputs(ok)
    results = []

    async def bench(ctx):
        for addr, _ in progs:
            results.append(await tb.run(ctx, count=3, program=addr))
        results.append(await tb.run(ctx, count=1, program=ok_addr))

    tb.simulate(bench, cycles=200_000)
    for (addr, code), res in zip(progs, results):
        assert (res["STATUS"], res["DESC_DONE"]) == (status(code, 1), 1), f"expected code {code}"
    assert (results[-1]["STATUS"], results[-1]["DESC_DONE"]) == (0, 1)


def test_axi_error_responses_stop_the_run_at_their_descriptor(layout):
    tb = PassThroughBench(layout, seed=4, error_ranges=[(0x11_0000, 0x11_0008),       # X of descriptor 1
                                                   (0x2000 + 2 * layout.descriptor_bytes,
                                                    0x2000 + 2 * layout.descriptor_bytes + 8)])
    descs = [matmul(layout, 0), matmul(layout, 1), matmul(layout, 2)]
    tb.mem.write(PROGRAM, encode(layout, descs))
    tb.mem.write(0x2000, encode(layout, [matmul(layout, 0), matmul(layout, 2), matmul(layout, 3)]))
    tb.fill_inputs(descs + [matmul(layout, 3)])
    results = []

    async def bench(ctx):
        results.append(await tb.run(ctx, count=3))                 # read error on X of #1
        results.append(await tb.run(ctx, count=3, program=0x2000))  # fetch error on #2

    tb.simulate(bench)
    assert (results[0]["STATUS"], results[0]["DESC_DONE"]) == (status(ErrorCode.AXI_RESP, 1), 1)
    assert (results[1]["STATUS"], results[1]["DESC_DONE"]) == (status(ErrorCode.AXI_RESP, 2), 2)


def test_write_error_response_is_reported(layout):
    tb = PassThroughBench(layout, seed=5, error_ranges=[(0x10_4000, 0x10_4008)])   # Y of descriptor 0
    descs = [matmul(layout, 0), matmul(layout, 1)]
    tb.mem.write(PROGRAM, encode(layout, descs))
    tb.fill_inputs(descs)
    res = {}

    async def bench(ctx):
        res.update(await tb.run(ctx, count=2))

    tb.simulate(bench)
    assert (res["STATUS"], res["DESC_DONE"]) == (status(ErrorCode.AXI_RESP, 0), 0)


def test_empty_and_misaligned_programs_finish_at_once(layout):
    tb = PassThroughBench(layout, seed=6)
    results = []

    async def bench(ctx):
        results.append(await tb.run(ctx, count=0))
        results.append(await tb.run(ctx, count=2, program=PROGRAM + 4))

    tb.simulate(bench)
    assert (results[0]["STATUS"], results[0]["DESC_DONE"]) == (0, 0)
    assert results[0]["DATA_BYTES_READ"] == 0
    assert (results[1]["STATUS"], results[1]["DESC_DONE"]) == (status(ErrorCode.MISALIGNED, 0), 0)


def test_kernel_rejects_engine_with_wrong_signature(layout):
    other = DesignLayout(small_config(data_width=128))
    assert_rejects(Kernel, dict(layout=layout, engines={Opcode.MATMUL: PassThroughEngine(other)}), TypeError, "EngineSignature")


def test_config_rejects_one_bit_ids():
    """The data port needs four read IDs; a 1-bit ID width is refused at config time."""
    from hbmforge.config import ConfigError

    with pytest.raises(ConfigError, match="id_width"):
        small_config(id_width=1)


def test_next_job_follows_done_within_the_dispatch_gap(layout):
    """Descriptors are fetched and unloaded while the engine runs (13 words each here): the next
    job follows a done within the command processor's fixed check-and-dispatch cycles, never
    after a descriptor load."""
    tb = PassThroughBench(layout, seed=7, stall=0.0)
    descs = [matmul(layout, i, m=3, k=64, n=4) for i in range(4)]
    tb.mem.write(PROGRAM, encode(layout, descs))
    tb.fill_inputs(descs)
    events = []

    async def bench(ctx):
        await tb.run(ctx, count=4)

    async def watch(ctx):
        e = tb.dut.engine("matmul")
        cycle = 0
        async for _, _, jv, jr, dv, dr in ctx.tick().sample(e.job.valid, e.job.ready,
                                                             e.done.valid, e.done.ready):
            cycle += 1
            if jv and jr:
                events.append(("job", cycle))
            if dv and dr:
                events.append(("done", cycle))

    tb.simulate(bench, extra=[watch])
    assert [kind for kind, _ in events] == ["job", "done"] * 4
    gaps = [events[i + 1][1] - events[i][1] for i in range(1, len(events) - 1, 2)]
    from hbmforge.generators.shell.kernel import JOB_GAP_CYCLES
    assert layout.descriptor_bytes // layout.word_bytes > JOB_GAP_CYCLES
    assert max(gaps) <= JOB_GAP_CYCLES, gaps
