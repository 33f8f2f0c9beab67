"""Ternary table-lookup matmul (arch: tlmm): the TLMM array against hbmforge.numerics.tlmm, and the
whole MatmulEngine bit-exact with hbmforge.numerics.matmul under stalls and back-pressure."""
from __future__ import annotations

import random

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
