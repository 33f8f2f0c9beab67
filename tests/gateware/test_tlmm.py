"""Ternary table-lookup matmul (arch: tlmm): the TLMM array against hbmforge.numerics.tlmm, and the
whole MatmulEngine bit-exact with hbmforge.numerics.matmul under stalls and back-pressure."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.lib import data

from hbmforge.generators.matmul.tlmm import TlmmArray, tlmm_array_latency
from hbmforge.numerics import tlmm as golden
from sim_helpers import rejects, simulate


# -- TLMM array -----------------------------------------------------------------------------

def _array_case(*, rows, lanes, group_size, g, lines, n, seed, weight_bits=2, gaps=0.3):
    """Build one row block's tables, fire ``n`` columns x ``lines`` chunks (random gaps, random
    line order per column), compare every fire's sums with the golden lookup."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    max_k = lines * lanes
    tag = data.StructLayout({"n": 8, "line": 8})
    dut = TlmmArray(rows=rows, lanes=lanes, group_size=group_size, g=g, max_k=max_k,
                    weight_shape=signed(weight_bits), tag_layout=tag)
    x = rng.integers(-128, 128, (rows, max_k))
    x[0, :lanes] = -128
    if rows > 1:
        x[1, ::2] = 127
    w = rng.integers(-1, 2, (n, max_k))
    w[0] = 1
    if n > 1:
        w[1] = -1
    expected = golden.lookup_sums(x, w, golden.TlmmShape(rows=rows, lanes=lanes, group_size=group_size,
                                                         g=g, max_k=max_k))
    got = {}
    mask = (1 << weight_bits) - 1
    fires = [(c, line) for c in range(n) for line in prng.sample(range(lines), lines)]

    async def bench(ctx):
        # build: entry-major order inside each line, as the scheduler walks it; x one cycle later
        steps = [(line, e) for line in range(lines) for e in range(dut.entries)]
        pending = None
        for line, e in steps + [(None, None)]:
            if pending is not None:
                ctx.set(dut.x, [[int(v) + 128 for v in x[r, pending * lanes:(pending + 1) * lanes]]
                                for r in range(rows)])
            if line is None:
                ctx.set(dut.build, 0)
            else:
                ctx.set(dut.build, 1)
                ctx.set(dut.build_line, line)
                ctx.set(dut.build_entry, e)
            pending = line
            await ctx.tick()
        ctx.set(dut.build, 0)
        for _ in range(dut.build_gap - 1):
            await ctx.tick()
        for col, line in fires:
            while prng.random() < gaps:
                ctx.set(dut.valid, 0)
                await ctx.tick()
            ctx.set(dut.valid, 1)
            ctx.set(dut.w, [int(v) & mask for v in w[col, line * lanes:(line + 1) * lanes]])
            ctx.set(dut.line, line)
            ctx.set(dut.tag, {"n": col, "line": line})
            await ctx.tick()
        ctx.set(dut.valid, 0)
        for _ in range(dut.latency + 2):
            await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, sums, tg in ctx.tick().sample(dut.o_valid, dut.sums, dut.o_tag):
            if valid:
                key = (int(tg.n), int(tg.line))
                assert key not in got
                got[key] = [[int(sums[r][j]) for j in range(dut.groups_per_fire)] for r in range(rows)]

    simulate(dut, bench, background=[monitor])
    assert len(got) == n * lines
    for (col, line), sums in got.items():
        assert sums == expected[:, col, line, :].tolist(), (col, line)
    return dut


@pytest.mark.parametrize("g", [2, 3, 4, 5])
def test_tlmm_array_matches_golden_lookup_for_every_group(g):
    dut = _array_case(rows=2, lanes=16, group_size=16, g=g, lines=2, n=5, seed=g)
    assert dut.latency == tlmm_array_latency(lanes=16, group_size=16, g=g)


def test_tlmm_array_with_several_scale_groups_per_fire_and_wide_lanes():
    # L = 32 > G = 16: two spans of 16 lanes, g = 3 leaves a 1-lane bank in each; 8-bit weight lanes
    _array_case(rows=3, lanes=32, group_size=16, g=3, lines=3, n=4, seed=11, weight_bits=8)


def test_tlmm_array_single_line_single_row():
    _array_case(rows=1, lanes=8, group_size=16, g=5, lines=1, n=6, seed=12, gaps=0.0)


def test_tlmm_array_rejects_bad_parameters():
    tag = data.StructLayout({"a": 1})
    kw = dict(rows=2, lanes=16, group_size=16, max_k=64, weight_shape=signed(2), tag_layout=tag)
    rejects(lambda: TlmmArray(g=6, **kw), ValueError, "tlmm_group")
    rejects(lambda: TlmmArray(g=4, **{**kw, "weight_shape": signed(1)}), ValueError, "weight_shape")
    rejects(lambda: TlmmArray(g=4, **{**kw, "max_k": 24}), ValueError, "max_k")


# -- MatmulEngine with arch: tlmm -------------------------------------------------------------

from hbmforge.config import parse_config                                   # noqa: E402
from hbmforge.generators.matmul.engine import ISSUE_LATENCY, MatmulEngine   # noqa: E402
from hbmforge.generators.matmul.requant import OutputStage                  # noqa: E402
from hbmforge.generators.matmul.testing import EngineBench, random_case    # noqa: E402
from hbmforge.encodings import OutMode
from hbmforge.layout import DesignLayout  # noqa: E402

from designs import tiny_config_dict                                        # noqa: E402

T = "ternary"


def _layout(data_width=64, **engine):
    engine = {"weight_bits": [T], "arch": "tlmm", **engine}
    cfg = tiny_config_dict(**engine)
    cfg["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(cfg))


def _run(layout, shapes, *, seed=0, stall=0.3, backpressure=0.3, max_cycles=30_000, bias=False):
    """Run ternary jobs ``(m, k, n, out_mode)`` back to back; every result bit-exact with the golden."""
    rng = np.random.default_rng(seed)
    bench = EngineBench(layout, seed=seed, stall=stall, backpressure=backpressure)
    for m, k, n, mode in shapes:
        bench.add(random_case(layout, rng, m=m, k=k, n=n, wbits=T, out_mode=mode, bias=bias))
    bench.run(max_cycles=max_cycles)
    for case in bench.cases:
        assert case.result is not None
        np.testing.assert_array_equal(case.result, case.expected(layout.mm.group_size),
                                      err_msg=f"job {case.x.shape}x{case.w.shape} mode={case.out_mode}")
        assert not any(case.pad_bytes), "output pad bytes must be 0"
    return bench


@pytest.mark.parametrize("g", [2, 3, 4, 5])
def test_tlmm_engine_matches_golden_with_stalls_and_backpressure(g):
    # L = 16: g = 3 and g = 5 leave a partial bank; M > R gives several row blocks (tables rebuilt)
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=32, tlmm_group=g, max_k=128)
    _run(lay, [(5, 64, 3, OutMode.INT32), (2, 32, 4, OutMode.INT8)], seed=g)


def test_tlmm_engine_several_scale_groups_per_fire_and_two_ports():
    lay = _layout(data_width=64, rows=3, lanes=32, weight_ports=2, group_size=16, tlmm_group=3, max_k=128)
    _run(lay, [(4, 64, 3, OutMode.INT8), (3, 96, 2, OutMode.INT32)], seed=31)


def test_tlmm_engine_five_trit_packing():
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, tlmm_group=5, max_k=64,
                  ternary_packing="5trit")
    _run(lay, [(3, 48, 3, OutMode.INT32), (1, 16, 5, OutMode.INT8)], seed=32)


def test_tlmm_engine_builds_tables_per_k_slice_with_a_bias():
    # K = 112 in slices of 48: every pass builds its tables from its slice; two weight tiles
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, tlmm_group=3, max_k=48, tile_n=2)
    _run(lay, [(3, 112, 5, OutMode.INT8), (4, 64, 3, OutMode.INT32)], seed=34, bias=True)


def test_tlmm_engine_continuous_backpressure_and_one_line_blocks():
    # K = L: one line per row block, every fire ends a column
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, tlmm_group=4, max_k=64)
    _run(lay, [(5, 16, 12, OutMode.INT32), (3, 16, 9, OutMode.INT8)], seed=33, stall=0.0, backpressure=0.8)


def test_tlmm_gemv_timing_build_then_one_fire_per_cycle():
    """GEMV: the build takes K/L * E cycles, then the array fires every cycle without a bubble."""
    g, L, k, n = 4, 16, 128, 24
    lay = _layout(rows=2, lanes=L, weight_ports=1, group_size=16, tlmm_group=g, max_k=128)
    bench = _run(lay, [(1, k, n, OutMode.INT32), (3, k, n, OutMode.INT32)], stall=0.0, backpressure=0.0)
    gemv, gemm = bench.stats
    kc, e = k // L, golden.table_entries(g)
    assert gemv["fires"] == golden.fire_cycles(n, k, L)
    assert gemv["fire_span"] == gemv["fires"]                     # no bubble once the tables exist
    # two row blocks: the second block's build sits between the two fire runs
    assert gemm["fires"] == 2 * golden.fire_cycles(n, k, L)
    assert gemm["fire_span"] - gemm["fires"] >= golden.build_cycles(k, L, g)
    assert gemm["fire_span"] - gemm["fires"] <= golden.build_cycles(k, L, g) + 2 * TlmmArray.BUILD_GAP + 2
    assert gemv["first_fire"] >= kc * e


def test_tlmm_engine_latency_and_fifo():
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, tlmm_group=5, max_k=64)
    eng = MatmulEngine(lay)
    eng._MustUse__silence = True
    assert eng.fifo_depth > eng.latency
    # issue register + array + group accumulator (one group per fire: 3) + output stage
    assert eng.latency == ISSUE_LATENCY + tlmm_array_latency(lanes=16, group_size=16, g=5) + 3 + OutputStage.LATENCY


# -- generation -----------------------------------------------------------------------------

@pytest.mark.rtl
def test_tlmm_kernel_verilog_passes_lint(tmp_path):
    # g = 3 on 16 lanes: five 3-lane banks and a 1-lane one; 5trit weights
    g, engine = 3, {"rows": 2, "lanes": 16, "weight_ports": 1, "group_size": 16, "max_k": 64,
                    "ternary_packing": "5trit"}
    from hbmforge.flows.emit import generate, lint

    cfg = parse_config({"version": 1, "name": f"lint_tlmm{g}", "board": "u280", "axi": {"data_width": 64},
                        "engines": [{"kind": "matmul", "weight_bits": [T], "arch": "tlmm", "tlmm_group": g,
                                     **engine}]}, )
    d = generate(cfg, tmp_path)
    text = d.verilog_path.read_text()
    # the tables are memories (BRAM/LUTRAM), not flip-flops
    assert len(re.findall(r"reg \[\d+:0\] table\d+ \[\d+:0\];", text)) == len(
        golden.bank_layout(engine["lanes"], engine["group_size"], g))
    lint(d.verilog_path)
