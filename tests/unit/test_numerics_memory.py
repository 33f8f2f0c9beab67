"""Golden models of the memory family: the tile cache's rules and the oblivious map's semantics,
authentication and host-visible trace (hbmforge.numerics.memory, hbmforge.numerics.omap)."""
from __future__ import annotations

import os
import random
import struct

import numpy as np
import pytest

from hbmforge.encodings import CacheAction, ErrorCode, OmapAction, OmapOp, OmapStatus
from hbmforge.engines.memory import (CB_BYTES, NODE_FREE, CacheGeometry, ControlBlock, OmapGeometry, plan_omap,
                                     omap_slot_timing)
from hbmforge.numerics.memory import TileCacheModel, belady_hits, lfsr_next, policy_hits
from hbmforge.numerics.omap import OmapFault, chacha20_block, open_sealed, run_omap, seal
from hbmforge.numerics.program import SparseMemory

LINE = 1024
BASE = 1 << 40


def _cache(policy="lru", write="write_back", ways=2, sets=2):
    mem = SparseMemory()
    model = TileCacheModel(CacheGeometry(8, LINE, ways, sets, policy, write, 2), memory=mem)
    model.configure(BASE, 64 * LINE, 0x100000)
    return model, mem


def test_lru_keeps_the_recent_lines_and_evicts_the_oldest():
    model, _ = _cache()
    lines = [0, 2, 0, 4, 2]                       # set 0 (sets = 2): lines 0, 2, 4
    for ln in lines:
        model.read(BASE + ln * LINE, 8)
    assert [e.kind for e in model.events] == ["miss", "miss", "hit", "miss", "miss"]
    assert model.counters["evictions"] == 2 and model.counters["hits"] == 1


def test_a_dirty_victim_is_written_back_before_its_slot_is_refilled():
    model, mem = _cache(ways=1, sets=1)
    mem.write(BASE, b"\x11" * LINE)
    model.write(BASE + 8, b"\x22" * 8)            # a partial write miss goes around the cache
    assert mem.read(BASE + 8, 8) == b"\x22" * 8
    model.write(BASE, b"\x33" * LINE)             # a whole line: allocated without a fill, dirty
    assert mem.read(BASE, 8) == b"\x11" * 8 and model.read(BASE, 8) == b"\x33" * 8
    model.read(BASE + LINE, 8)                    # evicts the dirty line: written back
    assert mem.read(BASE, LINE) == b"\x33" * LINE
    assert model.counters["writebacks"] == 1 and model.counters["backing_bytes_written"] == 8 + LINE


def test_write_through_updates_both_copies_and_flush_and_invalidate_walk_the_range():
    model, mem = _cache(write="write_through")
    model.read(BASE, 8)
    model.write(BASE + 16, b"\x44" * 8)
    assert mem.read(BASE + 16, 8) == b"\x44" * 8 and model.read(BASE + 16, 8) == b"\x44" * 8
    wb, _ = _cache(write="write_back")
    wb.read(BASE, 8)
    wb.write(BASE + 16, b"\x55" * 8)
    assert wb.memory.read(BASE + 16, 8) != b"\x55" * 8
    wb.flush(BASE, LINE)
    assert wb.memory.read(BASE + 16, 8) == b"\x55" * 8 and wb.counters["writebacks"] == 1
    wb.invalidate(BASE, LINE)
    assert all(not line.valid for row in wb.lines for line in row)


def test_prefetch_fills_missing_lines_without_counting_accesses():
    model, _ = _cache()
    model.prefetch(BASE, 2 * LINE)
    model.prefetch(BASE, LINE)
    assert [e.kind for e in model.events] == ["prefetch", "prefetch", "skip"]
    assert model.counters["prefetches"] == 2 and model.counters["hits"] == model.counters["misses"] == 0
    model.read(BASE, 2 * LINE)
    assert model.counters["hits"] == 2


def test_reads_outside_the_window_bypass_the_cache():
    model, mem = _cache()
    mem.write(0x5000, b"abcdefgh")
    assert model.read(0x5000, 8) == b"abcdefgh"
    assert model.events[-1].kind == "bypass" and model.counters["bypasses"] == 1


@pytest.mark.parametrize("policy", ["lru", "random", "lfu"])
@pytest.mark.parametrize("write", ["write_back", "write_through"])
def test_the_cache_is_transparent_for_random_traffic(policy, write):
    """Whatever the policy, reads through the cache return what a plain memory would."""
    rng = random.Random(hash((policy, write)) & 0xFFFF)
    model, mem = _cache(policy, write)
    plain = SparseMemory()
    for a in range(0, 8 * LINE, 512):
        blob = os.urandom(512)
        mem.write(BASE + a, blob)
        plain.write(BASE + a, blob)
    for _ in range(300):
        a = BASE + rng.randrange(0, 8 * LINE, 8)
        n = 8 * rng.randint(1, 200)
        if rng.random() < 0.6:
            assert model.read(a, n) == plain.read(a, n)
        elif rng.random() < 0.9:
            blob = os.urandom(n)
            model.write(a, blob)
            plain.write(a, blob)
        else:
            model.prefetch(a - a % LINE, LINE)
    model.flush(BASE, 64 * LINE)
    assert mem.read(BASE, 8 * LINE + 2048) == plain.read(BASE, 8 * LINE + 2048)


def test_belady_is_an_upper_bound_of_every_policy():
    rng = np.random.default_rng(4)
    trace = rng.zipf(1.3, 4000) % 200
    best = belady_hits(trace, sets=4, ways=4)
    for policy in ("lru", "random", "lfu"):
        assert policy_hits(trace, sets=4, ways=4, replacement=policy) <= best
    assert belady_hits([1, 2, 1, 3, 1, 2], sets=1, ways=2) == 2           # MIN evicts 2 (used last)
    cyclic = [1, 2, 3] * 2                                                 # LRU always evicts the next use
    assert policy_hits(cyclic, sets=1, ways=2, replacement="lru") == 0 < belady_hits(cyclic, sets=1, ways=2) == 2
    assert lfsr_next(0xACE1) == 0xE270


# -- the oblivious map ------------------------------------------------------------------------
GEOM = OmapGeometry(32, 4, 8, 8, 1 << 20)


class _Map:
    """A map laid out in a SparseMemory as the host would, run by the golden model."""

    def __init__(self, capacity=40, seed=1):
        self.mem = SparseMemory()
        self.g = GEOM
        self.plan = plan_omap(GEOM, capacity)
        p = self.plan
        self.ctrl, self.bins = 0x1000, 1 << 40
        dir_base = 0x10000
        meta = dir_base + p.dir_bytes
        nodes = meta + p.meta_bytes
        keys = random.Random(seed).randbytes(96)
        self.cb = ControlBlock(epoch=3, bins_log2=p.bins_log2, k_enc=keys[:32], k_prf=keys[32:64], k_hash=keys[64:],
                               bins_base=self.bins, dir_base=dir_base, meta_base=meta, nodes_base=nodes,
                               dir_log2=p.dir_log2, node_count=p.nodes, capacity=capacity, free_head=1,
                               t_read=1, t_write=2, t_slot=3)
        self.mem.write(self.ctrl, self.cb.pack())
        for i in range(p.nodes):
            self.mem.write(nodes + i * GEOM.node_bytes + GEOM.slot_bytes,
                           GEOM.pack_link(i + 2 if i + 1 < p.nodes else 0, 0, NODE_FREE))
        self.run(OmapAction.FORMAT, [])

    def run(self, action, ops):
        rec = GEOM.record_bytes
        for i, (op, key, value) in enumerate(ops):
            r = bytearray(rec)
            struct.pack_into("<I", r, 0, op)
            r[8:8 + len(key)] = key
            r[24:24 + len(value or b"")] = value or b""
            self.mem.write(0x800000 + i * rec, bytes(r))
        run = run_omap(self.mem, {"action": action, "ctrl_addr": self.ctrl, "src_addr": 0x800000,
                                  "dst_addr": 0x900000, "count": len(ops)}, GEOM)
        out = [(OmapStatus(struct.unpack_from("<I", self.mem.read(0x900000 + i * rec, 8))[0]),
                self.mem.read(0x900000 + i * rec + 24, 8)) for i in range(len(ops))]
        return run, out

    def control(self):
        return ControlBlock.unpack(self.mem.read(self.ctrl, CB_BYTES))


def test_the_map_answers_like_a_dict():
    m = _Map(capacity=40)
    rng = random.Random(5)
    keys = [os.urandom(8) for _ in range(60)]
    ref = {}
    for _ in range(12):
        ops = []
        for _ in range(15):
            op = rng.choice([OmapOp.GET, OmapOp.PUT, OmapOp.PUT, OmapOp.DELETE, OmapOp.NOP])
            ops.append((op, rng.choice(keys), os.urandom(8) if op == OmapOp.PUT else None))
        _, out = m.run(OmapAction.QUERY, ops)
        for (op, k, v), (st, val) in zip(ops, out):
            if op == OmapOp.GET:
                assert (st, val if st == OmapStatus.FOUND else None) == \
                    ((OmapStatus.FOUND, ref[k]) if k in ref else (OmapStatus.NOT_FOUND, None))
            elif op == OmapOp.PUT:
                if k in ref or len(ref) < 40:
                    assert st == (OmapStatus.UPDATED if k in ref else OmapStatus.INSERTED)
                    ref[k] = v
                else:
                    assert st == OmapStatus.FULL
            elif op == OmapOp.DELETE:
                assert st == (OmapStatus.DELETED if k in ref else OmapStatus.NOT_FOUND)
                ref.pop(k, None)
    cb = m.control()
    assert cb.count == len(ref) and cb.queries == 180


def test_every_query_reads_and_writes_one_bin_of_the_same_size():
    m = _Map()
    run, _ = m.run(OmapAction.QUERY, [(OmapOp.PUT, b"k%d" % i, b"v") for i in range(10)]
                   + [(OmapOp.GET, b"absent", None), (OmapOp.DELETE, b"k3", None), (OmapOp.NOP, b"", None)])
    assert [h.write for h in run.host] == [False, True] * 13
    assert {h.bytes for h in run.host} == {GEOM.bin_bytes}
    assert all(r.bin == w.bin for r, w in zip(run.host[::2], run.host[1::2]))


def test_host_bins_are_chacha20_poly1305_sealed_under_bin_version_epoch():
    m = _Map()
    cb = m.control()
    raw = m.mem.read(m.bins, GEOM.bin_bytes)
    plain = open_sealed(cb.k_enc, GEOM.nonce(0, 1, cb.epoch), raw[:GEOM.plain_bytes + 16])
    assert plain == bytes(GEOM.plain_bytes)                          # formatted: every slot empty
    assert seal(cb.k_enc, GEOM.nonce(0, 1, cb.epoch), plain) == raw[:GEOM.plain_bytes + 16]
    assert open_sealed(cb.k_enc, GEOM.nonce(0, 2, cb.epoch), raw[:GEOM.plain_bytes + 16]) is None
    assert len(chacha20_block(cb.k_prf, bytes(16))) == 64


def test_a_tampered_or_replayed_bin_fails_the_query_and_changes_nothing_else():
    m = _Map()
    m.run(OmapAction.QUERY, [(OmapOp.PUT, b"k%d" % i, b"%d" % i) for i in range(20)])
    old = {i: m.mem.read(m.bins + i * GEOM.bin_stride, GEOM.bin_bytes) for i in range(m.plan.bins)}
    m.run(OmapAction.QUERY, [(OmapOp.NOP, b"", None)] * 40)             # rewrite most bins
    replayed = next(i for i in old if m.mem.read(m.bins + i * GEOM.bin_stride, GEOM.bin_bytes) != old[i])
    m.mem.write(m.bins + replayed * GEOM.bin_stride, old[replayed])
    with pytest.raises(OmapFault) as err:
        for _ in range(400):
            m.run(OmapAction.QUERY, [(OmapOp.NOP, b"", None)])
    assert err.value.code == ErrorCode.OMAP_TAMPERED and m.control().tampered == 1


def test_a_control_block_the_engine_cannot_run_is_refused():
    m = _Map()
    raw = bytearray(m.mem.read(m.ctrl, CB_BYTES))
    raw[0] ^= 1
    m.mem.write(m.ctrl, bytes(raw))
    with pytest.raises(OmapFault) as err:
        m.run(OmapAction.QUERY, [(OmapOp.NOP, b"", None)])
    assert err.value.code == ErrorCode.OMAP_BAD_STATE


def test_bulk_load_then_format_places_every_entry():
    m = _Map(capacity=64)
    items = {b"key%03d" % i: b"val%03d" % i for i in range(64)}
    m.run(OmapAction.BULK, [(OmapOp.PUT, k, v) for k, v in items.items()])
    m.run(OmapAction.FORMAT, [])                                      # bins rewritten with the stash
    _, out = m.run(OmapAction.QUERY, [(OmapOp.GET, k, None) for k in items])
    assert [v for _, v in out] == [v.ljust(8, b"\0") for v in items.values()]


def test_the_slot_budget_grows_with_the_latencies_it_covers():
    fast = omap_slot_timing(GEOM, hbm_read=1, hbm_write=1, host_read=1, host_write=1)
    slow = omap_slot_timing(GEOM, hbm_read=33, hbm_write=33, host_read=300, host_write=300)
    assert fast.t_read < fast.t_write < fast.t_slot
    assert slow.t_write - fast.t_write > 20 * 32 + 299                # >= 20 HBM operations and the host read


def test_long_runs_read_uniform_bins_whatever_the_workload_and_never_overflow():
    """The byte-level golden map (what the RTL matches bit for bit) over 2,048 queries per workload
    on 128 bins: the same host-operation pattern for one key repeated, all-distinct keys, absent
    keys and puts; bins read uniform (chi-square) and one distribution across workloads (two-sample
    test); the trusted-state events counted (no stash-full, no directory-full)."""
    from scipy import stats

    n, q = 256, 2048
    keys = [b"key%05d" % i for i in range(n)]
    workloads = {"one key": [(OmapOp.GET, keys[0], None)] * q,
                 "distinct": [(OmapOp.GET, keys[i % n], None) for i in range(q)],
                 "absent": [(OmapOp.GET, b"no%06d" % i, None) for i in range(q)],
                 "puts": [(OmapOp.PUT, keys[(7 * i) % n], b"v%07d" % i) for i in range(q)]}
    bins, patterns = {}, {}
    for name, ops in workloads.items():
        m = _Map(capacity=n, seed=len(name))
        m.run(OmapAction.QUERY, [(OmapOp.PUT, k, b"x" * 8) for k in keys])
        run, _ = m.run(OmapAction.QUERY, ops)
        patterns[name] = [(h.write, h.bytes) for h in run.host]
        bins[name] = np.array([h.bin for h in run.host if not h.write])
        cb = m.control()
        assert cb.stash_full == 0 and cb.dir_full == 0 and cb.nodes_peak <= cb.node_count
        assert stats.chisquare(np.bincount(bins[name], minlength=m.plan.bins)).pvalue > 1e-4, name
    assert all(p == patterns["one key"] for p in patterns.values())
    for name in ("distinct", "absent", "puts"):
        assert stats.ks_2samp(bins["one key"], bins[name]).pvalue > 1e-4, name
