"""weight_prefetch in the whole kernel (amaranth.sim, random latency and back-pressure on every
port): the command processor hands the MATMUL after a VECTOR to the matmul engine while the VECTOR
runs, whose weight reads (ARID 1 on the weight ports) start before the matmul becomes the active
engine; an AXI error in that VECTOR still stops the run at the VECTOR, after the early MATMUL has
run to its end, and the next run starts clean. The matmul is the shell tests' pass-through engine
(Y = X, every weight word read), the vector engine the real one (checked against run_vector)."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, Opcode, OutMode, VectorCombine, VectorIn, VectorOut
from hbmforge.engines.vector import VECTOR_FIELDS
from hbmforge.generators.attention.testing import ByteMemory
from hbmforge.generators.registry import engine_class
from hbmforge.generators.shell.kernel import PREFETCH_READ_ID
from hbmforge.layout import DesignLayout
from hbmforge.numerics import vector as V
from kernel_testbench import KernelBench
from shell_fixture_engine import PassThroughEngine, expected_bytes

PROGRAM = 0x1000
DIM = 64


@pytest.fixture(scope="module")
def layout() -> DesignLayout:
    cfg = tiny_vector_config_dict("tiny_vec_pfk")
    cfg["engines"][0]["weight_prefetch"] = 512
    return DesignLayout(parse_config(cfg))


def _engines(layout):
    engines = {}
    for fam in layout.families:
        engine = PassThroughEngine(layout) if fam.kind == "matmul" else engine_class(fam.kind)(layout)
        engines.update({op: engine for op in fam.opcodes})
    return engines


def residual_add(layout, base):
    """A VECTOR RES32 + RES32 -> RES32 of one row of DIM (A at base, B and Y at base + 0x1000)."""
    R = layout.mm.rows
    d = {name: 0 for name in VECTOR_FIELDS}
    d.update(op=Opcode.VECTOR, m=1, dim=DIM, a_fmt=VectorIn.RES32, a_addr=base, a_stride=R * DIM * 4,
             b_fmt=VectorIn.RES32, b_addr=base + 0x1000, b_stride=R * DIM * 4, combine=VectorCombine.ADD,
             out_fmt=VectorOut.RES32, y_addr=base + 0x2000, y_stride=R * DIM * 4)
    return d


def matmul(layout, base, *, m=2, k=64, n=32, wbits=4):
    d = {"op": Opcode.MATMUL, "m": m, "k": k, "n": n, "wbits": wbits, "out_mode": OutMode.INT32,
         "out_shift": 0, "x_addr": base, "s_addr": base + 0x2000, "q_addr": base + 0x3000, "y_addr": base + 0x4000}
    for p in range(layout.mm.weight_ports):
        d[f"w_addr{p}"] = base + 0x8000 + p * 0x2000
    return d


def _fill(bench, rng, layout, vec, mm):
    R = layout.mm.rows
    for addr in (vec["a_addr"], vec["b_addr"]):
        bench.mem.write(addr, rng.integers(-2**20, 2**20, R * DIM, dtype=np.int32).tobytes())
    e = expected_bytes(layout, mm["m"], mm["k"], mm["n"], mm["wbits"], mm["out_mode"])
    bench.mem.write(mm["x_addr"], rng.integers(0, 256, e["act"], dtype=np.uint8).tobytes())
    for p in range(layout.mm.weight_ports):
        bench.mem.write(mm[f"w_addr{p}"], rng.integers(0, 256, e["w"], dtype=np.uint8).tobytes())
    return e


def _vector_expected(bench, layout, vec):
    shadow = ByteMemory(bytearray(bench.mem.read(0, vec["y_addr"] + 0x2000)))
    V.run_vector(shadow, vec, layout)
    return bytes(shadow.mem[vec["y_addr"]:vec["y_addr"] + layout.mm.rows * DIM * 4])


def test_the_matmul_after_a_vector_reads_its_weights_while_the_vector_runs(layout):
    rng = np.random.default_rng(3)
    bench = KernelBench(layout, engines=_engines(layout), seed=3, stall=0.3)
    vec, mm = residual_add(layout, 0x10_0000), matmul(layout, 0x20_0000)
    vec2 = residual_add(layout, 0x30_0000)
    e = _fill(bench, rng, layout, vec, mm)
    _fill(bench, rng, layout, vec2, mm)
    bench.write_program(PROGRAM, [vec, mm, vec2])
    want_y = _vector_expected(bench, layout, vec)
    want_y2 = _vector_expected(bench, layout, vec2)
    ports = {p.name: getattr(bench.dut, p.verilog_prefix) for p in layout.ports}
    seen = {"first_pf_ar": None, "vector_y_write": None}
    regs = {}

    async def watch(ctx):
        cycle = 0
        async for _ in ctx.tick():
            cycle += 1
            w0, data = ports["w0"], ports["data"]
            if seen["first_pf_ar"] is None and ctx.get(w0.arvalid) and ctx.get(w0.arid) == PREFETCH_READ_ID:
                seen["first_pf_ar"] = cycle
            if seen["vector_y_write"] is None and ctx.get(data.awvalid) and ctx.get(data.awaddr) == vec["y_addr"]:
                seen["vector_y_write"] = cycle

    async def host(ctx):
        regs.update(await bench.run(ctx, PROGRAM, 3))

    bench.simulate(host, extra=[watch])
    assert (regs["STATUS"], regs["DESC_DONE"]) == (0, 3)
    assert bench.mem.read(vec["y_addr"], len(want_y)) == want_y
    assert bench.mem.read(vec2["y_addr"], len(want_y2)) == want_y2
    assert bench.mem.read(mm["y_addr"], e["out"]) == bench.mem.read(mm["x_addr"], e["act"])[:e["out"]]
    # the matmul's weight reads start before the vector writes its result (it could not have
    # become the active engine before the vector was done)
    assert None not in seen.values() and seen["first_pf_ar"] < seen["vector_y_write"], seen


def test_an_axi_error_in_the_vector_before_an_early_matmul_stops_the_run_there(layout):
    rng = np.random.default_rng(4)
    vec, mm = residual_add(layout, 0x10_0000), matmul(layout, 0x20_0000)
    vec2, mm2 = residual_add(layout, 0x30_0000), matmul(layout, 0x40_0000)
    bad = (vec["a_addr"] + 64, vec["a_addr"] + 72)               # one word of the first VECTOR's A
    bench = KernelBench(layout, engines=_engines(layout), seed=4, stall=0.3)
    bench.models["data"].error_ranges = [bad]
    e = _fill(bench, rng, layout, vec, mm)
    e2 = _fill(bench, rng, layout, vec2, mm2)
    bench.write_program(PROGRAM, [vec, mm, vec2])
    bench.write_program(PROGRAM + 0x800, [vec2, mm2])
    want_y2 = _vector_expected(bench, layout, vec2)
    results = []

    async def host(ctx):
        results.append(await bench.run(ctx, PROGRAM, 3))
        results.append(await bench.run(ctx, PROGRAM + 0x800, 2))

    bench.simulate(host)
    status = 1 | ErrorCode.AXI_RESP << 8 | 0 << 16
    assert (results[0]["STATUS"], results[0]["DESC_DONE"]) == (status, 0)
    # the MATMUL had been handed over: it ran to its end (all of its weights, its Y) before the run stopped
    assert results[0]["W0_BYTES_READ"] == e["w"]
    assert bench.mem.read(mm["y_addr"], e["out"]) == bench.mem.read(mm["x_addr"], e["act"])[:e["out"]]
    assert (results[1]["STATUS"], results[1]["DESC_DONE"]) == (0, 2)
    assert bench.mem.read(vec2["y_addr"], len(want_y2)) == want_y2
    assert bench.mem.read(mm2["y_addr"], e2["out"]) == bench.mem.read(mm2["x_addr"], e2["act"])[:e2["out"]]
