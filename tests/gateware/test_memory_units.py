"""The memory family's RTL units in amaranth.sim against their golden models, bit for bit:
ChaCha20 and Poly1305 against the `cryptography` package, the oblivious-map unit against
numerics.omap, the tile cache against numerics.memory (hit/miss/victim sequence, data, tags,
counters, memory) under random stalls and back-pressure; and the CACHE/OMAP descriptor rules
in RTL against their integer form."""
from __future__ import annotations

import os
import random
import struct

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from cryptography.hazmat.primitives.poly1305 import Poly1305

from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, OmapAction, OmapOp, Opcode
from hbmforge.engines.memory import NODE_FREE, CacheGeometry, ControlBlock, OmapGeometry, plan_omap
from hbmforge.generators.engine import rtl_error_code
from hbmforge.generators.memory.chacha import CHACHA_CYCLES, CHACHA_IN_FLIGHT, ChaCha20Core
from hbmforge.generators.memory.poly1305 import Poly1305Core
from hbmforge.generators.memory.testing import random_cache_ops, run_cache_bench, run_omap_bench
from hbmforge.layout import DesignLayout
from hbmforge.numerics.omap import chacha20_block
from hbmforge.numerics.program import SparseMemory

from designs import tiny_memory_config_dict
from sim_helpers import simulate


async def _chacha_request(ctx, dut, key: bytes, words: bytes) -> None:
    """Offer one request to the ChaCha20 core until it is taken (valid stays set)."""
    ctx.set(dut.req.payload.key, int.from_bytes(key, "little"))
    ctx.set(dut.req.payload.words, int.from_bytes(words, "little"))
    ctx.set(dut.req.valid, 1)
    await ctx.tick().until(dut.req.ready)


def test_chacha20_blocks_match_the_cryptography_package():
    dut = ChaCha20Core()
    rng = random.Random(1)
    cases = [(bytes(32), bytes(16)), (b"\xff" * 32, b"\xff" * 16)] + \
        [(rng.randbytes(32), rng.randbytes(16)) for _ in range(3)]

    async def bench(ctx):
        for key, words in cases:
            await _chacha_request(ctx, dut, key, words)
            ctx.set(dut.req.valid, 0)
            cycles = 0
            while not ctx.get(dut.block.valid):
                await ctx.tick()
                cycles += 1
            assert cycles == CHACHA_CYCLES
            assert ctx.get(dut.block.payload).to_bytes(64, "little") == chacha20_block(key, words)
            ctx.set(dut.block.ready, 1)
            await ctx.tick()
            ctx.set(dut.block.ready, 0)
    simulate(dut, bench, deadline=2000)


def test_chacha20_keeps_four_blocks_in_flight_and_gives_them_in_order():
    """Requests back to back: four blocks come within a few cycles of each other; a fifth waits
    for a taken block; under random back-pressure every block is right and in request order."""
    dut = ChaCha20Core()
    rng = random.Random(5)
    cases = [(rng.randbytes(32), rng.randbytes(16)) for _ in range(11)]
    got = []

    async def requester(ctx):
        for key, words in cases:
            await _chacha_request(ctx, dut, key, words)
        ctx.set(dut.req.valid, 0)

    async def taker(ctx):
        cycle = 0
        first = []
        while len(got) < len(cases):
            ready = 1 if len(got) < CHACHA_IN_FLIGHT else rng.random() < 0.3
            ctx.set(dut.block.ready, ready)
            valid, payload = ctx.get(dut.block.valid), ctx.get(dut.block.payload)
            await ctx.tick()
            cycle += 1
            if valid and ready:
                got.append(payload.to_bytes(64, "little"))
                first.append(cycle)
        # the first four, asked for back to back (a request is taken every other cycle), come
        # out within a few cycles of each other
        assert first[CHACHA_IN_FLIGHT - 1] - first[0] <= 2 * CHACHA_IN_FLIGHT - 1, first
        assert first[CHACHA_IN_FLIGHT - 1] <= CHACHA_CYCLES + 3 * CHACHA_IN_FLIGHT, first
        # the fifth entered only when the first was taken: a whole block's time later
        assert first[CHACHA_IN_FLIGHT] - first[0] >= CHACHA_CYCLES, first

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(requester)
    sim.add_testbench(taker)
    sim.run_until(5e-3)
    assert got == [chacha20_block(k, w) for k, w in cases]


def test_poly1305_tags_match_the_cryptography_package():
    dut = Poly1305Core()
    rng = random.Random(2)
    cases = [(rng.randbytes(32), rng.randbytes(16 * n)) for n in (1, 2, 5)]
    cases.append((b"\xff" * 32, b"\xff" * 64))              # the largest r and blocks: both folds carry
    cases.append((bytes(16) + b"\xff" * 16, bytes(32)))      # r = 0: the tag is s

    async def bench(ctx):
        for key, msg in cases:
            ctx.set(dut.key.payload, int.from_bytes(key, "little"))
            ctx.set(dut.key.valid, 1)
            await ctx.tick().until(dut.key.ready)
            ctx.set(dut.key.valid, 0)
            blocks = [msg[i:i + 16] for i in range(0, len(msg), 16)]
            for j, b in enumerate(blocks):
                ctx.set(dut.msg.payload.data, int.from_bytes(b, "little"))
                ctx.set(dut.msg.payload.last, j == len(blocks) - 1)
                ctx.set(dut.msg.valid, 1)
                await ctx.tick().until(dut.msg.ready)
                ctx.set(dut.msg.valid, 0)
            while not ctx.get(dut.tag.valid):
                await ctx.tick()
            assert ctx.get(dut.tag.payload).to_bytes(16, "little") == Poly1305.generate_tag(key, msg)
            ctx.set(dut.tag.ready, 1)
            await ctx.tick()
            ctx.set(dut.tag.ready, 0)
    simulate(dut, bench, deadline=5000)


def _omap_memory(geom: OmapGeometry, capacity: int, seed: int):
    mem = SparseMemory()
    plan = plan_omap(geom, capacity)
    ctrl, dir_base = 0x1000, 0x10000
    meta = dir_base + plan.dir_bytes
    nodes = meta + plan.meta_bytes
    keys = random.Random(seed).randbytes(96)
    cb = ControlBlock(epoch=9, bins_log2=plan.bins_log2, k_enc=keys[:32], k_prf=keys[32:64], k_hash=keys[64:],
                      bins_base=1 << 40, dir_base=dir_base, meta_base=meta, nodes_base=nodes, dir_log2=plan.dir_log2,
                      node_count=plan.nodes, capacity=capacity, free_head=1, t_read=150, t_write=900, t_slot=1000)
    mem.write(ctrl, cb.pack())
    for i in range(plan.nodes):
        mem.write(nodes + i * geom.node_bytes + geom.slot_bytes,
                  geom.pack_link(i + 2 if i + 1 < plan.nodes else 0, 0, NODE_FREE))
    return mem, ctrl


def _records(mem, addr, geom, ops):
    for i, (op, key, value) in enumerate(ops):
        r = bytearray(geom.record_bytes)
        struct.pack_into("<I", r, 0, op)
        r[8:8 + len(key)] = key
        r[24:24 + len(value)] = value
        mem.write(addr + i * geom.record_bytes, bytes(r))


@pytest.mark.parametrize("word_bytes", [8, pytest.param(32, marks=pytest.mark.slow)])   # 32: ~1 min; the co-sim
                                                                                          # benchmark runs 256-bit
def test_oblivious_map_unit_matches_the_golden_model_under_backpressure(word_bytes):
    """BULK, FORMAT, then queries one job each (memory compared after every job), a tampered bin."""
    geom = OmapGeometry(word_bytes, 4, 8, 8, 1 << 20)
    mem, ctrl = _omap_memory(geom, 12, seed=word_bytes)
    rng = random.Random(word_bytes)
    keys = [rng.randbytes(8) for _ in range(14)]
    _records(mem, 0xA00000, geom, [(0, k, bytes([i]) * 8) for i, k in enumerate(keys[:5])])
    ops = [(rng.choice([OmapOp.GET, OmapOp.PUT, OmapOp.DELETE, OmapOp.NOP, OmapOp.PUT]), rng.choice(keys),
            rng.randbytes(8)) for _ in range(8)]
    _records(mem, 0x800000, geom, ops)
    jobs = [dict(action=OmapAction.BULK, ctrl_addr=ctrl, src_addr=0xA00000, dst_addr=0xB00000, count=5),
            dict(action=OmapAction.FORMAT, ctrl_addr=ctrl, src_addr=0, dst_addr=0, count=0)]
    jobs += [dict(action=OmapAction.QUERY, ctrl_addr=ctrl, src_addr=0x800000 + i * geom.record_bytes,
                  dst_addr=0x900000 + i * geom.record_bytes, count=1) for i in range(len(ops))]
    problems, faults, cmds = run_omap_bench(geom, jobs, mem, seed=word_bytes)
    assert problems == [], problems
    assert faults == [0] * len(jobs)
    assert len(cmds["h"]) == len(ops) and len(cmds["hw"]) == 2 ** plan_omap(geom, 12).bins_log2 + len(ops)
    assert {c[2] for c in cmds["h"] + cmds["hw"]} == {geom.bin_bytes}
    # a flipped host byte: the next query that reads that bin stops with OMAP_TAMPERED, like golden
    first = cmds["hw"][-1][1]
    raw = bytearray(mem.read(first, 8))
    raw[0] ^= 0x80
    mem.write(first, bytes(raw))
    probe = [dict(action=OmapAction.QUERY, ctrl_addr=ctrl, src_addr=0x800000, dst_addr=0x900000, count=len(ops))]
    problems, faults, _ = run_omap_bench(geom, probe, mem, seed=3)
    assert problems == [] and faults == [ErrorCode.OMAP_TAMPERED]


@pytest.mark.parametrize("policy, write, seed", [("lru", "write_back", 1), ("lfu", "write_through", 2),
                                                 ("random", "write_back", 3)])
def test_tile_cache_matches_the_golden_model_under_backpressure(policy, write, seed):
    geom = CacheGeometry(8, 1024, 2, 4, policy, write, 2)
    rng = random.Random(seed)
    mem = SparseMemory()
    base, window = 1 << 40, 16 * 1024
    for a in range(0, window + 4096, 512):
        mem.write(base + a, rng.randbytes(512))
    ops = random_cache_ops(rng, base=base, window=window, line=1024, word=8, count=18, store=0x100000)
    problems, rtl, gold = run_cache_bench(geom, ops, mem, seed=seed)
    assert problems == [], problems
    assert rtl == gold                                      # the same hit/miss/victim sequence


def test_memory_descriptor_rules_agree_in_rtl_and_on_the_host():
    layout = DesignLayout(parse_config(tiny_memory_config_dict()))
    rng = random.Random(7)
    edge = [0, 1, 7, 8, 1023, 1024, 1025, 4096, (1 << 32) - 1024, 1 << 32, (1 << 40), (1 << 40) + 1024, (1 << 64) - 1]
    cases = []
    for op in (Opcode.CACHE, Opcode.OMAP):
        names = layout.fields_for(op)[1:]
        for _ in range(150):
            d = {n: rng.choice(edge + [rng.randrange(1 << 20) * 8]) for n in names}
            d["action"] = rng.randrange(0, 8)
            d["op"] = int(op)
            cases.append(d)
    m = Module()
    fields = {n: Signal(64, name=n) for n in ("action", "addr", "bytes", "store_addr", "ctrl_addr", "src_addr",
                                              "dst_addr", "count")}
    codes = {op: rtl_error_code(m, layout.checks(op), fields, name=f"code_{op.name.lower()}")
             for op in (Opcode.CACHE, Opcode.OMAP)}
    seen = set()

    async def bench(ctx):
        for d in cases:
            for n, s in fields.items():
                ctx.set(s, d.get(n, 0))
            await ctx.delay(1e-9)
            want, _ = layout.validate_descriptor(d)
            assert ctx.get(codes[Opcode(d["op"])]) == want, d
            seen.add(int(want))
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert {0, ErrorCode.BAD_CACHE_ACTION, ErrorCode.BAD_CACHE_RANGE, ErrorCode.BAD_OMAP_ACTION,
            ErrorCode.BAD_OMAP_COUNT, ErrorCode.MISALIGNED} <= seen
