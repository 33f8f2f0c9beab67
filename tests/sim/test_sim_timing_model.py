"""The memory timing model as the kernel sees it: latency, bandwidth, outstanding bursts.

The fixture's CYCLES register counts ap_start to ap_done, so the model's
parameters show up directly in it: a read of B bytes in flight at once costs
about ``read_latency + B / bytes_per_cycle`` cycles.
"""
from __future__ import annotations

import pytest

from sim_fixture import WORD, run_job

pytestmark = pytest.mark.rtl


def read_cycles(sim, words, *, latency=40, bpc=32.0, outstanding=32, burst=16) -> int:
    sim.set_port_timing("w0", latency, latency, bpc, outstanding)
    return run_job(sim, w0=0x10000, w0_words=words, options=burst - 1)


def test_read_latency_adds_cycle_for_cycle(sim):
    base = read_cycles(sim, 16, latency=20)
    assert read_cycles(sim, 16, latency=120) - base == 100
    assert read_cycles(sim, 16, latency=1) - base == -19


def test_one_burst_costs_latency_plus_bytes_over_bandwidth(sim):
    fixed = read_cycles(sim, 16, latency=30) - (30 + 16)          # kernel overhead: start, AR, done
    assert 0 <= fixed <= 6
    for bpc in (32.0, 8.0, 5.0):
        expect = 30 + 16 * WORD / bpc + fixed
        assert read_cycles(sim, 16, latency=30, bpc=bpc) == pytest.approx(expect, abs=2)


def test_bandwidth_holds_over_many_outstanding_bursts(sim):
    words = 256                                                    # 16 bursts of 16 beats
    for bpc in (32.0, 16.0, 10.0):
        cycles = read_cycles(sim, words, latency=60, bpc=bpc, outstanding=32)
        assert cycles == pytest.approx(60 + words * WORD / bpc, rel=0.03)


def test_outstanding_limit_serialises_bursts(sim):
    words, lat = 128, 50                                           # 8 bursts of 16
    pipelined = read_cycles(sim, words, latency=lat, outstanding=32)
    serial = read_cycles(sim, words, latency=lat, outstanding=1)
    assert pipelined == pytest.approx(lat + words, abs=8)
    assert serial == pytest.approx(8 * (lat + 16), rel=0.05)       # each burst waits for the previous
    two = read_cycles(sim, words, latency=lat, outstanding=2)
    assert pipelined < two < serial


def test_write_latency_delays_the_response(sim):
    def copy_cycles(wlat):
        sim.set_port_timing("data", 20, wlat, 32.0, 32)
        return run_job(sim, src=0x1000, dst=0x9000, words=16)

    assert copy_cycles(90) - copy_cycles(10) == 80


def test_write_bandwidth_paces_w_beats(sim):
    sim.set_port_timing("data", 20, 20, 32.0, 32)
    fast = run_job(sim, src=0x1000, dst=0x9000, words=16)
    sim.set_port_timing("data", 20, 20, 4.0, 32)
    slow = run_job(sim, src=0x1000, dst=0x9000, words=16)
    # 16 beats read and 16 written, each now 8 cycles instead of 1
    assert slow - fast == pytest.approx(2 * 16 * 7, abs=4)


def test_timing_defaults_come_from_the_board(sim):
    t = sim.port_timing("data")
    assert (t.read_latency, t.write_latency, t.bytes_per_cycle) == (33, 33, 32.0)
    changed = sim.set_port_timing("data", read_latency=70)
    assert changed.read_latency == 70 and changed.write_latency == 33
