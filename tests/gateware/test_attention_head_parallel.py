"""Head-parallel decode (``head_parallel: true``, descriptor ``kv_layout`` 1) in amaranth.sim:
row r of every tile is its own head, streaming K from ``w<2r>`` and V from ``w<2r+1>`` out of
its port group's pools; bit-exact with hbmforge.numerics.attention.run_attention, with random
stalls and back-pressure, poisoned unused pages and masked value records, and per-port byte
counts equal to the golden model's. Shared-layout jobs still run on the same engine."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.engines.attention import validate_attention
from hbmforge.generators.attention.testing import AttentionBench, add_head_parallel_sequences, add_sequences
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict


def _layout(data_width=64, **att):
    cfg = tiny_config_dict()
    cfg["axi"]["data_width"] = data_width
    a = {"kind": "attention", "name": "attn0", "head_dim": 16, "rows": 2, "kv_bits": [4, 8], "kv_group_size": 8,
         "page_tokens": 4, "max_context": 256, "kv_ports": 4, "head_parallel": True}
    a.update(att)
    cfg["engines"].append(a)
    return DesignLayout(parse_config(cfg))


def _check(lay, bench):
    for job in bench.jobs:
        exp = np.frombuffer(job.expected, "<i4")
        got = np.frombuffer(job.result, "<i4")
        np.testing.assert_array_equal(got, exp, err_msg=f"job {job.d}")
        assert job.stats["macs"] == job.golden["mac_ops"]
        per_port = [job.stats[f"w{i}_words"] * lay.word_bytes for i in range(bench.geom.kv_ports)]
        assert per_port == list(job.golden["kv_bytes_read"][:bench.geom.kv_ports])
    assert not bench.poison_hits


def _run_hp(lay, specs, *, seed, kv_heads, kv_bits, stall=0.3, backpressure=0.3):
    rng = np.random.default_rng(seed)
    bench = AttentionBench(lay, seed=seed, stall=stall, backpressure=backpressure)
    add_head_parallel_sequences(bench, rng, specs, kv_heads=kv_heads, kv_bits=kv_bits)
    bench.run(max_cycles=30_000)
    _check(lay, bench)
    return bench


def test_head_parallel_decode_kv8_rows_read_their_own_ports():
    bench = _run_hp(_layout(), [dict(ctx_len=13), dict(ctx_len=6)], seed=11, kv_heads=4, kv_bits=8)
    # every row's K and V ports carried data (one group each)
    for job in bench.jobs:
        assert all(b > 0 for b in job.golden["kv_bytes_read"][:4])


def test_head_parallel_decode_kv4_four_rows_window_and_sink():
    _run_hp(_layout(rows=4, kv_ports=8, head_dim=32), [dict(ctx_len=23, window=6, sink=3), dict(ctx_len=1)],
            seed=12, kv_heads=8, kv_bits=4)


@pytest.mark.parametrize("products", ["lut", "qk_lut"])
def test_head_parallel_decode_int4_only_engine(products):
    # int4_products lut: every row's own q x k and mantissa x value products are shift-and-add in LUTs;
    # qk_lut (u280_llm512): q x k in LUTs, every row's mantissa x value products multipliers
    _run_hp(_layout(rows=4, kv_ports=8, head_dim=32, kv_bits=[4], int4_products=products),
            [dict(ctx_len=19, window=7, sink=2)], seed=14, kv_heads=4, kv_bits=4)


def test_head_parallel_decode_eight_rows_on_sixteen_ports():
    # rows 8 / kv_ports 16: a pool table of 16 u64 (16 words of the 64-bit port), K of row r on w<2r>,
    # V on w<2r+1>; one head per group (kv_heads 8), then two per group with a window and sinks
    bench = _run_hp(_layout(rows=8, kv_ports=16), [dict(ctx_len=9), dict(ctx_len=3)], seed=21, kv_heads=8,
                    kv_bits=8)
    for job in bench.jobs:
        assert all(b > 0 for b in job.golden["kv_bytes_read"][:16])
    _run_hp(_layout(rows=8, kv_ports=16, head_dim=32), [dict(ctx_len=11, window=4, sink=2), dict(ctx_len=1)],
            seed=22, kv_heads=16, kv_bits=4)


def test_head_parallel_decode_streams_near_one_kv_word_per_port_when_memory_keeps_up():
    # one value word per token and port (128-bit ports, head_dim 32, KV4) and one scale word per
    # 8 tokens, as the 512-bit designs (head_dim 128): 18 words a 16-token page and port. A page
    # costs 19 cycles on the V side (its scale words and the rescale entry between two segments);
    # the score bank's four pages keep QK ahead of the probabilities, and each row of a tile's
    # output stage starts OUT_STAGES cycles after the one before (0.651 with two banks and the
    # per-row reciprocal wait, session 44)
    lay = _layout(data_width=128, head_dim=32, kv_bits=[4], kv_group_size=32, page_tokens=16, max_context=4096)
    bench = _run_hp(lay, [dict(ctx_len=256)], seed=31, kv_heads=4, kv_bits=4, stall=0.0, backpressure=0.0)
    st = bench.jobs[0].stats
    assert st["w0_words"] == 2 * 16 * 18
    assert st["w0_words"] / st["cycles"] > 0.74, st


@pytest.mark.parametrize("layout", ["head_parallel", "shared"])
def test_score_banks_and_output_rows_overlap_under_random_stalls(layout):
    # many pages a tile (the four score banks wrap several times), several tiles, every row's
    # output command queued while the row before still leaves, slow readers and a slow writer;
    # window and sink masks, int4 and int8
    lay = _layout(rows=4, kv_ports=8, head_dim=32, page_tokens=4)
    rng = np.random.default_rng(41)
    bench = AttentionBench(lay, seed=41, stall=0.35, backpressure=0.6)
    bench.port_stall["w3"] = 0.6                 # one row's V port slower than the others
    if layout == "head_parallel":
        add_head_parallel_sequences(bench, rng, [dict(ctx_len=41, window=22, sink=3), dict(ctx_len=30)],
                                    kv_heads=8, kv_bits=4)
        add_head_parallel_sequences(bench, rng, [dict(ctx_len=27)], kv_heads=12, kv_bits=8)
    else:
        add_sequences(bench, rng, [dict(n_q=1, ctx_len=41, window=22, sink=3), dict(n_q=3, ctx_len=30)],
                      kv_heads=2, q_per_kv=6, kv_bits=4)
        add_sequences(bench, rng, [dict(n_q=1, ctx_len=27)], kv_heads=1, q_per_kv=5, kv_bits=8)
    bench.run(max_cycles=200_000)
    _check(lay, bench)


def test_shared_layout_jobs_still_run_on_a_head_parallel_engine():
    lay = _layout()
    rng = np.random.default_rng(13)
    bench = AttentionBench(lay, seed=13, stall=0.3, backpressure=0.3)
    add_sequences(bench, rng, [dict(n_q=2, ctx_len=9), dict(n_q=1, ctx_len=5)], kv_heads=2, q_per_kv=2, kv_bits=8)
    bench.run(max_cycles=30_000)
    _check(lay, bench)
    # shared layout: K on w0, V on w<kv_ports-1>, nothing on the other rows' ports
    for job in bench.jobs:
        assert job.stats["w1_words"] == job.stats["w2_words"] == 0


def test_mixed_shared_and_head_parallel_jobs_back_to_back():
    lay = _layout()
    rng = np.random.default_rng(14)
    bench = AttentionBench(lay, seed=14, stall=0.2, backpressure=0.2)
    add_head_parallel_sequences(bench, rng, [dict(ctx_len=7)], kv_heads=2, kv_bits=4)
    add_sequences(bench, rng, [dict(n_q=1, ctx_len=10)], kv_heads=1, q_per_kv=2, kv_bits=4)
    add_head_parallel_sequences(bench, rng, [dict(ctx_len=10, window=3)], kv_heads=6, kv_bits=8)
    bench.run(max_cycles=40_000)
    _check(lay, bench)


@pytest.mark.parametrize("fields, needle", [
    (dict(kv_layout=2), "kv_layout 2, allowed [0, 1]"),
    (dict(kv_layout=1, q_per_kv=2), "needs q_per_kv 1"),
    (dict(kv_layout=1, n_q=2), "n_q 2"),
    (dict(kv_layout=1, kv_heads=3), "multiple of rows 2"),
    (dict(kv_layout=1, v_pool=64), "v_pool 0"),
])
def test_bad_head_parallel_descriptors_are_refused_with_the_field_named(fields, needle):
    lay = _layout()
    d = {"head_dim": 16, "kv_heads": 4, "q_per_kv": 1, "n_q": 1, "ctx_len": 8, "window": 0, "sink": 0,
         "kv_bits": 8, "mode": 0, "valid_len": 0, "q_addr": 0, "bt_addr": 0, "k_pool": 0, "v_pool": 0,
         "o_addr": 0, "kv_layout": 0}
    d.update(fields)
    code, why = validate_attention(d, lay)
    assert code == 55 and needle in why


def test_head_parallel_jobs_are_refused_without_head_parallel():
    lay = _layout(kv_ports=2, head_parallel=False)
    d = {"head_dim": 16, "kv_heads": 4, "q_per_kv": 1, "n_q": 1, "ctx_len": 8, "window": 0, "sink": 0,
         "kv_bits": 8, "mode": 0, "valid_len": 0, "q_addr": 0, "bt_addr": 0, "k_pool": 0, "v_pool": 0,
         "o_addr": 0, "kv_layout": 1}
    code, why = validate_attention(d, lay)
    assert code == 55 and "kv_layout 1, allowed [0]" in why and "head_parallel: true" in why


@pytest.mark.parametrize("att, needle", [
    (dict(kv_ports=4), r"kv_ports: Input should be 1 or 2, got 4 \(or 2 x rows = 4 with head_parallel: true\)"),
    (dict(kv_ports=2, head_parallel=True), "kv_ports: Input should be 2 x rows = 4 with head_parallel"),
    (dict(rows=1, kv_ports=2, head_parallel=True), "needs rows >= 2"),
    (dict(rows=8, kv_ports=8, head_parallel=True), r"engines.1.kv_ports: Input should be 2 x rows = 16 .*got 8 \(rows 8\)"),
    (dict(rows=32, kv_ports=64, head_parallel=True),
     r"engines.1.kv_ports: 64 exceeds the 32 memory channels of u280 \(2 x rows 32 with head_parallel; use rows <= 16\)"),
    (dict(board="kv260", rows=8, kv_ports=16, head_parallel=True),
     r"engines.1.kv_ports: 16 exceeds the 4 memory channels of kv260 .*use rows <= 2"),
])
def test_config_rejects_bad_kv_ports(att, needle):
    att = dict(att)
    board = att.pop("board", None)
    cfg = tiny_config_dict()
    if board:
        cfg["board"] = board
    a = {"kind": "attention", "name": "attn0", "head_dim": 16, "rows": 2, "kv_bits": [8], "kv_group_size": 8,
         "page_tokens": 4, "max_context": 256}
    a.update(att)
    cfg["engines"].append(a)
    with pytest.raises(ValueError, match=needle):
        parse_config(cfg)
