"""Test support for the attention engine: random paged-cache scenarios and an amaranth.sim bench.

:class:`AttentionBench` serves the engine's DMA commands from a Python byte memory with random
stalls on every reader (command and data) and random back-pressure on the writer, records every
command per port, and can *poison* address ranges: reading any poisoned byte fails the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...engines.attention import ATTENTION_FIELDS, attention_geometry, validate_attention
from ...layout import DesignLayout
from ...mathutil import ceil_div, round_up
from ..dma_bench import DmaBench
from ...numerics.attention import pack_block_table, run_attention

__all__ = ["AttentionBench", "AttnJob", "ByteMemory", "add_sequences", "add_head_parallel_sequences"]


class ByteMemory:
    """``read``/``write`` over a bytearray (the golden model's memory interface)."""

    def __init__(self, buf: bytearray):
        self.mem = buf

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or addr + n > len(self.mem):
            raise IndexError(f"read [{addr:#x}, {addr + n:#x}) outside the bench memory")
        return bytes(self.mem[addr:addr + n])

    def write(self, addr: int, data) -> None:
        self.mem[addr:addr + len(data)] = bytes(data)


@dataclass
class AttnJob:
    d: dict                                   # descriptor fields (ATTENTION_FIELDS)
    out_bytes: int
    expected: bytes | None = None
    result: bytes | None = None
    golden: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


class AttentionBench(DmaBench):
    def __init__(self, layout: DesignLayout, *, seed: int = 0, stall: float = 0.0, backpressure: float = 0.0,
                 engine=None):
        from .engine import AttentionEngine

        super().__init__(layout, engine if engine is not None else AttentionEngine(layout), seed=seed,
                         stall=stall, backpressure=backpressure, response_delay=(1, 6))
        self.geom = attention_geometry(layout)
        self.mem = bytearray(4096)
        self.jobs: list[AttnJob] = []
        self.poison: list[tuple[int, int]] = []
        self.poison_hits: list = []

    # -- memory ----------------------------------------------------------------------------
    def alloc(self, nbytes: int, fill=None) -> int:
        addr = round_up(len(self.mem) + 64, 4096)
        self.mem.extend(bytes(addr - len(self.mem)))
        data = bytes(fill) if fill is not None else bytes(nbytes)
        data = data + bytes(-len(data) % self.layout.word_bytes)
        self.mem.extend(data)
        return addr

    def add(self, d: dict) -> AttnJob:
        code, why = validate_attention(d, self.layout)
        if code:
            raise ValueError(f"bad descriptor ({code}): {why}")
        q_heads = d["kv_heads"] * d["q_per_kv"]
        out_bytes = d["n_q"] * q_heads * self.geom.out_row_bytes
        d["o_addr"] = self.alloc(out_bytes, bytes([0xA5]) * out_bytes)
        job = AttnJob(dict(d), out_bytes)
        self.jobs.append(job)
        return job

    def expect(self):
        """Run the golden model on a copy of the memory, job after job."""
        shadow = ByteMemory(bytearray(self.mem))
        for job in self.jobs:
            job.golden = run_attention(shadow, job.d, self.layout)
            job.expected = shadow.read(job.d["o_addr"], job.out_bytes)

    def check_read(self, name: str, addr: int, n: int):
        for lo, hi in self.poison:
            if addr < hi and lo < addr + n:
                self.poison_hits.append((name, addr, n))
                raise AssertionError(f"{name} read [{addr:#x}, {addr + n:#x}) touches poisoned [{lo:#x}, {hi:#x})")

    def run(self, max_cycles: int = 100_000, vcd: str | None = None):
        from amaranth.sim import Simulator

        self.expect()
        dut = self.dut
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        self.add_dma(sim)
        counters = {"cycles": 0, "macs": 0, "busy": 0, "stall": 0, "kv_words": 0,
                    **{f"w{i}_words": 0 for i in range(self.geom.kv_ports)}}
        kv_data = [dut.w_data[i] for i in range(self.geom.kv_ports)]

        async def monitor(ctx):
            while True:
                _, _, macs, busy, stall, *hs = await ctx.tick().sample(
                    dut.mac_inc, dut.busy, dut.stall, *[x for w in kv_data for x in (w.valid, w.ready)])
                counters["cycles"] += 1
                counters["macs"] += macs
                counters["busy"] += busy
                counters["stall"] += stall
                counters["kv_words"] += sum(hs[k] and hs[k + 1] for k in range(0, len(hs), 2))
                for k in range(0, len(hs), 2):
                    if hs[k] and hs[k + 1]:
                        counters[f"w{k // 2}_words"] += 1

        sim.add_testbench(monitor, background=True)

        async def driver(ctx):
            for job in self.jobs:
                before = dict(counters)
                for f in ATTENTION_FIELDS:          # slots a job leaves out read 0, as in the kernel
                    ctx.set(getattr(dut.job.payload, f), job.d.get(f, 0))
                await self.submit(ctx, max_cycles, lambda: f"attention job {job.d}")
                job.stats = {k: counters[k] - before[k] for k in counters}
                job.result = bytes(self.mem[job.d["o_addr"]:job.d["o_addr"] + job.out_bytes])

        sim.add_testbench(driver)
        self.run_sim(sim, vcd)
        return self.jobs


def add_sequences(bench: AttentionBench, rng: np.random.Generator, specs, *, kv_heads: int, q_per_kv: int,
                  kv_bits: int, spare_pages: int = 3, poison: bool = True) -> list[AttnJob]:
    """Sequences ``specs`` (dicts with ``n_q``, ``ctx_len``, ``window``, ``sink``, optionally ``mode``
    and ``valid_len``) sharing one K and one V page pool with shuffled block tables; random cache
    contents, Q records and multipliers.
    With ``poison``, every byte the job must not read (pages nobody uses, pages or value records of
    tokens no query of the sequence sees) is poisoned."""
    geom = bench.geom
    P, B = geom.page_tokens, geom.word_bytes
    pages_per = [ceil_div(s["ctx_len"], P) for s in specs]
    total = sum(pages_per) + spare_pages
    perm = [int(x) for x in rng.permutation(total)]
    pbytes = geom.page_bytes(kv_bits, kv_heads)
    k_pool = bench.alloc(total * pbytes, rng.integers(0, 256, total * pbytes, dtype=np.uint8).tobytes())
    v_pool = bench.alloc(total * pbytes, rng.integers(0, 256, total * pbytes, dtype=np.uint8).tobytes())
    q_heads = kv_heads * q_per_kv
    used = set()
    jobs = []
    nxt = 0
    for s, npg in zip(specs, pages_per):
        table = perm[nxt:nxt + npg]
        nxt += npg
        bt = bench.alloc(len(table) * 4, pack_block_table(table, B))
        n_q = s["n_q"]
        recs = bytearray()
        base_shift = 33 if kv_bits == 8 else 26
        for _ in range(n_q * q_heads):
            q = rng.integers(-128, 128, geom.head_dim).astype(np.int8).tobytes()
            mult = int(rng.integers(1 << 14, 1 << 16))
            shift = int(np.clip(base_shift + rng.integers(-4, 6), 0, 63))
            rec = q + mult.to_bytes(2, "little") + bytes([shift])
            recs += rec + bytes(geom.q_record_bytes - len(rec))
        q_addr = bench.alloc(len(recs), recs)
        d = {"head_dim": geom.head_dim, "kv_heads": kv_heads, "q_per_kv": q_per_kv, "n_q": n_q,
             "ctx_len": s["ctx_len"], "window": s.get("window", 0), "sink": s.get("sink", 0),
             "kv_bits": kv_bits, "mode": s.get("mode", 0), "valid_len": s.get("valid_len", 0), "q_addr": q_addr, "bt_addr": bt, "k_pool": k_pool, "v_pool": v_pool,
             "o_addr": 0}
        jobs.append(bench.add(d))
        if poison:
            from ...engines.attention import key_limit, visible
            ctx = s["ctx_len"]
            keys = key_limit(d)
            need = [any(visible(p, j, d["window"], d["sink"], keys=keys) for p in range(ctx - n_q, ctx))
                    for j in range(npg * P)]
            _poison_unseen(bench, geom, kv_bits, (k_pool, v_pool), kv_heads, table, need, pbytes, used)
    if poison:
        _poison_unused_pages(bench, (k_pool, v_pool), total, pbytes, used)
    return jobs


def add_head_parallel_sequences(bench: AttentionBench, rng: np.random.Generator, specs, *, kv_heads: int,
                                kv_bits: int, spare_pages: int = 2, poison: bool = True) -> list[AttnJob]:
    """Head-parallel decode jobs (``kv_layout`` 1): ``specs`` (dicts with ``ctx_len`` and optionally
    ``window``, ``sink``) share one block-table page numbering; port group r (``rows`` groups of
    ``kv_heads / rows`` heads) has its own random K and V pools and the job's pool table lists them.
    With ``poison``, unused pages and the value records of masked tokens in every group pool are
    poisoned, and so is every byte of the shared-layout fields the job must not use."""
    from ...engines.attention import KV_HEAD_PARALLEL, visible

    geom = bench.geom
    R, P, B = geom.rows, geom.page_tokens, geom.word_bytes
    hg = kv_heads // R
    pages_per = [ceil_div(s["ctx_len"], P) for s in specs]
    total = sum(pages_per) + spare_pages
    perm = [int(x) for x in rng.permutation(total)]
    pbytes = geom.page_bytes(kv_bits, hg)
    pools = []
    for _ in range(2 * R):          # K pools of groups 0..R-1, then their V pools
        pools.append(bench.alloc(total * pbytes, rng.integers(0, 256, total * pbytes, dtype=np.uint8).tobytes()))
    table = b"".join(p.to_bytes(8, "little") for p in pools)
    tbl_addr = bench.alloc(len(table), table + bytes(geom.pool_table_bytes - len(table)))
    used = set()
    jobs = []
    nxt = 0
    base_shift = 33 if kv_bits == 8 else 26
    for s, npg in zip(specs, pages_per):
        bt_pages = perm[nxt:nxt + npg]
        nxt += npg
        bt = bench.alloc(len(bt_pages) * 4, pack_block_table(bt_pages, B))
        recs = bytearray()
        for _ in range(kv_heads):
            q = rng.integers(-128, 128, geom.head_dim).astype(np.int8).tobytes()
            mult = int(rng.integers(1 << 14, 1 << 16))
            shift = int(np.clip(base_shift + rng.integers(-4, 6), 0, 63))
            rec = q + mult.to_bytes(2, "little") + bytes([shift])
            recs += rec + bytes(geom.q_record_bytes - len(rec))
        q_addr = bench.alloc(len(recs), recs)
        d = {"head_dim": geom.head_dim, "kv_heads": kv_heads, "q_per_kv": 1, "n_q": 1,
             "ctx_len": s["ctx_len"], "window": s.get("window", 0), "sink": s.get("sink", 0),
             "kv_bits": kv_bits, "mode": 0, "valid_len": 0, "q_addr": q_addr, "bt_addr": bt,
             "k_pool": tbl_addr, "v_pool": 0, "o_addr": 0, "kv_layout": KV_HEAD_PARALLEL}
        jobs.append(bench.add(d))
        if poison:
            ctx = s["ctx_len"]
            p = ctx - 1
            need = [visible(p, j, d["window"], d["sink"]) for j in range(npg * P)]
            _poison_unseen(bench, geom, kv_bits, pools, hg, bt_pages, need, pbytes, used)
    if poison:
        _poison_unused_pages(bench, pools, total, pbytes, used)
    return jobs


def _poison_unseen(bench, geom, kv_bits, pools, heads, pages, need, pbytes, used):
    """Poison the value records of the tokens a job must not read (``need[j]`` false) in the
    pages it visits; ``used`` collects those pages."""
    P, vb = geom.page_tokens, geom.value_bytes(kv_bits)
    for lp, page in enumerate(pages):
        toks = need[lp * P:(lp + 1) * P]
        if not any(toks):
            continue
        used.add(page)
        for pool in pools:
            for h in range(heads):
                hb = pool + page * pbytes + h * geom.head_area(kv_bits) + geom.scale_area
                bench.poison.extend((hb + t * vb, hb + (t + 1) * vb) for t, ok in enumerate(toks) if not ok)


def _poison_unused_pages(bench, pools, total, pbytes, used):
    """Poison every page no job visits."""
    for page in range(total):
        if page not in used:
            bench.poison.extend((pool + page * pbytes, pool + (page + 1) * pbytes) for pool in pools)
