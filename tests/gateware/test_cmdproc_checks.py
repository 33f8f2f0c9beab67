"""The command processor on its own with the tiny attention design: ATTENTION descriptors whose
``kv_heads x q_per_kv`` product is at, below and above MAX_HEADS (the check whose 11 x 11 product
has its own register stage) stop a run with the host's code at their index, and good ones run."""
from __future__ import annotations

import random

import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, Opcode
from hbmforge.engines.attention import MAX_HEADS
from hbmforge.generators.attention.signature import attention_job_layout
from hbmforge.generators.matmul.signature import matmul_job_layout
from hbmforge.generators.shell.cmdproc import CommandProcessor
from hbmforge.layout import DesignLayout
from designs import tiny_attention_config_dict
from sim_helpers import put, simulate

PROGRAM = 0x1000


@pytest.fixture(scope="module")
def layout():
    return DesignLayout(parse_config(tiny_attention_config_dict()))


def _attention(layout, **over) -> dict:
    w = layout.word_bytes
    att = layout.attention
    d = {"head_dim": att.head_dim, "kv_heads": 2, "q_per_kv": 2, "n_q": 1, "ctx_len": 10, "window": 0,
         "sink": 0, "kv_bits": 8, "q_addr": 64 * w, "bt_addr": 128 * w, "k_pool": 4096, "v_pool": 8192,
         "o_addr": 256 * w}
    d = {**{n: 0 for n in layout.fields_for(Opcode.ATTENTION)[1:]}, **d, **over}
    d["op"] = int(Opcode.ATTENTION)
    return d


def _encode(layout, descs) -> bytes:
    out = bytearray()
    for d in descs:
        raw = bytearray(layout.descriptor_bytes)
        for name in layout.fields_for(Opcode.ATTENTION):
            off = layout.field_offset(name, Opcode.ATTENTION)
            raw[off:off + 8] = (d[name] & (2**64 - 1)).to_bytes(8, "little")
        out += raw
    return bytes(out)


def _run_programs(layout, programs, seed=0):
    """Run each program (a list of descriptors) on a CommandProcessor; (STATUS, DESC_DONE) per run."""
    kinds = [f.kind for f in layout.families]
    jobs = [attention_job_layout() if k == "attention" else matmul_job_layout(layout.mm.weight_ports)
            for k in kinds]
    dut = CommandProcessor(layout, jobs)
    W = layout.config.data_width
    wb = W // 8
    mem = {}
    for i, descs in enumerate(programs):
        raw = _encode(layout, descs)
        base = PROGRAM + i * 0x1000
        for j in range(0, len(raw), wb):
            mem[base + j] = int.from_bytes(raw[j:j + wb], "little")
    rng = random.Random(seed)
    results = []

    async def reader(ctx):                     # the data port's read channel, with random gaps
        while True:
            ctx.set(dut.fetch.cmd.ready, 1)
            _, _, valid, addr, nbytes = await ctx.tick().sample(dut.fetch.cmd.valid, dut.fetch.cmd.payload.addr,
                                                                dut.fetch.cmd.payload.bytes)
            if not valid:
                continue
            ctx.set(dut.fetch.cmd.ready, 0)
            for a in range(addr, addr + nbytes, wb):
                while rng.random() < 0.2:
                    ctx.set(dut.fetch.data.valid, 0)
                    await ctx.tick()
                ctx.set(dut.fetch.data.payload, mem.get(a, 0))
                ctx.set(dut.fetch.data.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(dut.fetch.data.ready)
                    if ready:
                        break
            ctx.set(dut.fetch.data.valid, 0)

    async def engines(ctx):                    # every engine takes its job and reports done soon after
        for e in range(len(jobs)):
            ctx.set(dut.job(e).ready, 1)
        while True:
            _, _, *valids = await ctx.tick().sample(*(dut.job(e).valid for e in range(len(jobs))))
            if any(valids):
                for _ in range(rng.randrange(1, 4)):
                    await ctx.tick()
                await put(ctx, dut.job_done)
                ctx.set(dut.job_done.valid, 0)

    async def bench(ctx):
        for i, descs in enumerate(programs):
            ctx.set(dut.program, PROGRAM + i * 0x1000)
            ctx.set(dut.count, len(descs))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for _ in range(5000):
                _, _, done = await ctx.tick().sample(dut.done)
                if done:
                    break
            else:
                raise AssertionError(f"run {i} did not finish")
            results.append((ctx.get(dut.status), ctx.get(dut.desc_done)))

    simulate(dut, bench, background=[reader, engines])
    return results


HEADS = [(32, 32), (32, 33), (33, 32), (MAX_HEADS, 1), (1, MAX_HEADS), (MAX_HEADS + 1, 1), (2, 513), (31, 33),
         (45, 23), (1023, 1), (0, 5), (5, 0), (2048 + 2, 2), (2, 2048 + 2), (1 << 11, 1 << 11), (3, 341), (3, 342)]


def test_heads_product_check_stops_the_run_with_the_hosts_code_at_its_index(layout):
    rng = random.Random(5)
    cases = HEADS + [(rng.randrange(1, 80), rng.randrange(1, 80)) for _ in range(6)]
    programs = [[_attention(layout), _attention(layout, kv_heads=k, q_per_kv=g), _attention(layout)]
                for k, g in cases]
    got = _run_programs(layout, programs)
    want = []
    for descs in programs:
        assert layout.validate_descriptor(descs[0])[0] == ErrorCode.NONE
        code = layout.validate_descriptor(descs[1])[0]
        want.append((1 | int(code) << 8 | 1 << 16, 1) if code != ErrorCode.NONE else (0, 3))
    assert got == want
    # the cases hit both verdicts of the product, not only the range checks
    ok = [k * g <= MAX_HEADS for k, g in cases if 0 < k <= MAX_HEADS and 0 < g <= MAX_HEADS]
    assert True in ok and False in ok


def test_dispatch_takes_the_product_stage():
    assert CommandProcessor.DISPATCH_CYCLES == 5
