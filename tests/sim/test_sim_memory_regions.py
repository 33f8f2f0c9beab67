"""Memory regions beside the ports' own channels (host memory over PCIe, DDR): their latency,
their bandwidth shared by every port, and the trace of what an observer of the region sees."""
from __future__ import annotations

import pytest

from hbmforge.memory_map import HOST_BASE, memory_regions, region_for

from sim_fixture import WORD, run_job

pytestmark = pytest.mark.rtl

HOST = HOST_BASE + 0x10000


def read_cycles(sim, addr, words, *, burst=16) -> int:
    return run_job(sim, w0=addr, w0_words=words, options=burst - 1)


def test_a_read_from_a_region_takes_the_regions_latency_not_the_ports(sim):
    sim.set_port_timing("w0", 40, 40, 32.0, 32)
    sim.set_region(0, HOST_BASE, 1 << 30, 300, 300, 32.0)
    near = read_cycles(sim, 0x10000, 16)
    far = read_cycles(sim, HOST, 16)
    assert far - near == 300 - 40
    sim.set_region(0, HOST_BASE, 0, 1, 1, 1.0)                     # size 0 removes the region
    assert read_cycles(sim, HOST, 16) == near


def test_a_regions_bandwidth_paces_its_beats(sim):
    sim.set_port_timing("w0", 40, 40, 32.0, 32)
    sim.set_region(0, HOST_BASE, 1 << 30, 100, 100, 8.0)          # a quarter of a beat per cycle
    words = 256
    cycles = read_cycles(sim, HOST, words)
    assert cycles == pytest.approx(100 + words * WORD / 8.0, rel=0.03)


def test_ports_share_a_regions_bandwidth(sim):
    """The fixture's data port copies while w0 reads: alone each takes its own time; into one
    region their beats queue on the one link."""
    for p in ("data", "w0"):
        sim.set_port_timing(p, 20, 20, 32.0, 32)
    sim.set_region(0, HOST_BASE, 1 << 30, 50, 50, 16.0)
    words = 128
    w0_alone = run_job(sim, w0=HOST, w0_words=words, options=15)
    both = run_job(sim, src=HOST + 0x100000, dst=0x200000, words=words, w0=HOST, w0_words=words, options=15)
    # w0 reads 128 words; the copy reads 128 more through the same 16 B/cycle link
    assert both >= w0_alone + words * WORD / 16.0 * 0.9


def test_the_trace_records_every_burst_into_a_traced_region_and_nothing_else(sim):
    sim.set_region(0, HOST_BASE, 1 << 30, 60, 60, 32.0, traced=True)
    sim.region_trace()                                             # forget earlier records
    run_job(sim, src=HOST, dst=0x9000, words=40, w0=0x10000, w0_words=32, options=15)
    trace = sim.region_trace()
    reads = trace[trace["write"] == 0]
    assert list(reads["addr"]) == [HOST, HOST + 16 * WORD, HOST + 32 * WORD]
    assert list(reads["bytes"]) == [16 * WORD, 16 * WORD, 8 * WORD]
    assert set(trace["port"]) == {0} and not (trace["write"] == 1).any()
    assert list(trace["cycle"]) == sorted(trace["cycle"])
    run_job(sim, src=0x1000, dst=HOST + 0x4000, words=16)
    trace = sim.region_trace()
    assert list(zip(trace["write"], trace["addr"], trace["bytes"])) == [(1, HOST + 0x4000, 16 * WORD)]
    stats = sim.region_stats(0)
    assert stats.write_bursts == 1 and stats.bytes_written == 16 * WORD and stats.trace_pending == 0


def test_the_same_job_gives_the_same_trace_timing(sim):
    sim.set_region(0, HOST_BASE, 1 << 30, 60, 60, 32.0, traced=True)
    sim.region_trace()
    cycles = []
    for addr in (HOST, HOST + 0x40000):
        start = sim.cycles()
        run_job(sim, src=addr, dst=0x9000, words=40)
        cycles.append([int(c) - start for c in sim.region_trace()["cycle"]])
    assert cycles[0] == cycles[1]


def test_region_arguments_are_checked_before_the_c_abi(sim):
    with pytest.raises(ValueError, match="region index"):
        sim.set_region(8, HOST_BASE, 1, 1, 1, 1.0)
    with pytest.raises(ValueError, match="read_latency"):
        sim.set_region(0, HOST_BASE, 1, 0, 1, 1.0)
    with pytest.raises(ValueError, match="bytes_per_cycle"):
        sim.set_region(0, HOST_BASE, 1, 1, 1, -1.0)
    with pytest.raises(ValueError, match="address space"):
        sim.set_region(0, (1 << 64) - 16, 32, 1, 1, 1.0)


def test_board_regions_cite_the_hierarchy():
    u280 = {r.name: r for r in memory_regions("u280")}
    assert set(u280) == {"HOST", "DDR[0]", "DDR[1]"}
    assert u280["HOST"].latency_cycles(300) == 300 and u280["HOST"].bytes_per_cycle(300) == pytest.approx(40.0)
    assert u280["DDR[0]"].bytes_per_cycle(300) == pytest.approx(64.0)
    assert [r.name for r in memory_regions("u55c")] == ["HOST"]
    assert memory_regions("kv260") == ()                           # host memory is the PS DDR itself
    assert region_for("kv260", "host") is None and region_for("u280", "hbm") is None
    with pytest.raises(ValueError, match="u55c has no ddr memory; it has hbm, host"):
        region_for("u55c", "ddr")
    with pytest.raises(ValueError, match="memory must be one of hbm, ddr, host"):
        region_for("u280", "flash")
