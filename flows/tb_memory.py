"""cocotb tests of the memory engine in a whole kernel: the tile cache and the oblivious map.

Runs with :mod:`hbmforge.flows.tb_kernel` (same bench: cocotbext-axi RAM models with random
back-pressure and extra latency on every port, the AXI rule monitor). Every program also runs on
:func:`hbmforge.numerics.program.execute` over a Python mirror; memory, STATUS and DESC_DONE must
agree bit for bit. The cache's counters and tags (STATS) must equal a golden
:class:`~hbmforge.numerics.memory.TileCacheModel` fed the commands the engines make of the
backing port (the matmul's weight stripe passes, the copies' source and destination ranges).
Faults: a tampered host bin (OMAP_TAMPERED), bad CACHE and OMAP descriptors, SLVERR on the
backing memory during a fill through the cache (AXI_RESP, then a clean run after INVALIDATE).
"""
from __future__ import annotations

import os
import struct

import cocotb
import numpy as np

from hbmforge.encodings import CacheAction, CopyMode, ErrorCode, OmapAction, OmapOp, Opcode
from hbmforge.engines.memory import CB_BYTES, NODE_FREE, ControlBlock, cache_geometry, omap_geometry, plan_omap
from hbmforge.numerics.memory import TileCacheModel
from hbmforge.numerics.program import SparseMemory, execute

from .tb_closure import _poison
from .tb_kernel import SEED, Layer, Mirrored, Program, _bench, _program, design_has

CASES = int(os.environ.get("HBMFORGE_TB_CASES", "4"))


def _engine_entry():
    if not os.environ.get("HBMFORGE_MANIFEST"):
        return {}
    from hbmforge.sim.kernel_bench import load_bench_manifest
    return next((e for e in load_bench_manifest().get("engines", ()) if e.get("kind") == "memory"), {})


_ENTRY = _engine_entry()
HAS_CACHE = "cache" in _ENTRY
HAS_OMAP = "omap" in _ENTRY
HAS_COPY = design_has("copy")


def _matmul_reads(lay, layer) -> list[tuple[int, int]]:
    """The reads of weight stripe 0 a MATMUL makes: per K slice, once per chunk of row blocks."""
    geom = lay.matmul
    from hbmforge.encodings import WeightFormat
    code = WeightFormat.code(layer.wbits)
    out, off = [], 0
    for s in range(geom.slices(layer.k)):
        nbytes = geom.slice_weight_port_bytes(layer.n, geom.slice_k(layer.k, s), code)
        out += [(layer.w_addrs[0] + off, nbytes)] * geom.chunks(layer.m, layer.n, layer.k, layer.out_mode)
        off += nbytes
    return out


async def _run_both(bench, mem, mirror, lay, prog, timeout_cycles: int = 4_000_000):
    """Load ``prog``, run it on the golden model (``mirror``) and on the RTL: (golden, STATUS)."""
    addr = bench.alloc(prog.nbytes)
    mem.write(addr, prog.to_bytes())
    golden = execute(mirror, addr, len(prog), lay)
    return golden, await bench.run(addr, len(prog), timeout_cycles=timeout_cycles)


@cocotb.test(skip=not (HAS_CACHE and HAS_COPY))
async def test_memory_cache_carries_matmuls_and_copies_bit_exactly_under_backpressure(dut):
    bench, lay = await _bench(dut, seed_offset=501)
    rng = np.random.default_rng(SEED + 501)
    geom = cache_geometry(lay)
    port = _ENTRY["port"]
    wname = lay.port_names[1 + port]
    store_port = lay.port_names[1 + _ENTRY["cache"]["store_port"]]
    window = bench.alloc(1 << 20, wname)                     # the cacheable window, on the backing port
    bench._next_free[wname] = window                          # later w0 buffers land inside it
    store = bench.alloc(geom.store_bytes, store_port)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    model = TileCacheModel(geom, memory=SparseMemory())
    model.configure(window, 1 << 20, store)
    prog = Program(lay)
    prog.add({"op": Opcode.CACHE, "action": CacheAction.CONFIGURE, "addr": window, "bytes": 1 << 20,
              "store_addr": store})
    layers, regions = [], []
    word = lay.word_bytes
    for case in range(max(3, CASES)):
        layer = Layer(bench, lay, rng)
        for addr, nbytes in ((layer.x_addr, lay.matmul.act_bytes(layer.m, layer.k)),
                             (layer.s_addr, lay.matmul.scale_bytes(layer.n, layer.k)),
                             (layer.q_addr, lay.matmul.requant_bytes(layer.n)), (layer.y_addr, layer.y_bytes)):
            mirror.write(addr, bench.read(addr, nbytes))
        for i, addr in enumerate(layer.w_addrs):
            nbytes = lay.matmul.weight_port_bytes(layer.n, layer.k, layer.wbits)
            mirror.write(addr, bench.read(addr, nbytes))
        if case == 1:                                         # a prefetch hint before the layer
            nbytes = lay.matmul.weight_port_bytes(layer.n, layer.k, layer.wbits)
            start = layer.w_addrs[0] // geom.line_bytes * geom.line_bytes
            end = -(-(layer.w_addrs[0] + nbytes) // geom.line_bytes) * geom.line_bytes
            prog.add({"op": Opcode.CACHE, "action": CacheAction.PREFETCH, "addr": start, "bytes": end - start,
                      "store_addr": 0})
            model.prefetch(start, end - start)
        layer.add_to(prog)
        layers.append(layer)
        for a, n in _matmul_reads(lay, layer):
            model.read(a, n)
        # a copy into the backing port (through the cache) and one back out of it
        words = int(rng.integers(1, 3 * geom.line_words))
        src = bench.alloc(words * word)
        mem.write(src, rng.integers(0, 256, words * word, dtype=np.uint8).tobytes())
        dst = bench.alloc(words * word, wname)
        mem.write(dst, bytes(words * word))
        back = bench.alloc(words * word)
        mem.write(back, bytes(words * word))
        prog.add({"op": Opcode.COPY, "mode": CopyMode.COPY, "src_port": 0, "src_addr": src, "dst_port": 1 + port,
                  "dst_addr": dst, "bytes": words * word, "value": 0})
        prog.add({"op": Opcode.COPY, "mode": CopyMode.COPY, "src_port": 1 + port, "src_addr": dst, "dst_port": 0,
                  "dst_addr": back, "bytes": words * word, "value": 0})
        model.write(dst, mirror.read(src, words * word))
        model.read(dst, words * word)
        regions += [(dst, words * word), (back, words * word)]
    prog.add({"op": Opcode.CACHE, "action": CacheAction.FLUSH, "addr": window, "bytes": 1 << 20, "store_addr": 0})
    model.flush(window, 1 << 20)
    stats = bench.alloc(geom.stats_bytes)
    mem.write(stats, bytes(geom.stats_bytes))
    prog.add({"op": Opcode.CACHE, "action": CacheAction.STATS, "addr": stats, "bytes": 0, "store_addr": 0})
    golden, status = await _run_both(bench, mem, mirror, lay, prog, 8_000_000)
    assert golden.ok, golden.detail
    assert status == 0, f"STATUS {status:#x}"
    assert await bench.reg_read("DESC_DONE") == len(prog)
    for i, layer in enumerate(layers):
        layer.check(bench, f"layer {i} with its weights behind the cache")
    for start, nbytes in regions:                              # after the FLUSH the backing memory is golden
        assert bench.read(start, nbytes) == mirror.read(start, nbytes), f"[{start:#x}, +{nbytes})"
    raw = bench.read(stats, geom.stats_bytes)
    want = model.stats_bytes()
    got_counters = struct.unpack_from("<10Q", raw)
    assert raw[128:] == want[128:], "the cache's tags differ from the golden model's"
    assert got_counters[:6] == struct.unpack_from("<10Q", want)[:6], (got_counters, struct.unpack_from("<10Q", want))


def _omap_setup(bench, lay, mem, *, capacity: int, seed: int):
    geom = omap_geometry(lay)
    plan = plan_omap(geom, capacity)
    wname = lay.port_names[1 + _ENTRY["port"]]
    state = bench.alloc(CB_BYTES + plan.dir_bytes + plan.meta_bytes + plan.node_region_bytes)
    bins = bench.alloc(plan.host_bytes + geom.bin_stride, wname)
    bins = -(-bins // geom.bin_stride) * geom.bin_stride
    dir_base = state + CB_BYTES
    meta = dir_base + plan.dir_bytes
    nodes = meta + plan.meta_bytes
    keys = np.random.default_rng(seed).integers(0, 256, 96, dtype=np.uint8).tobytes()
    cb = ControlBlock(epoch=seed, bins_log2=plan.bins_log2, k_enc=keys[:32], k_prf=keys[32:64], k_hash=keys[64:],
                      bins_base=bins, dir_base=dir_base, meta_base=meta, nodes_base=nodes, dir_log2=plan.dir_log2,
                      node_count=plan.nodes, capacity=capacity, free_head=1, t_read=600, t_write=6000,
                      t_slot=7000)
    mem.write(state, cb.pack())
    mem.write(dir_base, bytes(plan.dir_bytes + plan.meta_bytes))
    nodes_raw = bytearray(plan.node_region_bytes)
    for i in range(plan.nodes):
        off = i * geom.node_bytes + geom.slot_bytes
        nodes_raw[off:off + geom.unit] = geom.pack_link(i + 2 if i + 1 < plan.nodes else 0, 0, NODE_FREE)
    mem.write(nodes, bytes(nodes_raw))
    mem.write(bins, bytes(plan.host_bytes))
    return geom, plan, state, bins


def _records(bench, mem, geom, ops) -> tuple[int, int]:
    rec = geom.record_bytes
    src, dst = bench.alloc(len(ops) * rec), bench.alloc(len(ops) * rec)
    raw = bytearray(len(ops) * rec)
    for i, (op, key, value) in enumerate(ops):
        struct.pack_into("<I", raw, i * rec, op)
        raw[i * rec + 8:i * rec + 8 + len(key)] = key
        raw[i * rec + 24:i * rec + 24 + len(value)] = value
    mem.write(src, bytes(raw))
    mem.write(dst, bytes(len(ops) * rec))
    return src, dst


def _same_state(bench, mirror, start, nbytes, what):
    got, want = bench.read(start, nbytes), mirror.read(start, nbytes)
    a, b = ControlBlock.unpack(got[:CB_BYTES]), ControlBlock.unpack(want[:CB_BYTES])
    for f in ControlBlock.TIMING_FIELDS:
        setattr(a, f, 0)
        setattr(b, f, 0)
    assert a == b, f"{what}: control block {a} differs from golden {b}"
    assert got[CB_BYTES:] == want[CB_BYTES:], f"{what}: trusted state differs from the golden model"


@cocotb.test(skip=not HAS_OMAP)
async def test_memory_oblivious_map_bulk_format_and_queries_match_golden_under_backpressure(dut):
    bench, lay = await _bench(dut, seed_offset=502)
    rng = np.random.default_rng(SEED + 502)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    geom, plan, state, bins = _omap_setup(bench, lay, mem, capacity=16, seed=int(SEED))
    keys = [rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(12)]
    bulk_src, bulk_dst = _records(bench, mem, geom, [(0, k, bytes([i]) * 8) for i, k in enumerate(keys[:6])])
    ops = [(int(rng.choice([OmapOp.GET, OmapOp.PUT, OmapOp.DELETE, OmapOp.NOP])), keys[int(rng.integers(12))],
            rng.integers(0, 256, 8, dtype=np.uint8).tobytes()) for _ in range(max(6, 2 * CASES))]
    q_src, q_dst = _records(bench, mem, geom, ops)
    prog = Program(lay)
    prog.add({"op": Opcode.OMAP, "action": OmapAction.BULK, "ctrl_addr": state, "src_addr": bulk_src,
              "dst_addr": bulk_dst, "count": 6})
    prog.add({"op": Opcode.OMAP, "action": OmapAction.FORMAT, "ctrl_addr": state, "src_addr": 0, "dst_addr": 0,
              "count": 0})
    prog.add({"op": Opcode.OMAP, "action": OmapAction.QUERY, "ctrl_addr": state, "src_addr": q_src,
              "dst_addr": q_dst, "count": len(ops)})
    golden, status = await _run_both(bench, mem, mirror, lay, prog, 20_000_000)
    assert golden.ok, golden.detail
    assert status == 0, f"STATUS {status:#x}"
    _same_state(bench, mirror, state, CB_BYTES + plan.dir_bytes + plan.meta_bytes + plan.node_region_bytes,
                "after the queries")
    assert bench.read(bins, plan.host_bytes) == mirror.read(bins, plan.host_bytes), "host bins"
    rec = geom.record_bytes
    assert bench.read(q_dst, len(ops) * rec) == mirror.read(q_dst, len(ops) * rec), "results"


@cocotb.test(skip=not HAS_OMAP)
async def test_memory_tampered_bin_and_bad_descriptors_stop_with_their_codes(dut):
    bench, lay = await _bench(dut, seed_offset=503, busy=0.1)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    geom, plan, state, bins = _omap_setup(bench, lay, mem, capacity=8, seed=int(SEED) + 1)
    prog = Program(lay)
    prog.add({"op": Opcode.OMAP, "action": OmapAction.FORMAT, "ctrl_addr": state, "src_addr": 0, "dst_addr": 0,
              "count": 0})
    golden, status = await _run_both(bench, mem, mirror, lay, prog)
    assert golden.ok and status == 0, (golden.detail, status)
    for b in range(plan.bins):                                # flip one bit of every bin's ciphertext
        raw = bytearray(bench.read(bins + b * geom.bin_stride, 8))
        raw[3] ^= 0x10
        mem.write(bins + b * geom.bin_stride, bytes(raw))
    src, dst = _records(bench, mem, geom, [(OmapOp.GET, b"somekey1", b"")])
    prog = Program(lay)
    prog.add({"op": Opcode.OMAP, "action": OmapAction.QUERY, "ctrl_addr": state, "src_addr": src, "dst_addr": dst,
              "count": 1})
    prog.add({"op": Opcode.OMAP, "action": OmapAction.QUERY, "ctrl_addr": state, "src_addr": src, "dst_addr": dst,
              "count": 0}, check=False)                       # never reached
    golden, status = await _run_both(bench, mem, mirror, lay, prog)
    assert (golden.error, golden.error_index) == (ErrorCode.OMAP_TAMPERED, 0)
    assert status == golden.status, f"STATUS {status:#x}, golden {golden.status:#x}"
    assert bench.read(dst, geom.record_bytes) == bytes(geom.record_bytes), "a tampered query returned something"
    _same_state(bench, mirror, state, CB_BYTES, "after the tampered query")
    # bad descriptors: an unknown cache action, a misaligned range, an empty batch
    for bad, code in (({"op": Opcode.CACHE, "action": 7, "addr": 0, "bytes": 0, "store_addr": 0},
                       ErrorCode.BAD_CACHE_ACTION),
                      ({"op": Opcode.OMAP, "action": OmapAction.QUERY, "ctrl_addr": state, "src_addr": src,
                        "dst_addr": dst, "count": 0}, ErrorCode.BAD_OMAP_COUNT)):
        prog = Program(lay)
        prog.add(bad, check=False)
        golden, status = await _run_both(bench, mem, mirror, lay, prog)
        assert golden.error == code
        assert status == golden.status


@cocotb.test(skip=not HAS_CACHE)
async def test_memory_cache_fill_error_stops_the_run_and_invalidate_recovers(dut):
    """SLVERR on the backing memory while a matmul's weights fill lines: the run ends with
    AXI_RESP (the engine does not hang); the line holds what the port returned, so the range
    is invalidated; the same layer then runs clean and bit-exact through the cache."""
    bench, lay = await _bench(dut, seed_offset=504, busy=0.1)
    rng = np.random.default_rng(SEED + 504)
    geom = cache_geometry(lay)
    wname = lay.port_names[1 + _ENTRY["port"]]
    store_port = lay.port_names[1 + _ENTRY["cache"]["store_port"]]
    window = bench.alloc(1 << 20, wname)
    bench._next_free[wname] = window
    store = bench.alloc(geom.store_bytes, store_port)
    prog = Program(lay)
    prog.add({"op": Opcode.CACHE, "action": CacheAction.CONFIGURE, "addr": window, "bytes": 1 << 20,
              "store_addr": store})
    assert await bench.run(await _program(bench, prog), 1) == 0
    layer = Layer(bench, lay, rng, m=2, n=4)
    saved = bench.rams[wname][0]._read, bench.rams[wname][1]._write
    _poison(bench, wname, layer.w_addrs[0], geom.line_bytes)
    prog = Program(lay)
    layer.add_to(prog)
    status = await bench.run(await _program(bench, prog), len(prog), timeout_cycles=2_000_000)
    assert status & 1 and (status >> 8) & 0xFF == ErrorCode.AXI_RESP, f"STATUS {status:#x}"
    bench.rams[wname][0]._read, bench.rams[wname][1]._write = saved
    prog = Program(lay)
    prog.add({"op": Opcode.CACHE, "action": CacheAction.INVALIDATE, "addr": window, "bytes": 1 << 20,
              "store_addr": 0})
    layer.add_to(prog)
    assert await bench.run(await _program(bench, prog), len(prog), timeout_cycles=2_000_000) == 0
    layer.check(bench, "the layer after an AXI error on a fill and INVALIDATE")
