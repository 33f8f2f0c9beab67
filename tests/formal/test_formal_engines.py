"""SymbiYosys proofs of the engine-side protocols: the aggregation switch (links, framing, transmit
FIFO room, receive pops) and the tile cache (streams, command alignment, store reads within a
line, FIFO room, writer jobs), bounded at the stated depth (docs/verification.md). CI proves the
small geometries at a shallow depth; ``-m slow`` deeper, covers, and the configs' geometries."""
from __future__ import annotations

import pytest

from hbmforge.config import parse_config
from hbmforge.generators.formal.cases import DEFAULT_DEPTHS, design_cases
from hbmforge.generators.formal.engines import CacheHarness, SwitchHarness, small_cache_geometry
from hbmforge.generators.formal.run import run_formal
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict, tiny_memory_config_dict, tiny_network_config_dict


def _proved(res):
    assert res.status == "pass" and not res.failed, f"{res.name}: {res.status}, failed {res.failed}\n{res.log_tail}"
    assert res.proved == "bounded"
    return res


def test_switch_properties_hold_to_the_stated_depth(tmp_path):
    res = _proved(run_formal(SwitchHarness(), "switch", tmp_path, mode="bmc", depth=8))
    assert {"sw.m_axis_p0.held", "sw.m_axis_p1.framed", "sw.rx0.pop_valid"} <= set(res.asserts)
    assert res.asserts.count("sw.tx.header_room") == 2 and res.asserts.count("sw.tx.word_room") == 2


def test_cache_properties_hold_to_the_stated_depth(tmp_path):
    res = _proved(run_formal(CacheHarness(), "cache", tmp_path, mode="bmc", depth=6))
    assert {"cache.up_data.held", "cache.st_cmd.in_line", "cache.bk_writer.job1.taken",
            "cache.uw_route.room"} <= set(res.asserts)


def test_designs_with_a_switch_or_a_cache_get_their_proofs():
    names = lambda d, **kw: {c.name: c for c in design_cases(DesignLayout(parse_config(d)), **kw)}  # noqa: E731
    assert "switch" not in names(tiny_config_dict()) and "cache" not in names(tiny_config_dict())
    net = names(tiny_network_config_dict())
    assert net["switch"].mode == "bmc" and net["switch"].depth == DEFAULT_DEPTHS[("switch", "small")]
    mem = names(tiny_memory_config_dict(), scale="full", depths={"cache": 3})
    assert mem["cache"].depth == 3 and "2 ways x 4 sets x 1024 B" in mem["cache"].describe
    harness = mem["cache"].build()
    harness._MustUse__silence = harness.cache._MustUse__silence = True      # listed, not proved here
    assert isinstance(harness, CacheHarness) and harness.geometry.line_bytes == 1024
    with pytest.raises(ValueError, match="depths"):
        names(tiny_memory_config_dict(), depths={"tags": 3})


@pytest.mark.slow
def test_switch_deeper_bound_and_reachable_packets(tmp_path):
    _proved(run_formal(SwitchHarness(), "switch", tmp_path / "bmc", mode="bmc", depth=14))
    res = run_formal(SwitchHarness(), "switch", tmp_path / "cover", mode="cover", depth=14)
    assert res.status == "pass", f"unreached covers {res.failed}"


@pytest.mark.slow
@pytest.mark.parametrize("write_policy", ["write_back", "write_through"])
def test_cache_deeper_bound_per_write_policy(write_policy, tmp_path):
    geom = small_cache_geometry("lfu", write_policy)
    _proved(run_formal(CacheHarness(geom), "cache", tmp_path, mode="bmc", depth=12))
