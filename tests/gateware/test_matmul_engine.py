"""MatmulEngine end to end in amaranth.sim: bit-exact with hbmforge.numerics, DMA commands per §4/§6.

Each scenario serves the engine's DMA commands from a Python byte memory
(buffers packed per docs/architecture.md §4 by generators/matmul/testing.py)
with random stalls on every input stream and random back-pressure on
``out_data``, and compares Y with the golden model bit for bit.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.generators.matmul.engine import MatmulEngine
from hbmforge.generators.matmul.testing import EngineBench, random_case
from hbmforge.encodings import OutMode
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict
from sim_helpers import rejects


_rejects = rejects


def _layout(data_width=64, **engine):
    cfg = tiny_config_dict(**engine)
    cfg["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(cfg))


def _run(layout, shapes, *, seed=0, stall=0.3, backpressure=0.3, extremes=True, max_cycles=20_000):
    """Run jobs ``(m, k, n, wbits, out_mode)`` back to back; assert every result bit-exact."""
    rng = np.random.default_rng(seed)
    bench = EngineBench(layout, seed=seed, stall=stall, backpressure=backpressure)
    for m, k, n, wbits, mode in shapes:
        bench.add(random_case(layout, rng, m=m, k=k, n=n, wbits=wbits, out_mode=mode, extremes=extremes))
    bench.run(max_cycles=max_cycles)
    g = layout.mm.group_size
    for case in bench.cases:
        expected = case.expected(g)
        assert case.result is not None
        np.testing.assert_array_equal(case.result, expected,
                                      err_msg=f"job {case.x.shape}x{case.w.shape} wbits={case.wbits} "
                                              f"mode={case.out_mode}")
        assert not any(case.pad_bytes), "output pad bytes must be 0"
    return bench


# -- numerics -------------------------------------------------------------------------------

def test_int4_int32_matches_golden_with_stalls_and_backpressure():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16)
    _run(lay, [(5, 48, 3, 4, OutMode.INT32), (2, 16, 4, 4, OutMode.INT32)], seed=1)


def test_int8_weights_int8_output_matches_golden_with_stalls_and_backpressure():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16)
    _run(lay, [(3, 64, 5, 8, OutMode.INT8), (4, 32, 3, 8, OutMode.INT8)], seed=2)


def test_mixed_modes_back_to_back_jobs_share_no_state():
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=32)
    _run(lay, [(3, 64, 3, 8, OutMode.INT32), (1, 32, 2, 4, OutMode.INT8),
               (4, 96, 1, 4, OutMode.INT32), (2, 32, 3, 8, OutMode.INT8)], seed=3)


def test_rows_not_multiple_of_r_odd_n_and_three_rows_use_byte_gearbox():
    # R = 3: a column is 12 (INT32) or 3 (INT8) bytes, not a divisor of the word.
    lay = _layout(rows=3, lanes=16, weight_ports=1, group_size=64)
    _run(lay, [(7, 64, 3, 4, OutMode.INT32), (4, 128, 5, 8, OutMode.INT8), (1, 64, 1, 4, OutMode.INT8)],
         seed=4)


def test_lanes_greater_than_group_size_carries_several_scales_per_fire():
    lay = _layout(data_width=128, rows=3, lanes=32, weight_ports=1, group_size=16)
    _run(lay, [(4, 64, 3, 4, OutMode.INT32), (2, 96, 3, 8, OutMode.INT8)], seed=5)  # 3 rq entries: half a word left


def test_lanes_smaller_than_group_size_accumulates_groups_over_fires():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=64)
    _run(lay, [(3, 128, 3, 4, OutMode.INT32), (2, 64, 2, 8, OutMode.INT8)], seed=6)


def test_column_wider_than_word_and_single_weight_width():
    # R = 4 INT32 columns are 16 bytes: two 64-bit words per column; int4-only engine.
    lay = _layout(rows=4, lanes=32, weight_ports=2, group_size=16, weight_bits=[4])
    _run(lay, [(6, 64, 3, 4, OutMode.INT32), (5, 32, 2, 4, OutMode.INT8)], seed=7)


def test_one_row_engine_with_int8_only_weights():
    lay = _layout(data_width=128, rows=1, lanes=16, weight_ports=1, group_size=32, weight_bits=[8])
    _run(lay, [(3, 64, 3, 8, OutMode.INT32), (2, 32, 2, 8, OutMode.INT8)], seed=8)


def test_all_extreme_operands_saturate_like_golden():
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16)
    rng = np.random.default_rng(9)
    bench = EngineBench(lay, seed=9, stall=0.2, backpressure=0.2)
    k, n = 256, 3
    for wbits in (4, 8):
        wmin = -(1 << (wbits - 1))
        for mode in (OutMode.INT32, OutMode.INT8):
            case = random_case(lay, rng, m=3, k=k, n=n, wbits=wbits, out_mode=mode)
            case.x[:] = -128
            case.w[:] = wmin
            case.w[1, ::3] = -wmin - 1
            case.s[:] = (1 << 16) - 1
            case.out_shift = 0
            if mode == OutMode.INT8:
                case.mult[:] = [-(1 << 31), (1 << 31) - 1, 1]
                case.shift[:] = [127, 0, 40]
            bench.add(case)
    bench.run(max_cycles=20_000)
    for case in bench.cases:
        np.testing.assert_array_equal(case.result, case.expected(16))


def test_continuous_backpressure_never_corrupts_or_reorders():
    # K = L: every fire ends a column, so the output path is the bottleneck throughout.
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16)
    _run(lay, [(4, 16, 24, 4, OutMode.INT32), (6, 16, 20, 8, OutMode.INT8)], seed=10, stall=0.0,
         backpressure=0.8)


_CONFIGS = [
    dict(data_width=64, rows=2, lanes=16, weight_ports=2, group_size=16),
    dict(data_width=64, rows=3, lanes=16, weight_ports=1, group_size=32),
    dict(data_width=128, rows=2, lanes=32, weight_ports=1, group_size=16),
    dict(data_width=64, rows=4, lanes=16, weight_ports=2, group_size=64),
]


@pytest.mark.parametrize("seed", [21, 22, 23, 24])
def test_random_shapes_on_random_configs_match_golden(seed):
    rng = np.random.default_rng(seed)
    lay = _layout(**_CONFIGS[seed % len(_CONFIGS)])
    shapes = [(int(rng.integers(1, 3 * lay.mm.rows + 1)), int(rng.integers(1, 5)) * lay.matmul.k_align,
               int(rng.integers(1, 6)), int(rng.choice([4, 8])), int(rng.integers(0, 2))) for _ in range(3)]
    _run(lay, shapes, seed=seed, stall=float(rng.uniform(0, 0.5)), backpressure=float(rng.uniform(0, 0.7)))


# -- DMA commands -------------------------------------------------------------------------

def expected_commands(lay, case) -> dict:
    """The DMA commands of one job, from the loop nest of hbmforge.engines.matmul: per pass
    (K slice outer, chunk of row blocks inner) its activation rows, weights and scales (and from
    the second slice its partial sums); per tile of the passes that use them, requant records and
    bias; the outputs: partial-sum regions, then Y (one command, or one per chunk x tile x block)."""
    geom, R = lay.matmul, lay.mm.rows
    m, k = case.x.shape
    n = case.w.shape[0]
    mode = case.out_mode
    B, T = lay.word_bytes, geom.tile_n
    slices, cb = geom.slices(k), geom.chunk_blocks(m, n, k, mode)
    blocks = geom.row_blocks(m)
    chunks = -(-blocks // cb)
    eb = 4 if mode == OutMode.INT32 else 1
    exp = {name: [] for name in ("act", "scale", "rq", "out")}
    exp.update({f"w{i}": [] for i in range(lay.mm.weight_ports)})
    stride = geom.partial_stride(m, n, k, mode)
    woff = soff = 0
    for s in range(slices):
        ks = geom.slice_k(k, s)
        for q in range(chunks):
            nblk = min(cb, blocks - q * cb)
            rows0, rows = q * cb * R, min(cb * R, m - q * cb * R)
            if slices == 1:
                for b in range(nblk):
                    exp["act"].append((case.addrs["x"] + (rows0 + b * R) * k, min(R, rows - b * R) * k))
            else:
                for r in range(rows):
                    exp["act"].append((case.addrs["x"] + (rows0 + r) * k + s * geom.k_slice, ks))
            region = geom.round_words(nblk * R * n * 8)
            if s > 0:
                exp["act"].append((case.addrs["p"] + q * stride, region))
            for i in range(lay.mm.weight_ports):
                exp[f"w{i}"].append((case.addrs["w"][i] + woff, geom.slice_weight_port_bytes(n, ks, case.wbits)))
            exp["scale"].append((case.addrs["s"] + soff, geom.slice_scale_bytes(n, ks)))
            for t in range(geom.tiles(n)):
                cols = min(T, n - t * T)
                if mode == OutMode.INT8 and s == slices - 1:
                    exp["rq"].append((case.addrs["q"] + t * T * 8, geom.round_words(cols * 8)))
                if case.bias is not None and s == 0:
                    exp["rq"].append((case.addrs["b"] + t * T * 4, geom.round_words(cols * 4)))
            if s < slices - 1:
                exp["out"].append((case.addrs["p"] + q * stride, region))
            elif geom.segmented(m, n, k, mode):
                for t in range(geom.tiles(n)):
                    for b in range(q * cb, q * cb + nblk):
                        exp["out"].append((case.addrs["y"] + (b * n + t * T) * R * eb, min(T, n - t * T) * R * eb))
            elif q == 0:
                exp["out"].append((case.addrs["y"], geom.out_bytes(m, n, mode)))
        woff += geom.slice_weight_port_bytes(n, ks, case.wbits)
        soff += geom.slice_scale_bytes(n, ks)
    return exp


def test_dma_commands_follow_the_layout_contract():
    lay = _layout(rows=3, lanes=16, weight_ports=2, group_size=16)
    shapes = [(7, 48, 5, 4, OutMode.INT8), (2, 16, 3, 8, OutMode.INT32)]
    bench = _run(lay, shapes, seed=11, stall=0.1, backpressure=0.1)
    cmds = bench.commands
    exp = {name: [] for name in ("act", "scale", "rq", "w0", "w1", "out")}
    for case in bench.cases:
        for name, got in expected_commands(lay, case).items():
            exp[name] += got
    assert {name: cmds[name] for name in exp} == exp
    # one chunk: every weight is read once although the rows span three row blocks
    assert len(exp["w0"]) == 2


def test_dma_commands_of_tiles_chunks_split_k_and_bias():
    """Several weight tiles (Y in segments), a chunk smaller than M (weights read once per
    chunk), K in three slices (partial sums through the scratch), a bias; GEMVs (one row block,
    several tiles) write Y in one command."""
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16, tile_n=4, tile_m=4, max_k=64)
    geom = lay.matmul
    rng = np.random.default_rng(12)
    bench = EngineBench(lay, seed=12, stall=0.2, backpressure=0.2)
    shapes = [(7, 160, 8, 8, OutMode.INT8), (3, 48, 5, 4, OutMode.INT32), (5, 80, 5, 4, OutMode.INT8),
              (1, 160, 8, 4, OutMode.INT32), (2, 48, 12, 8, OutMode.INT8)]      # GEMVs: one row block
    for m, k, n, wbits, mode in shapes:
        bench.add(random_case(lay, rng, m=m, k=k, n=n, wbits=wbits, out_mode=mode, bias=True))
    bench.run(max_cycles=40_000)
    exp = {name: [] for name in ("act", "scale", "rq", "w0", "w1", "out")}
    for case in bench.cases:
        np.testing.assert_array_equal(case.result, case.expected(16))
        for name, got in expected_commands(lay, case).items():
            exp[name] += got
    assert {name: bench.commands[name] for name in exp} == exp
    # what the shapes cover: 3 slices in 2 chunks of 2 blocks, 2 tiles, Y in segments ...
    assert (geom.slices(160), geom.chunks(7, 8, 160, OutMode.INT8), geom.tiles(8)) == (3, 2, 2)
    assert geom.segmented(7, 8, 160, OutMode.INT8) and geom.segmented(3, 5, 48, OutMode.INT32)
    # ... and 5 int8 columns of 2 rows (10 bytes, not whole words): one block per chunk, Y at once
    assert geom.chunk_blocks(5, 5, 80, OutMode.INT8) == 1 and not geom.segmented(5, 5, 80, OutMode.INT8)
    # ... and a GEMV (one row block) has one block per chunk: Y at once, in the longest bursts
    assert geom.chunk_blocks(1, 8, 160, OutMode.INT8) == 1 and not geom.segmented(1, 8, 160, OutMode.INT8)


# -- performance ----------------------------------------------------------------------------

def test_array_fires_every_cycle_across_columns_and_row_blocks():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16)
    bench = _run(lay, [(8, 128, 16, 4, OutMode.INT32)], stall=0.0, backpressure=0.0)
    st = bench.stats[0]
    assert st["fires"] == 4 * 16 * 128 // 16
    assert st["fire_span"] == st["fires"], st          # no bubble from the first fire to the last


def test_gemv_consumes_one_weight_word_per_cycle():
    # int4, one port: a 64-bit word holds one 16-lane chunk; int8 chunks take two words.
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16)
    bench = _run(lay, [(1, 256, 16, 4, OutMode.INT32), (1, 128, 16, 8, OutMode.INT32)],
                 stall=0.0, backpressure=0.0)
    int4, int8 = bench.stats
    assert int4["fire_span"] == int4["fires"]
    assert int8["fire_span"] <= 2 * int8["fires"]


def test_int8_gemm_fires_every_cycle_when_the_port_delivers_half_a_fire_per_cycle():
    """One 64-bit port holds half an int8 line (16 lanes): a GEMV fires every other cycle, but a
    chunk of four row blocks reuses each weight line four times from the weight ring."""
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16)
    bench = _run(lay, [(1, 128, 16, 8, OutMode.INT32), (8, 128, 32, 8, OutMode.INT32)], stall=0.0, backpressure=0.0)
    gemv, gemm = bench.stats
    assert gemv["fire_span"] >= 1.8 * gemv["fires"]                   # port-bound
    assert gemm["fires"] == 4 * 32 * 128 // 16
    # array-bound: one fire per cycle, except while the first tile loads (16 columns x 8 lines at
    # half a line per cycle against the first row block's fires)
    assert gemm["fire_span"] - gemm["fires"] <= 16 * 8 + 16, gemm
    assert lay.matmul.chunks(8, 32, 128, OutMode.INT32) == 1


def test_fire_counts_match_the_loop_nest():
    lay = _layout(rows=3, lanes=16, weight_ports=1, group_size=16)
    bench = _run(lay, [(5, 32, 3, 4, OutMode.INT32)], stall=0.2, backpressure=0.2)
    assert bench.stats[0]["fires"] == lay.matmul.row_blocks(5) * 3 * 32 // 16


# -- generation -----------------------------------------------------------------------------

def test_starter_config_converts_to_verilog():
    """Conversion must stay interactive: the bound is CPU time of this process (a loaded machine
    stretches wall time) and far above today's figure, so it only catches a blow-up."""
    from amaranth.back import verilog

    lay = DesignLayout(parse_config(starter_config("u280")))
    t0 = time.process_time()
    text = verilog.convert(MatmulEngine(lay), name="mm_engine")
    elapsed = time.process_time() - t0
    assert "module mm_engine" in text
    assert elapsed < 120, f"conversion took {elapsed:.1f} s of CPU"


def test_engine_rejects_a_non_layout():
    _rejects(lambda: MatmulEngine({"rows": 4}), TypeError, "DesignLayout")
    _rejects(lambda: MatmulEngine(_layout(), levels_per_stage=0), ValueError, "levels_per_stage")


def test_engine_signature_matches_the_contract():
    from hbmforge.engines import Channels
    from hbmforge.generators.engine import EngineSignature
    from hbmforge.generators.matmul.signature import matmul_job_layout

    lay = _layout(rows=3, weight_ports=2)
    eng = MatmulEngine(lay)
    eng._MustUse__silence = True                     # inspected, never elaborated
    want = EngineSignature(job_layout=matmul_job_layout(2), data_width=64,
                           channels=Channels(("act", "scale", "rq"), True, 2, 0),
                           max_mac_inc=3 * lay.mm.lanes)
    assert eng.signature == want
    assert eng.signature != EngineSignature(job_layout=matmul_job_layout(1), data_width=64,
                                            channels=want.channels, max_mac_inc=want.max_mac_inc)
    assert "EngineSignature(" in repr(eng.signature)
    assert eng.fifo_depth > eng.latency


def test_single_row_single_line_engine_matches_golden():
    """Degenerate sizes: one row (R = 1) and one activation line (max_k == lanes)."""
    lay = _layout(rows=1, lanes=16, weight_ports=1, weight_bits=[4, 8], group_size=16, max_k=16)
    _run(lay, [(3, 16, 4, 4, OutMode.INT32), (2, 16, 3, 8, OutMode.INT8), (1, 16, 1, 4, OutMode.INT32)],
         seed=41)
