"""SimDevice over the real Verilator co-simulation of the fixture kernel (tests/fixtures/fixture.v).

The fixture is not a matmul engine: one run copies ``count`` words from
``program`` to ``dst`` on the data port. That is enough to exercise the sim
backend's allocation, copies, identity check, interrupt-driven wait, timeout,
counters and AXI protocol checks against the C++ model.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.host import DesignMismatchError, DeviceTimeoutError, ProtocolViolationError
from hbmforge.host.backends.sim import SimDevice
from hbmforge.layout import DesignLayout

from fixture_design import FIXTURE_CONFIG, FIXTURE_MANIFEST, FIXTURE_RTL, WORD, fixture_reg_write

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def library():
    from hbmforge.sim.build import build_library
    return build_library(FIXTURE_RTL, FIXTURE_MANIFEST, progress=False).library


@pytest.fixture
def dev(library):
    with SimDevice(FIXTURE_MANIFEST, library) as d:
        yield d


def copy(dev, words: int, *, options: int | None = None, w0_offset: int | None = None):
    """Start a copy of ``words`` words; with ``w0_offset`` the w0 reader also reads from there."""
    src = dev.alloc(max(words * WORD, words * dev.layout.descriptor_bytes))
    dst = dev.alloc(words * WORD)
    data = np.random.default_rng(words).integers(0, 256, words * WORD, dtype=np.uint8)
    dev.write(src, data)
    fixture_reg_write(dev.sim, "dst", dst.address)
    if w0_offset is not None:
        w0 = dev.alloc(8192, "w0")
        dev.write_reg("w0", w0.address + w0_offset)
        fixture_reg_write(dev.sim, "w0_words", words)
    if options is not None:
        fixture_reg_write(dev.sim, "OPTIONS", options)
    dev.start(src, words)
    return data, dst


def test_a_copy_runs_to_the_interrupt_and_counts_bytes(dev):
    data, dst = copy(dev, 64)
    status = dev.wait(timeout=30)
    assert status.cycles > 0 and status.descriptors_done == 0          # the fixture has no DESC_DONE
    assert dev.read(dst) == data.tobytes()
    c = dev.counters()
    assert c["ports"]["data"]["bytes_read"] == 64 * WORD == c["ports"]["data"]["bytes_written"]
    assert c["sim"]["ports"]["data"]["crossings_4k"] == 0
    assert dev.sim.reg_read(0x0C) == 0                                   # ISR acknowledged
    data, dst = copy(dev, 8)                                             # and the next run starts cleanly
    dev.wait(timeout=30)
    assert dev.read(dst) == data.tobytes()


def test_buffers_sit_in_the_hbm_bank_of_their_port(dev):
    w0 = dev.alloc(4096, "w0")
    assert 256 << 20 <= w0.address < 512 << 20
    dev.write(w0, b"\x5a" * 64)
    assert dev.sim.mem_read(w0.address, 64) == b"\x5a" * 64


def test_a_long_run_times_out_and_can_be_waited_for_again(library):
    # a memory throttled to half a byte per cycle makes the copy take millions of cycles,
    # far longer than 0.05 s on any machine, whatever the simulation speed
    with SimDevice(FIXTURE_MANIFEST, library, bytes_per_cycle=0.5) as dev:
        data, dst = copy(dev, 1 << 16)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeoutError, match="did not finish within 0.05 s"):
            dev.wait(timeout=0.05)
        assert time.monotonic() - t0 < 5
        dev.wait(timeout=300)
        assert dev.read(dst) == data.tobytes()


def test_a_4k_crossing_is_reported_as_a_protocol_violation(dev):
    copy(dev, 64, w0_offset=4096 - 64, options=(1 << 8) | 15)           # 16-beat bursts, 4 KiB rule off
    with pytest.raises(ProtocolViolationError, match="AXI rule violation"):
        dev.wait(timeout=30)


def test_a_manifest_with_another_hash_is_refused(library):
    fixture = DesignLayout(parse_config(FIXTURE_CONFIG))
    other = dict(FIXTURE_CONFIG, clock_mhz=FIXTURE_CONFIG["clock_mhz"] - 1)      # same ports, another hash
    other = DesignLayout(parse_config(other))
    with pytest.raises(DesignMismatchError, match=rf"reads {fixture.hash64:#018x}.*expects {other.hash64:#018x}"):
        SimDevice(other, library)


def test_latency_override_slows_the_copy(library):
    cycles = []
    for latency in (None, 400):
        with SimDevice(FIXTURE_MANIFEST, library, read_latency=latency) as d:
            copy(d, 32)
            cycles.append(d.wait(timeout=30).cycles)
    assert cycles[1] > cycles[0] + 300
