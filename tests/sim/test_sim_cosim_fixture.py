"""The co-simulation harness on the fixture kernel: memory, registers, runs, statistics."""
from __future__ import annotations

import time

import numpy as np
import pytest

from hbmforge.sim.cosim import CoSim, CoSimError

from sim_fixture import OPT_FATAL, WORD, fixture_reg_read, fixture_reg_write, run_job

pytestmark = pytest.mark.rtl


def test_memory_round_trip_is_sparse_and_byte_exact(sim):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8)
    addr = (1 << 16) - 77                                   # spans page boundaries, unaligned
    sim.mem_write(addr, data)
    assert np.array_equal(sim.mem_read(addr, data.size, np.uint8), data)
    assert sim.mem_read(addr + 3, 5) == data[3:8].tobytes()
    far = 0x7_FFFF_FFFF_F000                                # far above anything allocated
    assert sim.mem_read(far, 16) == bytes(16)               # untouched memory reads as zeros
    sim.mem_write(far, b"\x01\x02")
    assert sim.mem_read(far - 1, 4) == b"\x00\x01\x02\x00"
    words = np.arange(10, dtype=np.int64) - 5
    sim.mem_write(0x100, words)
    assert np.array_equal(sim.mem_read(0x100, dtype=np.int64, count=10), words)


def test_registers_identify_the_kernel_and_hold_values(sim, fixture_manifest):
    assert sim.reg_read("ID") == 0x48424D46
    assert sim.reg_read("VERSION") == fixture_manifest["layout_version"]
    assert sim.reg_read("HASH") == int(fixture_manifest["hash64"], 16)
    sim.reg_write("program", 0x1234_5678_9ABC_DEF0)
    assert sim.reg_read("program") == 0x1234_5678_9ABC_DEF0
    assert sim.reg_read(0x14) == 0x1234_5678
    assert sim.reg_read(0x800) == 0                         # unmapped
    assert sim.reg_read("CTRL") & 0b100                     # ap_idle
    with pytest.raises(ValueError, match="no register 'NOPE'"):
        sim.reg_read("NOPE")
    for bad in (0x1000, -4):
        with pytest.raises(ValueError, match="register offset must be in"):
            sim.reg_read(bad)
    with pytest.raises(ValueError, match="not a word offset below 0x1000"):
        sim.reg_read(0x102)


def test_register_access_takes_a_few_cycles(sim):
    c0 = sim.cycles()
    sim.reg_read("ID")
    assert 1 <= sim.cycles() - c0 <= 4


def test_copy_job_moves_data_and_raises_interrupt(sim):
    src = np.arange(100 * WORD // 4, dtype=np.uint32)
    sim.mem_write(0x10_0000, src)
    w0 = np.random.default_rng(1).integers(0, 2**32, 37 * WORD // 4, dtype=np.uint32)
    sim.mem_write(0x20_0000, w0)
    cycles = run_job(sim, src=0x10_0000, dst=0x30_0000, words=100, w0=0x20_0000, w0_words=37)
    assert cycles > 0
    assert np.array_equal(sim.mem_read(0x30_0000, src.nbytes, np.uint32), src)
    assert fixture_reg_read(sim, "CHECKSUM") == int(np.bitwise_xor.reduce(w0))
    assert sim.reg_read("CTRL") & 0b1110 == 0b1110          # ap_done, ap_idle, ap_ready ...
    assert sim.reg_read("CTRL") & 0b1010 == 0               # ... done and ready clear on read
    sim.check_protocol()


def test_port_stats_agree_with_the_kernel_counters(sim):
    run_job(sim, src=0x1000, dst=0x8000, words=40, w0=0x4000, w0_words=20)
    data, w0 = sim.port_stats("data"), sim.port_stats("w0")
    assert data.bytes_read == sim.reg_read("DATA_BYTES_READ") == 40 * WORD
    assert data.bytes_written == sim.reg_read("DATA_BYTES_WRITTEN") == 40 * WORD
    assert w0.bytes_read == sim.reg_read("W0_BYTES_READ") == 20 * WORD
    assert (data.read_bursts, data.write_bursts, data.r_beats) == (3, 3, 40)   # 16 + 16 + 8 beats
    assert w0.write_bursts == 0 and data.violations_4k == 0
    assert sim.port_stats(1) == w0 and tuple(w0)[0] == w0.bytes_read


def test_run_until_interrupt_without_interrupt_returns_false(sim):
    sim.reg_write("count", 4)
    sim.reg_write("CTRL", 1)                                # started, but GIE/IER left off
    c0 = sim.cycles()
    assert sim.run_until_interrupt(5_000) is False
    assert sim.last_stop == "max_cycles"
    assert sim.cycles() - c0 == 5_000
    assert sim.reg_read("CTRL") & 0b10                      # the run did finish


def test_wall_clock_timeout_returns_instead_of_hanging(sim):
    t0 = time.monotonic()
    assert sim.run_until_interrupt(10**12, timeout=0.2) is False
    assert sim.last_stop == "timeout"
    assert time.monotonic() - t0 < 5


def test_interrupt_already_pending_returns_at_once(sim):
    run_job(sim, words=1)
    sim.reg_write("CTRL", 1)
    sim.reg_write("count", 1)
    assert sim.run_until_interrupt(100_000)
    c0 = sim.cycles()
    assert sim.run_until_interrupt(100_000)                 # level interrupt still up: no cycles
    assert sim.cycles() == c0


def test_step_advances_exactly(sim):
    c0 = sim.cycles()
    sim.step(12345)
    assert sim.cycles() == c0 + 12345


def test_bad_port_and_closed_handle_are_errors(fixture_build):
    s = CoSim(fixture_build.library)                        # manifest found beside the library
    assert s.num_ports() == 2 and s.port_names == ["data", "w0"]
    with pytest.raises(ValueError, match="no port 'w7'"):
        s.port_stats("w7")
    with pytest.raises(ValueError, match="port index must be in"):
        s.set_port_timing(2, 10)
    s.close()
    s.close()                                               # idempotent
    with pytest.raises(CoSimError, match="closed"):
        s.reg_read("ID")


def test_two_instances_are_independent(fixture_build):
    with CoSim(fixture_build.library) as a, CoSim(fixture_build.library) as b:
        a.mem_write(0, b"\xAA" * 32)
        a.step(100)
        assert b.mem_read(0, 1) == b"\x00"
        assert a.cycles() == b.cycles() + 100


def test_trace_needs_a_trace_build(sim):
    with pytest.raises(CoSimError, match="without trace support"):
        sim.trace_open("/tmp/never.fst")


def test_fatal_in_the_rtl_stops_the_model_not_the_process(sim):
    fixture_reg_write(sim, "OPTIONS", 15 | OPT_FATAL)
    sim.start()
    c0 = sim.cycles()
    assert sim.run_until_interrupt(1_000_000) is False
    assert sim.cycles() - c0 < 100                          # stopped at once, did not burn the budget
    count, text = sim.protocol_errors()
    assert count >= 1 and "the model stopped" in text and "$fatal" in text
    sim.step(10)                                            # later calls return instead of hanging
    assert sim.reg_read("ID") == 0xFFFFFFFF


def test_trace_build_writes_a_waveform(tmp_path):
    from hbmforge.sim.build import BuildOptions

    from sim_fixture import FIXTURE_MANIFEST, FIXTURE_RTL

    with CoSim.open(FIXTURE_RTL, FIXTURE_MANIFEST, options=BuildOptions(trace=True), progress=False) as s:
        assert s.trace_format in ("fst", "vcd")
        assert s.build_result.trace == s.trace_format and s.build_result.stage_seconds    # how it was built
        path = tmp_path / f"wave.{s.trace_format}"
        s.trace_open(path)
        run_job(s, src=0x1000, dst=0x2000, words=4)
    assert path.stat().st_size > 1000
    if s.trace_format == "vcd":
        text = path.read_text()
        assert "m_axi_data_arvalid" in text and "ap_clk" in text


def test_arguments_are_checked_before_they_reach_the_c_abi(sim):
    """Class 5 of issue 8: no silent truncation or wrap-around at the C boundary."""
    c0 = sim.cycles()
    for bad, kind in ((-1, ValueError), (1.5, TypeError), ("10", TypeError), (True, TypeError), (1 << 63, ValueError)):
        with pytest.raises(kind, match="cycles"):
            sim.step(bad)
    assert sim.cycles() == c0                              # nothing ran
    with pytest.raises(ValueError, match=r"address must be in \[0, 18446744073709551615\]"):
        sim.mem_write(1 << 64, b"x")
    with pytest.raises(ValueError, match="runs past the end of the 64-bit address space"):
        sim.mem_write((1 << 64) - 1, b"xy")
    with pytest.raises(ValueError, match="runs past the end"):
        sim.mem_read((1 << 64) - 4, 8)
    with pytest.raises(TypeError, match="data must be"):
        sim.mem_write(0x1000, "text")
    with pytest.raises(ValueError, match="register value must be in"):
        sim.reg_write("count", 1 << 32)
    with pytest.raises(TypeError, match="read_latency must be an int"):
        sim.set_port_timing("data", read_latency=3.5)
    with pytest.raises(ValueError, match="read_latency must be in"):
        sim.set_port_timing("data", read_latency=1 << 40)
    with pytest.raises(ValueError, match="bytes_per_cycle must be a finite number"):
        sim.set_port_timing("data", bytes_per_cycle=float("nan"))
    with pytest.raises(ValueError, match="max_cycles"):
        sim.run_until_interrupt(-5)
    assert sim.mem_read((1 << 64) - 8, 8) == bytes(8)      # the last word of the space is fine
