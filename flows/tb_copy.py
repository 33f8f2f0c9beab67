"""cocotb tests of the COPY/FILL engine in a whole kernel (with the matmul engine beside it).

Runs with :mod:`hbmforge.flows.tb_kernel` (same bench: cocotbext-axi RAM models with random
back-pressure and latency on every port, the AXI rule monitor). Every write also goes to a
Python mirror on which :func:`hbmforge.numerics.program.execute` runs the same program; the
bench memory, STATUS, DESC_DONE and the per-port byte counters must equal the golden ones.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np

from hbmforge.encodings import CopyMode, ErrorCode, Opcode
from hbmforge.engines.copy import max_copy_bytes
from hbmforge.numerics.program import SparseMemory, execute

from .tb_kernel import SEED, Layer, Mirrored, Program, _bench, design_has

CASES = int(os.environ.get("HBMFORGE_TB_CASES", "4"))
HAS_COPY = design_has("copy")


def _copy_job(bench, mem: Mirrored, lay, rng: np.random.Generator, regions: list) -> dict:
    """One random COPY or FILL between random ports; its buffers (with guard words) in ``regions``."""
    word = lay.word_bytes
    ports = lay.port_names[:1 + lay.config.shared_stream_ports]     # not a port an engine keeps (a cache's store)
    buffer_words = lay.config.engine("copy").buffer_words
    words = int(rng.integers(1, 3 * buffer_words + 2))
    if rng.random() < 0.25:                                   # long enough to cross 4 KiB pages
        words = int(rng.integers(4096 // word, 3 * 4096 // word))
    nbytes = min(words * word, max_copy_bytes(word))
    fill = rng.random() < 0.35
    dst_port = int(rng.integers(len(ports)))
    src_port = int(rng.integers(len(ports)))
    pad = word * int(rng.integers(1, 4))                       # guard words on both sides
    dst = bench.alloc(nbytes + 2 * pad, ports[dst_port]) + pad
    mem.write(dst - pad, rng.integers(0, 256, nbytes + 2 * pad, dtype=np.uint8).tobytes())
    regions.append((dst - pad, nbytes + 2 * pad))
    d = {"op": Opcode.COPY, "mode": CopyMode.FILL if fill else CopyMode.COPY, "dst_port": dst_port,
         "dst_addr": dst, "bytes": nbytes, "src_port": 0, "src_addr": 0, "value": 0}
    if fill:
        d["value"] = int(rng.integers(0, 1 << 63)) * 2 + int(rng.integers(2))
    else:
        src = bench.alloc(nbytes, ports[src_port])
        mem.write(src, rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
        d.update(src_port=src_port, src_addr=src)
        regions.append((src, nbytes))
    return d


async def _program_mirrored(bench, mem: Mirrored, prog: Program) -> int:
    addr = bench.alloc(prog.nbytes)
    mem.write(addr, prog.to_bytes())
    return addr


@cocotb.test(skip=not HAS_COPY)
async def test_copy_fill_and_matmul_program_matches_golden_under_backpressure(dut):
    bench, lay = await _bench(dut, seed_offset=301)
    rng = np.random.default_rng(SEED + 301)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    prog = Program(lay)
    regions: list = []
    layer = None
    for i in range(max(3, CASES + 1)):
        prog.add(_copy_job(bench, mem, lay, rng, regions))
        if i == 1:                                            # engine switches in both directions
            layer = Layer(bench, lay, rng, out_mode="int32")
            for addr, nbytes in ((layer.x_addr, lay.matmul.act_bytes(layer.m, layer.k)),
                                 (layer.s_addr, lay.matmul.scale_bytes(layer.n, layer.k)),
                                 (layer.q_addr, lay.matmul.requant_bytes(layer.n))):
                mirror.write(addr, bench.read(addr, nbytes))
            for i_w, addr in enumerate(layer.w_addrs):
                nbytes = lay.matmul.weight_port_bytes(layer.n, layer.k, layer.wbits)
                mirror.write(addr, bench.read(addr, nbytes))
            mirror.write(layer.y_addr, bench.read(layer.y_addr, layer.y_bytes))
            layer.add_to(prog)
    addr = await _program_mirrored(bench, mem, prog)
    golden = execute(mirror, addr, len(prog), lay)
    assert golden.ok, golden.detail
    status = await bench.run(addr, len(prog), timeout_cycles=4_000_000)
    assert status == 0, f"STATUS {status:#x}"
    assert await bench.reg_read("DESC_DONE") == len(prog)
    for start, nbytes in regions:
        got, want = bench.read(start, nbytes), mirror.read(start, nbytes)
        if got != want:
            a, b = np.frombuffer(got, np.uint8), np.frombuffer(want, np.uint8)
            bad = np.flatnonzero(a != b)
            raise AssertionError(f"[{start:#x}, +{nbytes}): {bad.size} bytes differ from the golden model, "
                                 f"first at +{bad[0]}: got {a[bad[0]]:#04x} expected {b[bad[0]]:#04x}")
    layer.check(bench, "matmul between copies")
    for p in lay.ports:
        got = await bench.reg_read(f"{p.name.upper()}_BYTES_WRITTEN")
        assert got == golden.bytes_written[p.index], f"{p.name} bytes written {got}, golden {golden.bytes_written[p.index]}"
        if p.index:
            got = await bench.reg_read(f"{p.name.upper()}_BYTES_READ")
            want = golden.weight_bytes_read[p.index - 1]
            assert got == want, f"{p.name} bytes read {got}, golden {want}"


@cocotb.test(skip=not HAS_COPY)
async def test_bad_copy_descriptor_stops_with_code_and_index(dut):
    bench, lay = await _bench(dut, seed_offset=302, busy=0.1)
    rng = np.random.default_rng(SEED + 302)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    prog = Program(lay)
    regions: list = []
    good = _copy_job(bench, mem, lay, rng, regions)
    prog.add(good)
    base = bench.alloc(8 * lay.word_bytes)
    overlap = {"op": Opcode.COPY, "mode": CopyMode.COPY, "src_port": 0, "src_addr": base,
               "dst_port": 0, "dst_addr": base + lay.word_bytes, "bytes": 4 * lay.word_bytes, "value": 0}
    prog.add(overlap, check=False)
    prog.add(good)
    addr = await _program_mirrored(bench, mem, prog)
    golden = execute(mirror, addr, len(prog), lay)
    assert (golden.error, golden.error_index) == (ErrorCode.OVERLAP, 1)
    status = await bench.run(addr, len(prog))
    assert status == golden.status, f"STATUS {status:#x}, golden {golden.status:#x}"
    assert await bench.reg_read("DESC_DONE") == 1
    for start, nbytes in regions:
        assert bench.read(start, nbytes) == mirror.read(start, nbytes), "the descriptor before the bad one"
