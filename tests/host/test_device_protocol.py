"""The device protocol (host/device.py) over the in-process golden kernel."""
from __future__ import annotations

import time

import numpy as np
import pytest

from hbmforge.host import (BufferStateError, DesignMismatchError, DeviceBusyError, DeviceClosedError,
                           DeviceError, DeviceRunError, DeviceTimeoutError, OutOfDeviceMemoryError,
                           ProgramBuilder)
from hbmforge.host.allocator import BankAllocator
from hbmforge.encodings import ErrorCode

from golden_kernel import GoldenDevice

MIB = 1 << 20


# -- allocation ------------------------------------------------------------------------
def test_buffers_are_page_aligned_in_the_bank_of_their_port(golden_dev):
    a = golden_dev.alloc(100)
    b = golden_dev.alloc(5000)
    w1 = golden_dev.alloc(10, "w1")
    assert a.address % 4096 == 0 and b.address % 4096 == 0
    assert b.address >= a.address + 4096                        # no overlap
    channel = golden_dev.layout.port("w1").channel
    assert channel * 256 * MIB <= w1.address < (channel + 1) * 256 * MIB
    assert "HBM[" in w1.bank and len(b) == 5000


def test_freed_space_is_reused_first_fit(golden_dev):
    a = golden_dev.alloc(4096)
    golden_dev.alloc(4096)
    addr = a.address
    golden_dev.free(a)
    assert golden_dev.alloc(100).address == addr


def test_allocator_coalesces_neighbours():
    bank = BankAllocator("b", 0, 4 * 4096)
    starts = [bank.allocate(4096) for _ in range(4)]
    for s in (starts[1], starts[3], starts[2]):
        bank.release(s)
    assert bank.allocate(3 * 4096) == starts[1]
    with pytest.raises(ValueError, match="not an allocated range"):
        bank.release(12345)


def test_allocator_places_a_range_at_a_phase_of_a_period_and_keeps_the_skipped_bytes_free():
    bank = BankAllocator("b", 0, 64 * 4096)
    a = bank.allocate(4096)
    b = bank.allocate(5 * 4096, period=8 * 4096, phase=2 * 4096)
    assert (a, b) == (0, 2 * 4096)                                # the first start with b % period == phase
    assert bank.allocate(4096) == 4096                            # the skipped page is still free
    c = bank.allocate(8 * 4096, period=8 * 4096, phase=6 * 4096)
    assert c == 14 * 4096 and bank.bytes_used == (1 + 5 + 1 + 8) * 4096
    for start in (a, b, c, 4096):
        bank.release(start)
    assert bank.allocate(64 * 4096) == 0                          # everything coalesced again
    for period, phase in ((8 * 4096, 8 * 4096), (8 * 4096 + 1, 0), (8 * 4096, 100)):
        with pytest.raises(ValueError, match="must be multiples of 4096, phase below period"):
            BankAllocator("b", 0, 64 * 4096).allocate(4096, period=period, phase=phase)


def test_stream_buffers_on_a_shared_ddr_start_in_banks_of_their_own():
    # the KV260's four HP ports share one DDR4 (16 banks of 8 KiB rows, row | bank | column): a
    # port's streams start banks / ports = 4 banks after the previous port's, so streams that
    # advance together keep to their own banks (the matmul's weight streams: 0.73 -> 1.0 of the
    # ports' rate on the co-sim, docs/decode-projection.md)
    from hbmforge.config import load_config
    from hbmforge.layout import DesignLayout

    with GoldenDevice(DesignLayout(load_config("examples/kv260_ternary.yaml"))) as dev:
        period, step = 16 * 8192, 4 * 8192
        small = dev.alloc(100, "w1")
        big = [dev.alloc(MIB + 100, f"w{p}") for p in range(4)]
        assert [b.address % period for b in big] == [p * step for p in range(4)]
        assert small.address % 4096 == 0 and small.bank == big[0].bank == "DDR"
        data = dev.alloc(MIB, "data")                             # not a stream: page-aligned first fit
        assert data.address % 4096 == 0
        first_free = dev.alloc(4096, "w2")                        # small buffers fill the skipped pages
        assert first_free.address < big[0].address


def test_an_oversized_allocation_names_the_bank_and_free_space(golden_dev):
    golden_dev.alloc(200 * MIB)
    with pytest.raises(OutOfDeviceMemoryError, match=r"bank HBM\[0\]: cannot allocate .* largest free range"):
        golden_dev.alloc(100 * MIB)


@pytest.mark.parametrize("nbytes, exc, match", [
    (0, ValueError, "nbytes must be >= 1, got 0"),
    (-5, ValueError, "nbytes must be >= 1"),
    (1.5, TypeError, "nbytes must be an integer, got float"),
    (True, TypeError, "nbytes must be an integer, got bool"),
])
def test_bad_sizes_are_refused(golden_dev, nbytes, exc, match):
    with pytest.raises(exc, match=match):
        golden_dev.alloc(nbytes)


def test_unknown_port_lists_the_ports(golden_dev):
    with pytest.raises(ValueError, match="no port 'w5'.*data, w0, w1"):
        golden_dev.alloc(64, "w5")


# -- copies ----------------------------------------------------------------------------
def test_bytes_and_arrays_round_trip_little_endian(golden_dev):
    buf = golden_dev.alloc(64)
    golden_dev.write(buf, b"\x01\x02\x03")
    golden_dev.write(buf, np.array([0x11223344], dtype=">u4"), offset=8)     # big-endian input
    golden_dev.write(buf, np.arange(4, dtype=np.int16)[::2], offset=16)       # non-contiguous
    raw = golden_dev.read(buf, 20)
    assert raw[:3] == b"\x01\x02\x03"
    assert raw[8:12] == bytes([0x44, 0x33, 0x22, 0x11])
    assert raw[16:20] == bytes([0, 0, 2, 0])
    assert len(golden_dev.read(buf)) == 64 and golden_dev.read(buf, 4, offset=60) == bytes(4)


@pytest.mark.parametrize("data, exc, match", [
    (np.array(["a"]), TypeError, "cannot copy a <U1 array"),
    (np.array([1j]), TypeError, "complex128"),
    (np.array([object()]), TypeError, "object"),
    ([1, 2, 3], TypeError, "got list"),
])
def test_wrong_data_types_are_refused(golden_dev, data, exc, match):
    with pytest.raises(exc, match=match):
        golden_dev.write(golden_dev.alloc(64), data)


def test_copies_past_the_end_are_refused(golden_dev):
    buf = golden_dev.alloc(16)
    with pytest.raises(ValueError, match="buffer too small: writing 16 bytes at offset 8 needs 24 bytes"):
        golden_dev.write(buf, bytes(16), offset=8)
    with pytest.raises(ValueError, match="read past the end"):
        golden_dev.read(buf, 10, offset=8)
    with pytest.raises(ValueError, match="offset must be in"):
        golden_dev.read(buf, offset=17)


def test_freed_and_foreign_buffers_are_refused(golden_dev, tiny_layout):
    buf = golden_dev.alloc(16)
    golden_dev.free(buf)
    with pytest.raises(BufferStateError, match="was freed"):
        golden_dev.write(buf, b"x")
    with pytest.raises(BufferStateError, match="was freed"):
        golden_dev.free(buf)
    with pytest.raises(BufferStateError, match="no longer valid"):
        buf.address
    with GoldenDevice(tiny_layout) as other:
        with pytest.raises(BufferStateError, match="belongs to another device"):
            golden_dev.read(other.alloc(16))
    with pytest.raises(TypeError, match="must be a Buffer"):
        golden_dev.read(0x1000)


# -- registers -------------------------------------------------------------------------
def test_64_bit_registers_are_written_and_read_as_two_words(golden_dev):
    golden_dev.write_reg("program", 0x1234_5678_9ABC_DEF0)
    assert golden_dev.read_reg("program") == 0x1234_5678_9ABC_DEF0
    assert golden_dev.kernel.args[0x14] == 0x1234_5678
    assert golden_dev.read_reg("ID") == 0x48424D46


def test_register_writes_are_checked(golden_dev):
    with pytest.raises(ValueError, match="register STATUS is read-only"):
        golden_dev.write_reg("STATUS", 0)
    with pytest.raises(ValueError, match=r"value for count must be in \[0, 4294967295\]"):
        golden_dev.write_reg("count", 1 << 32)
    with pytest.raises(ValueError, match="no register 'NOPE'"):
        golden_dev.read_reg("NOPE")


# -- identity --------------------------------------------------------------------------
def test_a_foreign_hash_is_refused_naming_both_hashes(tiny_layout):
    with pytest.raises(DesignMismatchError, match=r"reads 0x00000000deadbeef.*expects 0x[0-9a-f]{16}"):
        GoldenDevice(tiny_layout, hash64=0xDEADBEEF)


def test_a_kernel_without_the_id_or_of_another_version_is_refused(tiny_layout):
    with pytest.raises(DesignMismatchError, match="ID reads 0x00000000"):
        GoldenDevice(tiny_layout, kernel_id=0)
    with pytest.raises(DesignMismatchError, match="layout version 1.0"):
        GoldenDevice(tiny_layout, version=0x1_0000)


# -- runs ------------------------------------------------------------------------------
def _program(dev, prog: ProgramBuilder):
    buf = dev.alloc(prog.nbytes)
    dev.write(buf, prog.to_bytes())
    return buf


def _matmul_program(dev, **changes):
    lay = dev.layout
    bufs = dict(x=dev.alloc(lay.matmul.act_bytes(2, 16)), s=dev.alloc(lay.matmul.scale_bytes(2, 16)),
                y=dev.alloc(lay.matmul.out_bytes(2, 2, 0)),
                w=[dev.alloc(lay.matmul.weight_port_bytes(2, 16, 4), f"w{i}") for i in range(2)])
    prog = ProgramBuilder(dev)
    prog.matmul(m=2, k=16, n=2, wbits=4, **bufs)
    fields = dict(prog.descriptors[0], **changes)
    prog.unchecked(**fields)
    return _program(dev, prog), len(prog)


def test_a_run_reports_descriptors_and_counters(golden_dev):
    prog, count = _matmul_program(golden_dev)
    status = golden_dev.run(prog, count)
    assert (status.count, status.descriptors_done) == (2, 2) and status.cycles > 0
    c = golden_dev.counters()
    assert {"cycles", "stall_cycles", "mac_ops", "bytes_read", "bytes_written", "ports"} <= set(c)
    assert c["mac_ops"] == 2 * 2 * 16 * 2
    assert set(c["ports"]) == {"data", "w0", "w1"}
    assert c["bytes_read"] == sum(p["bytes_read"] for p in c["ports"].values())
    assert not golden_dev.running


def test_a_bad_descriptor_raises_with_code_text_and_index(golden_dev):
    prog, count = _matmul_program(golden_dev, k=24)
    with pytest.raises(DeviceRunError, match=r"descriptor 1 failed: K out of range or not aligned "
                                             r"\(error code 3\); 1 of 2 descriptor\(s\) completed") as info:
        golden_dev.run(prog, count)
    assert (info.value.code, info.value.index, info.value.descriptors_done) == (ErrorCode.BAD_K, 1, 1)


def test_a_hung_kernel_times_out_naming_the_timeout_and_ctrl(tiny_layout):
    with GoldenDevice(tiny_layout, hang=True) as dev:
        prog, count = _matmul_program(dev)
        dev.start(prog, count)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeoutError, match=r"did not finish within 0.2 s; last CTRL=0x0 "
                                                     r"\(no bits set\), STATUS=0x0"):
            dev.wait(timeout=0.2)
        assert time.monotonic() - t0 < 2
        assert dev.running
        with pytest.raises(DeviceBusyError, match="still in flight"):
            dev.start(prog, count)


def test_start_and_wait_misuse_is_refused(golden_dev):
    prog, _ = _matmul_program(golden_dev)
    with pytest.raises(DeviceError, match="no run in flight"):
        golden_dev.wait()
    with pytest.raises(ValueError, match="count=3 descriptors need"):
        golden_dev.start(prog, 3)
    with pytest.raises(ValueError, match="must be in a 'data' port buffer"):
        golden_dev.start(golden_dev.alloc(4096, "w0"), 1)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        golden_dev.wait(timeout=0)
    with pytest.raises(ValueError, match=r"count must be in \[1, "):
        golden_dev.start(prog, 0)


def test_a_busy_kernel_is_not_started(golden_dev):
    prog, count = _matmul_program(golden_dev)
    golden_dev.kernel.finish_at = 1 << 40            # someone else's run in flight
    with pytest.raises(DeviceBusyError, match="not idle"):
        golden_dev.start(prog, count)


# -- lifetime --------------------------------------------------------------------------
def test_close_frees_buffers_and_refuses_further_use(tiny_layout):
    with GoldenDevice(tiny_layout) as dev:
        buf = dev.alloc(64)
    assert dev.closed and buf.freed
    for call in (lambda: dev.alloc(1), lambda: dev.read_reg("ID"), lambda: dev.counters()):
        with pytest.raises(DeviceClosedError, match="is closed"):
            call()
    dev.close()                                      # idempotent
