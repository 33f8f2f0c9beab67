"""The models the memory benchmarks stand on: the Path ORAM baseline (a working ORAM, its bytes
counted on its trace), the oblivious map's scale model (uniform bins, trusted state within the
plan, overflow events counted) and the MoE expert trace (calibrated to Mixtral's routing)."""
import random

import numpy as np
import pytest
from scipy import stats

from hbmforge.engines.memory import OmapGeometry, plan_omap
from hbmforge.numerics.memory import (MIXTRAL_REPEAT_ANY, MIXTRAL_REPEAT_FIRST, moe_expert_trace,
                                      trace_statistics)
from hbmforge.numerics.omap_scale import OmapScaleModel
from hbmforge.numerics.oram import PathORAM, path_oram_bytes_per_access


def test_path_oram_with_a_recursive_position_map_returns_what_was_written():
    oram = PathORAM(3000, onchip=16, seed=3)                 # three trees: 3000, 375, 47 -> 6 on chip
    assert len(oram.trees) == 4
    rng = random.Random(5)
    shadow = {}
    for _ in range(1500):
        i = rng.randrange(3000)
        if rng.random() < 0.5:
            data = rng.randbytes(8)
            oram.access(i, data)
            shadow[i] = data
        else:
            assert oram.access(i) == shadow.get(i)
    assert oram.max_stash < 40                               # Z = 4: the stash stays small


def test_path_oram_bytes_are_counted_on_its_trace_and_read_and_write_every_path():
    oram = PathORAM(5000, onchip=64, seed=1)
    for i in range(20):
        oram.access(i * 17)
    assert oram.traffic() == 20 * oram.bytes_per_access()
    reads = [rec for rec in oram.trace if not rec[4]]
    assert len(reads) == len(oram.trace) // 2
    assert path_oram_bytes_per_access(5000, onchip=64, accesses=8) == oram.bytes_per_access()


def test_path_oram_refuses_an_index_outside_the_array():
    with pytest.raises(ValueError, match="outside"):
        PathORAM(16).access(16)


def _geometry():
    return OmapGeometry(32, 4, 8, 8, 1 << 20)


def test_scale_model_reads_uniform_bins_whatever_the_workload():
    n = 1 << 12
    g = _geometry()
    runs = {}
    for name, keys in {"one key": [7] * 6000, "distinct": list(range(n)) + list(range(1904)),
                       "absent": [None] * 6000}.items():
        model = OmapScaleModel(g, n, n, seed=len(name))
        for k in keys:
            model.query(k)
        bins = np.array(model.stats.bins_read)
        counts = np.bincount(bins, minlength=model.bins)
        assert stats.chisquare(counts).pvalue > 1e-4, name
        assert model.stats.stash_full == 0 and model.stats.dir_full == 0
        assert model.stats.nodes_used <= model.plan.nodes
        runs[name] = bins
    assert stats.ks_2samp(runs["one key"], runs["distinct"]).pvalue > 1e-4
    assert stats.ks_2samp(runs["one key"], runs["absent"]).pvalue > 1e-4


def test_scale_model_keeps_every_entry_findable_and_the_stash_within_the_plan_over_a_long_run():
    n = 1 << 10
    model = OmapScaleModel(_geometry(), n, n, seed=2)
    rng = np.random.default_rng(0)
    peak = 0
    for k in rng.integers(0, n, 40_000).tolist():
        model.query(k)
        peak = max(peak, model.stats.nodes_used)
    # steady state: an entry waits ~B queries for its bin and stays ~N queries there, so about
    # 35% of the entries sit in the stash; a dead node goes when its label's bin is read (the
    # next query of its key reads it); the plan (capacity + bins + 1024 nodes) holds them all
    live = len(model.alive)
    assert 0.25 * n < live < 0.45 * n
    assert peak < 0.6 * n < model.plan.nodes
    assert model.stats.stash_full == 0
    in_bins = int((model.where >= 0).sum())
    assert in_bins + live == n
    assert int(model.load.sum()) == in_bins and int(model.load.max()) <= model.z


def test_plan_grows_the_bins_with_the_capacity_so_a_query_moves_two_bins_at_any_scale():
    g = _geometry()
    assert plan_omap(g, 1 << 24).bins == 1 << 23
    assert plan_omap(g, 1 << 10).bins == 1 << 9
    # Path ORAM moves ~two orders of magnitude more at 2**20 (the design's headline ratio)
    assert path_oram_bytes_per_access(1 << 20, accesses=4) / (2 * g.bin_bytes) > 50


def test_expert_trace_matches_the_mixtral_repetition_rates_it_is_calibrated_to():
    trace = moe_expert_trace(1500, 8, seed=4)
    assert trace.shape == (1500, 8, 2)
    assert (trace[:, :, 0] != trace[:, :, 1]).all()
    s = trace_statistics(trace)
    assert abs(s["repeat_first"] - MIXTRAL_REPEAT_FIRST) < 0.03
    assert abs(s["repeat_any"] - MIXTRAL_REPEAT_ANY) < 0.03
    assert 1.2 < s["max_over_mean_load"] < 2.5
    uniform = trace_statistics(moe_expert_trace(1500, 8, zipf=0.0, keep_first=0, swap=0, keep_second=0, seed=4))
    assert abs(uniform["repeat_first"] - 1 / 8) < 0.03 and abs(uniform["repeat_any"] - (1 - 15 / 28)) < 0.03


@pytest.mark.slow
def test_scale_model_long_run_at_2e20_has_no_stash_or_directory_overflow():
    n = 1 << 20
    model = OmapScaleModel(_geometry(), n, n, seed=9)
    rng = np.random.default_rng(1)
    for k in rng.integers(0, n, 200_000).tolist():
        model.query(k)
    assert model.stats.stash_full == 0 and model.stats.dir_full == 0
    counts = np.bincount(np.array(model.stats.bins_read) >> 10, minlength=model.bins >> 10)
    assert stats.chisquare(counts).pvalue > 1e-4
