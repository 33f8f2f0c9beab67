"""SimDevice's handshake and timing setup, over a Python stand-in for the co-sim library.

The real Verilator co-simulation is exercised by test_linear_rtl.py (marked rtl).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from hbmforge.host import DesignMismatchError, DeviceError, DeviceTimeoutError, Linear, ProtocolViolationError
from hbmforge.host.backends.sim import SimDevice

from golden_kernel import FakeCoSim


@pytest.fixture
def fake(tiny_layout):
    return FakeCoSim(tiny_layout)


def test_port_timing_comes_from_the_board_at_the_kernel_clock(tiny_layout, fake):
    with SimDevice(tiny_layout.to_json(), fake) as dev:
        latency = math.ceil(107 * 300 / 1e3)                    # U280 HBM 107 ns at 300 MHz
        width = 64 // 8                                         # below 14.375 GB/s / 300 MHz = 47.9 B/cycle
        assert fake.timings == {i: (latency, latency, float(width), 32) for i in range(3)}
        assert dev.timings["w1"].read_latency == latency


def test_timing_overrides_per_port_or_for_all(tiny_layout, fake):
    SimDevice(tiny_layout, fake, read_latency={"w0": 5}, bytes_per_cycle=2.5, max_outstanding=4)
    assert fake.timings[1][0] == 5 and fake.timings[0][0] == 33
    assert all(t[2] == 2.5 and t[3] == 4 for t in fake.timings.values())
    with pytest.raises(ValueError, match=r"read_latency: unknown port\(s\) \['w9'\]"):
        SimDevice(tiny_layout, FakeCoSim(tiny_layout), read_latency={"w9": 5})


def test_a_run_arms_and_acknowledges_the_interrupt(tiny_layout, fake):
    dev = SimDevice(tiny_layout, fake)
    rng = np.random.default_rng(1)
    lin = Linear.from_float(rng.standard_normal((6, 48)), bits=4, device=dev)
    xq = rng.integers(-128, 128, (3, 48))
    assert np.array_equal(lin.forward_int(xq), lin.golden_int(xq))
    k = fake.kernel
    assert (k.gie, k.ier, k.isr, k.done) == (1, 1, 0, False)     # ISR toggled off, ap_done read
    assert "sim" in dev.counters()
    dev.close()
    assert fake.closed


def test_a_hung_kernel_times_out_between_chunks(tiny_layout):
    dev = SimDevice(tiny_layout, FakeCoSim(tiny_layout, hang=True), chunk_cycles=1000)
    lin = Linear.from_float(np.ones((2, 16)), device=dev)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="within 0.3 s"):
        lin.forward_int(np.ones((1, 16), np.int8), timeout=0.3)
    assert time.monotonic() - t0 < 3


def test_axi_rule_violations_fail_the_run(tiny_layout, fake):
    dev = SimDevice(tiny_layout, fake)
    lin = Linear.from_float(np.ones((2, 16)), device=dev)
    fake.protocol = (2, "m_axi_w0: burst crosses 4 KiB at 0x10ff0")
    with pytest.raises(ProtocolViolationError, match="2 AXI rule violation.*crosses 4 KiB"):
        lin(np.ones(16))


def test_a_library_of_another_design_is_refused_and_closed(tiny_layout):
    other = FakeCoSim(tiny_layout, hash64=1)
    with pytest.raises(DesignMismatchError, match="design hash mismatch"):
        SimDevice(tiny_layout, other)
    assert other.closed
    fewer = FakeCoSim(tiny_layout)
    fewer.num_ports = lambda: 2
    with pytest.raises(DeviceError, match="has 2 memory ports, the manifest of 'tiny' lists 3"):
        SimDevice(tiny_layout, fewer)
