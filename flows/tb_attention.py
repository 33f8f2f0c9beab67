"""cocotb regression of the attention engine inside a generated kernel.

Runs with :mod:`hbmforge.flows.tb_kernel` (same bench: cocotbext-axi RAM models with
random back-pressure and latency on every port, the AXI rule monitor) when the
design has an attention engine; every test is skipped otherwise. Each job's
output is compared bit for bit with :func:`hbmforge.numerics.attention.run_attention`
run on a mirror of the memory, and the counters with the golden's MAC and KV
byte counts. Programs mix ATTENTION and MATMUL descriptors, so the command
processor's dispatch and the channel switching between engines are exercised; causal
(window, sink+window) and bidirectional (encoder, with padded keys) jobs alike.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np

from hbmforge.encodings import ErrorCode, Opcode
from hbmforge.engines.attention import attention_geometry
from hbmforge.numerics.attention import (AttentionCase, pack_block_table, pack_q_records,
                                         run_attention, write_kv_token)
from hbmforge.numerics.program import SparseMemory

from .tb_kernel import SEED, Layer, Mirrored, Program, _bench, design_has, _program

CASES = int(os.environ.get("HBMFORGE_TB_CASES", "4"))
HAS_ATTENTION = design_has("attention")


class AttnJob:
    """One random attention call: a sequence in its own shuffled pages, Q records, an output buffer."""

    def __init__(self, bench, mem: Mirrored, lay, rng: np.random.Generator, *, prefill: bool,
                 bidirectional: bool = False):
        att = lay.attention
        geom = attention_geometry(lay)
        self.lay, self.geom = lay, geom
        kv_heads = int(rng.integers(1, 3))
        q_per_kv = int(rng.choice([1, 2]))
        n_q = int(rng.integers(2, 2 * att.rows + 2)) if prefill else 1
        ctx = int(rng.integers(n_q, min(att.max_context, 5 * att.page_tokens + n_q) + 1))
        window = int(rng.choice([0, 0, int(rng.integers(2, 3 * att.page_tokens))]))
        sink = int(rng.integers(1, 4)) if window and rng.random() < 0.6 else 0
        valid_len = 0
        if bidirectional:                   # an encoder: every query sees the first valid_len keys
            window = sink = 0
            valid_len = int(rng.integers(1, ctx + 1)) if rng.random() < 0.8 else 0
        bits = int(rng.choice(att.kv_bits))
        case = AttentionCase(rng, n_q=n_q, ctx_len=ctx, kv_heads=kv_heads, q_per_kv=q_per_kv,
                             head_dim=att.head_dim, group_size=att.kv_group_size, kv_bits=bits)
        pt = att.page_tokens
        logical = -(-ctx // pt)
        spare = int(rng.integers(1, 4))                       # pages of other sequences, never read
        pages = rng.permutation(logical + spare)[:logical]
        page_bytes = geom.page_bytes(bits, kv_heads)
        pool_bytes = (logical + spare) * page_bytes
        k_pool = bench.alloc(pool_bytes, "w0")
        v_pool = bench.alloc(pool_bytes, f"w{att.kv_ports - 1}") if att.kv_ports > 1 else bench.alloc(pool_bytes, "w0")
        junk = rng.integers(0, 256, pool_bytes, dtype=np.uint8).tobytes()
        mem.write(k_pool, junk)
        mem.write(v_pool, junk[::-1])
        for t in range(ctx):
            page, slot = int(pages[t // pt]), t % pt
            write_kv_token(mem, geom, k_pool, page, slot, case.k[t], case.km[t], bits)
            write_kv_token(mem, geom, v_pool, page, slot, case.v[t], case.vm[t], bits)
        bt = pack_block_table(pages, lay.word_bytes)
        bt_addr = bench.alloc(len(bt))
        mem.write(bt_addr, bt)
        qrec = pack_q_records(geom, case.q, case.mult, case.shift)
        q_addr = bench.alloc(len(qrec))
        mem.write(q_addr, qrec)
        self.out_bytes = n_q * kv_heads * q_per_kv * geom.out_row_bytes
        o_addr = bench.alloc(self.out_bytes)
        mem.write(o_addr, bytes([0xA5]) * self.out_bytes)       # poison: every byte must be written
        self.d = {"head_dim": att.head_dim, "kv_heads": kv_heads, "q_per_kv": q_per_kv, "n_q": n_q,
                  "ctx_len": ctx, "window": window, "sink": sink, "kv_bits": bits,
                  "mode": int(bidirectional), "valid_len": valid_len, "q_addr": q_addr,
                  "bt_addr": bt_addr, "k_pool": k_pool, "v_pool": v_pool, "o_addr": o_addr}

    def add_to(self, prog: Program) -> int:
        return prog.add({"op": Opcode.ATTENTION, **self.d})

    def expect(self, mirror: SparseMemory) -> dict:
        stats = run_attention(mirror, self.d, self.lay)
        self.expected = mirror.read(self.d["o_addr"], self.out_bytes)
        return stats

    def check(self, bench, label: str):
        got = bench.read(self.d["o_addr"], self.out_bytes)
        if got != self.expected:
            a = np.frombuffer(got, dtype="<i4")
            b = np.frombuffer(self.expected, dtype="<i4")
            bad = np.flatnonzero(a != b)
            raise AssertionError(f"{label}: {bad.size} of {a.size} outputs differ ({self.d}); first at "
                                 f"{bad[0]}: got {a[bad[0]]} expected {b[bad[0]]}")


@cocotb.test(skip=not HAS_ATTENTION)
async def test_attention_and_matmul_program_matches_golden_under_backpressure(dut):
    bench, lay = await _bench(dut, seed_offset=101)
    rng = np.random.default_rng(SEED + 101)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    prog = Program(lay)
    jobs, layers = [], []
    for i in range(max(2, CASES) + 1):          # the last job: a bidirectional (encoder) one
        job = AttnJob(bench, mem, lay, rng, prefill=bool(i % 2) or i == max(2, CASES),
                      bidirectional=i == max(2, CASES) or i % 4 == 3)
        job.add_to(prog)
        jobs.append(job)
        if i == 0:                                   # an engine switch in both directions
            layer = Layer(bench, lay, rng)
            layer.add_to(prog)
            layers.append(layer)
    expected_macs = sum(layer.m * layer.k * layer.n for layer in layers)
    kv_read = [0] * len([p for p in lay.ports if p.name != "data"])
    for job in jobs:
        stats = job.expect(mirror)
        expected_macs += stats["mac_ops"]
        for p, nbytes in enumerate(stats["kv_bytes_read"]):
            kv_read[p] += nbytes
    addr = await _program(bench, prog)
    status = await bench.run(addr, len(prog), timeout_cycles=4_000_000)
    assert status == 0, f"STATUS {status:#x}"
    assert await bench.reg_read("DESC_DONE") == len(prog)
    for i, job in enumerate(jobs):
        job.check(bench, f"attention job {i}")
    for i, layer in enumerate(layers):
        layer.check(bench, f"matmul layer {i}")
    assert await bench.reg_read("MAC_OPS") == expected_macs
    if not layers or all(layer.m <= lay.mm.rows for layer in layers):
        # weight bytes are read once per row block; with one block they add to the KV bytes
        wbytes = [sum(lay.matmul.weight_port_bytes(layer.n, layer.k, layer.wbits) for layer in layers)
                  if p < lay.mm.weight_ports else 0 for p in range(len(kv_read))]
        for p, nbytes in enumerate(kv_read):
            got = await bench.reg_read(f"W{p}_BYTES_READ")
            assert got == nbytes + wbytes[p], f"W{p}_BYTES_READ {got}, expected {nbytes} KV + {wbytes[p]} weights"


@cocotb.test(skip=not HAS_ATTENTION)
async def test_bad_attention_descriptor_stops_with_code_and_index(dut):
    bench, lay = await _bench(dut, seed_offset=202, busy=0.1)
    rng = np.random.default_rng(SEED + 202)
    mirror = SparseMemory()
    job = AttnJob(bench, Mirrored(bench, mirror), lay, rng, prefill=False)
    prog = Program(lay)
    job.add_to(prog)
    raw = bytearray(prog.to_bytes())
    size = lay.descriptor_bytes
    bad = bytearray(raw)                          # descriptor 1: a context longer than the cache
    off = lay.field_offset("ctx_len", Opcode.ATTENTION)
    bad[off:off + 8] = (lay.attention.max_context + 1).to_bytes(8, "little")
    program = bytes(raw) + bytes(bad[:size]) + bytes(raw)
    addr = bench.alloc(len(program))
    bench.write(addr, program)
    job.expect(mirror)
    status = await bench.run(addr, 3)
    assert status & 1 and (status >> 8) & 0xFF == ErrorCode.BAD_CONTEXT and status >> 16 == 1, f"{status:#x}"
    assert await bench.reg_read("DESC_DONE") == 1
    job.check(bench, "the descriptor before the bad one")
