"""The calibrated memory model (sim/harness/dram_model.h, docs/hbm-model.md) on the fixture kernel:
row hits, closed rows and misses cost the board's measured latencies, refresh and read/write
turnaround take bus time, the HBM switch adds latency, and ``ideal`` is today's model exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hbmforge.sim.timing import dram_params

from sim_fixture import FIXTURE_CONFIG, WORD, run_job

pytestmark = pytest.mark.rtl

CLOCK = float(FIXTURE_CONFIG["clock_mhz"])
P = dram_params(FIXTURE_CONFIG["board"], CLOCK)
BANK = int(P["device_bytes"])            # pseudo-channel c at c * BANK
PAGE = int(P["page_bytes"])
ROW_STRIDE = PAGE * int(P["banks"])      # the next row of the same bank


def after_refresh(sim, channel: int) -> None:
    """Step to just after the next refresh of ``channel`` ends, so a short job sees none."""
    refi, rfc = P["t_refi"], P["t_rfc"]
    first = refi * (1 + channel / P["devices"])
    now = sim.cycles()
    k = max(0, math.ceil((now - first) / refi))
    sim.step(int(math.ceil(first + k * refi + rfc - now)) + 2)


def read(sim, addr: int, words: int = 1) -> int:
    after_refresh(sim, addr // BANK)
    return run_job(sim, w0=addr, w0_words=words, options=15)


def test_ideal_is_the_default_and_coming_back_to_it_restores_the_same_timing(sim):
    assert sim.memory_model == "ideal"
    base = read(sim, BANK + 0x1000, 64)
    sim.set_memory_model("calibrated")
    read(sim, BANK + 0x1000, 64)
    sim.set_memory_model("ideal")
    assert read(sim, BANK + 0x1000, 64) == base


def test_row_hit_closed_and_miss_cost_the_measured_latencies(sim):
    sim.set_memory_model("calibrated")
    addr = BANK + 7 * PAGE                        # pseudo-channel 1 (w0's own), bank 7
    after_refresh(sim, 1)                         # every bank precharged, no refresh for a while
    closed = run_job(sim, w0=addr, w0_words=1, options=15)
    hit = run_job(sim, w0=addr, w0_words=1, options=15)                 # the row is open now
    miss = run_job(sim, w0=addr + ROW_STRIDE, w0_words=1, options=15)   # same bank, next row
    assert closed - hit == pytest.approx(P["t_rcd"], abs=1.0)
    assert miss - hit == pytest.approx(P["t_rcd"] + P["t_rp"], abs=1.0)
    stats = sim.memory_stats()
    assert stats.row_hits >= 1 and stats.row_closed >= 1 and stats.row_misses >= 1


def hit_cycles(sim, addr: int) -> int:
    """A one-word read of an open row (opened by the read before it, right after a refresh)."""
    after_refresh(sim, addr // BANK)
    run_job(sim, w0=addr, w0_words=1, options=15)
    return run_job(sim, w0=addr, w0_words=1, options=15)


def test_a_hit_takes_the_boards_hit_latency_instead_of_the_ports(sim):
    ideal_latency = sim.port_timing("w0").read_latency
    ideal = run_job(sim, w0=BANK, w0_words=1, options=15)
    sim.set_memory_model("calibrated")
    assert hit_cycles(sim, BANK) - ideal == pytest.approx(P["hit_latency"] - ideal_latency, abs=1.5)


def test_crossing_the_switch_adds_latency_per_group_and_at_the_stack(sim):
    sim.set_memory_model("calibrated")
    w0_home = FIXTURE_CONFIG["ports"]["w0"]                   # group 0
    own, near, far = (hit_cycles(sim, ch * BANK) for ch in (w0_home + 1, 4, 20))   # own group, next, other stack
    assert near - own == pytest.approx(P["hop_latency"], abs=1.0)
    assert far - own == pytest.approx(5 * P["hop_latency"] + P["stack_latency"], abs=1.0)
    assert sim.memory_stats().crossing_bursts >= 4


def test_a_copy_within_one_pseudo_channel_turns_its_bus_around_and_keeps_the_data(sim):
    """The fixture's copy reads and writes pseudo-channel 0: one bus, so every change of
    direction is a turnaround; the data lands intact and the rows stay open (sequential)."""
    words = 4096
    src, dst = 0x10000, 0x400000
    data = np.random.default_rng(1).integers(0, 256, words * WORD, dtype=np.uint8)
    sim.mem_write(src, data)
    ideal = run_job(sim, src=src, dst=dst, words=words, options=15)
    sim.mem_write(dst, bytes(words * WORD))
    sim.set_memory_model("calibrated")
    cal = run_job(sim, src=src, dst=dst, words=words, options=15)
    assert sim.mem_read(dst, words * WORD) == data.tobytes()
    stats = sim.memory_stats()
    assert stats.accesses == 2 * words * WORD // int(P["burst_bytes"])
    assert stats.turnarounds > 0 and stats.refreshes >= int(cal / P["t_refi"]) - 1
    # src and dst walk the banks in step (same alignment): some row misses, mostly hits
    assert stats.row_hits > 0.9 * stats.accesses and stats.row_misses > 0
    assert cal > ideal * 0.9, (cal, ideal)


def test_a_long_stream_loses_the_refresh_time(sim):
    """w0 alone at one beat per cycle (9.6 GB/s) keeps below the channel rate: the refreshes it
    meets cost at most their tRFC each, and the model counts one per tREFI."""
    sim.set_memory_model("calibrated")
    words = 32768
    cycles = read(sim, BANK, words)
    stats = sim.memory_stats()
    assert stats.refreshes >= int(cycles / P["t_refi"]) - 1
    assert words <= cycles <= words + stats.refreshes * (P["t_rfc"] + P["t_rcd"]) + 200


def test_bad_memory_models_are_refused(sim):
    with pytest.raises(ValueError, match="memory model must be one of"):
        sim.set_memory_model("fast")
    assert sim.memory_model == "ideal"


def test_the_calibrated_timing_follows_the_kernel_clock_it_is_given(sim):
    """The same RTL at 225 MHz: the board's ns are fewer cycles and its GB/s more bytes per cycle."""
    slow = dram_params(FIXTURE_CONFIG["board"], 225.0)
    assert slow["hit_latency"] < P["hit_latency"] and slow["burst_cycles"] < P["burst_cycles"]
    ideal_latency = sim.port_timing("w0").read_latency
    ideal = run_job(sim, w0=BANK, w0_words=1, options=15)
    assert sim.set_memory_model("calibrated", clock_mhz=225.0) == slow
    assert sim.memory_clock_mhz == 225.0
    assert hit_cycles(sim, BANK) - ideal == pytest.approx(slow["hit_latency"] - ideal_latency, abs=1.5)
    assert sim.set_memory_model("calibrated") == P and sim.memory_clock_mhz == CLOCK


@pytest.mark.parametrize("clock", [0, -5.0, 1001, float("nan"), "225", True])
def test_a_bad_memory_clock_is_refused_and_changes_nothing(sim, clock):
    with pytest.raises(ValueError, match="clock_mhz must be a number"):
        sim.set_memory_model("calibrated", clock_mhz=clock)
    assert sim.memory_model == "ideal" and sim.memory_clock_mhz is None
    with pytest.raises(ValueError, match="calibrated memory model only"):
        sim.set_memory_model("ideal", clock_mhz=225.0)


def test_a_ports_own_rate_keeps_its_gb_s_at_another_memory_clock(sim):
    """``set_port_timing`` counts cycles of the config's clock; a calibrated model at another clock
    converts them: w0 capped at 16 B a cycle at 300 MHz (4.8 GB/s) is 32 B a cycle at 150 MHz. (Kept
    at 16, a 225 MHz run of a 512-bit U280 design read 343 GB/s instead of the calibrated 425.)"""
    assert sim.set_port_timing("w0", bytes_per_cycle=16.0).bytes_per_cycle == 16.0
    words = 2048
    sim.set_memory_model("calibrated")
    at_config = read(sim, BANK, words)
    sim.set_memory_model("calibrated", clock_mhz=CLOCK / 2)
    at_half = read(sim, BANK, words)
    assert at_config >= 2 * words * 0.95, at_config
    assert words <= at_half <= words * 1.2, at_half
    assert sim.port_timing("w0").bytes_per_cycle == 16.0       # what the caller set, in its frame
    sim.set_memory_model("ideal")
    assert read(sim, BANK, words) >= 2 * words * 0.95           # back at the config's clock


def test_a_region_keeps_its_ns_and_gb_s_at_another_memory_clock(sim):
    """A region beside the channels (host memory, DDR) converts like a port: 300 cycles of latency
    and 4 B a cycle at 300 MHz are 150 cycles and 8 B a cycle at 150 MHz."""
    words = 256
    sim.set_region(0, BANK, BANK, 300, 300, 4.0)
    sim.set_memory_model("calibrated")
    one, many = run_job(sim, w0=BANK, w0_words=1, options=15), run_job(sim, w0=BANK, w0_words=words, options=15)
    sim.set_memory_model("calibrated", clock_mhz=CLOCK / 2)
    one_h, many_h = run_job(sim, w0=BANK, w0_words=1, options=15), run_job(sim, w0=BANK, w0_words=words, options=15)
    assert one - one_h == pytest.approx(150, abs=4)
    assert (many_h - one_h) == pytest.approx((many - one) / 2, rel=0.05)
    assert sim.region_stats(0).bytes_read == (words + 1) * WORD      # counted since the clock changed
