"""SimDevice over the real Verilator co-simulation of the fixture kernel (tests/fixtures/fixture.v).

The fixture is not a matmul engine: one run copies ``count`` words from
``program`` to ``dst`` on the data port. That is enough to exercise the sim
backend's allocation, copies, identity check, interrupt-driven wait, timeout,
counters and AXI protocol checks against the C++ model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from hbmforge.config import parse_config, starter_config
from hbmforge.host import DesignMismatchError, DeviceTimeoutError, ProtocolViolationError
from hbmforge.host.backends.sim import SimDevice
from hbmforge.host.manifest import Manifest
from hbmforge.layout import DesignLayout

pytestmark = pytest.mark.rtl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WORD = 32


def fixture_manifest(**overrides) -> Manifest:
    """The fixture's manifest plus the descriptor/engine sections of a one-weight-port starter design."""
    data = json.loads((FIXTURES / "fixture_manifest.json").read_text())
    cfg = starter_config("u280")
    cfg["engines"][0]["weight_ports"] = 1
    lay = DesignLayout(parse_config(cfg)).to_json()
    data["descriptor"], data["engines"] = lay["descriptor"], lay["engines"]
    have = {r["name"] for r in data["registers"]}
    data["registers"] += [r for r in lay["registers"] if r["name"] not in have]   # unmapped: read 0
    data.update(overrides)
    return Manifest(data)


@pytest.fixture(scope="module")
def library():
    from hbmforge.sim.build import build_library
    return build_library(FIXTURES / "fixture.v", FIXTURES / "fixture_manifest.json", progress=False).library


@pytest.fixture
def dev(library):
    with SimDevice(fixture_manifest(), library) as d:
        yield d


def copy(dev, words: int, *, options: int | None = None, w0_offset: int | None = None):
    """Start a copy of ``words`` words; with ``w0_offset`` the w0 reader also reads from there."""
    src = dev.alloc(max(words * WORD, words * dev.manifest.descriptor.bytes))
    dst = dev.alloc(words * WORD)
    data = np.random.default_rng(words).integers(0, 256, words * WORD, dtype=np.uint8)
    dev.write(src, data)
    dev.write_reg("dst", dst.address)
    if w0_offset is not None:
        w0 = dev.alloc(8192, "w0")
        dev.write_reg("w0", w0.address + w0_offset)
        dev.write_reg("w0_words", words)
    if options is not None:
        dev.write_reg("OPTIONS", options)
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
    with SimDevice(fixture_manifest(), library, bytes_per_cycle=0.5) as dev:
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
    with pytest.raises(DesignMismatchError, match=r"reads 0x5eed0f1c7e5eed01.*expects 0x0000000000000001"):
        SimDevice(fixture_manifest(hash64="0x1"), library)


def test_latency_override_slows_the_copy(library):
    cycles = []
    for latency in (None, 400):
        with SimDevice(fixture_manifest(), library, read_latency=latency) as d:
            copy(d, 32)
            cycles.append(d.wait(timeout=30).cycles)
    assert cycles[1] > cycles[0] + 300
