"""COPY/FILL from the host: ProgramBuilder.copy/fill descriptors checked with the layout's shared
rules, and copy_buffer/fill_buffer running them on the golden device (the engine's golden model)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbmforge.encodings import CopyMode, Opcode
from hbmforge.host import BufferStateError, ProgramBuilder, copy_buffer, fill_buffer
from hbmforge.host.program import decode_program

from golden_kernel import GoldenDevice, tiny_copy_layout


def test_copy_and_fill_descriptors_carry_port_indexes_and_addresses(copy_dev):
    lay = copy_dev.layout
    a, b = copy_dev.alloc(256), copy_dev.alloc(256, "w1")
    prog = ProgramBuilder(copy_dev)
    prog.copy(a, b)
    prog.fill(("w0", 0x4000), -1, nbytes=64)
    prog.end()
    d0, d1, d2 = decode_program(prog.to_bytes(), lay)
    assert (d0["op"], d0["mode"], d0["src_port"], d0["dst_port"], d0["bytes"]) == \
        (Opcode.COPY, CopyMode.COPY, 0, lay.port("w1").index, 256)
    assert (d0["src_addr"], d0["dst_addr"]) == (a.address, b.address)
    assert (d1["mode"], d1["dst_port"], d1["dst_addr"], d1["value"]) == (CopyMode.FILL, 1, 0x4000, (1 << 64) - 1)
    assert d2["op"] == Opcode.END


def test_copy_buffer_and_fill_buffer_move_bytes_with_one_run(copy_dev):
    rng = np.random.default_rng(0)
    src = copy_dev.alloc(512)
    dst = copy_dev.alloc(512, "w0")
    data = rng.integers(0, 256, 512, dtype=np.uint8)
    copy_dev.write(src, data)
    before = len(copy_dev.live_buffers())
    status = copy_buffer(copy_dev, dst, src)
    assert status.descriptors_done == 1 and copy_dev.read(dst) == data.tobytes()
    assert len(copy_dev.live_buffers()) == before                 # the program buffer was freed
    assert copy_dev.counters()["ports"]["w0"]["bytes_written"] == 512
    fill_buffer(copy_dev, dst, 0x0102030405060708, nbytes=64)
    assert copy_dev.read(dst, 64) == bytes(range(8, 0, -1)) * 8
    assert copy_dev.read(dst, 448, offset=64) == data.tobytes()[64:]
    copy_buffer(copy_dev, ("data", src.address + 256), ("w0", dst.address), nbytes=128)
    assert copy_dev.read(src, 128, offset=256) == bytes(range(8, 0, -1)) * 8 + data.tobytes()[64:128]


@pytest.mark.parametrize("call, error, match", [
    (lambda d, a, b: copy_buffer(d, b, a, nbytes=12), ValueError, "bytes 12, must be a multiple of 8"),
    (lambda d, a, b: copy_buffer(d, b, a, nbytes=1024), ValueError, "buffer too small"),
    (lambda d, a, b: copy_buffer(d, a, a), ValueError, "overlap"),
    (lambda d, a, b: copy_buffer(d, ("w1", b.address + 4), a, nbytes=64), ValueError, "dst_addr .* not a multiple"),
    (lambda d, a, b: copy_buffer(d, ("w9", 0), a), ValueError, "no port 'w9'"),
    (lambda d, a, b: copy_buffer(d, (7, 0), a), ValueError, r"dst port must be in \[0, 2\]"),
    (lambda d, a, b: copy_buffer(d, b, ("data", 0)), ValueError, "nbytes is required"),
    (lambda d, a, b: copy_buffer(d, b, "data"), TypeError, r"src must be a Buffer or a \(port, address\) pair"),
    (lambda d, a, b: copy_buffer(d, b, ("data", 0, 1)), TypeError, "src must be a Buffer"),
    (lambda d, a, b: copy_buffer(d, b, a, timeout=0), ValueError, "timeout"),
    (lambda d, a, b: fill_buffer(d, b, 1.5), TypeError, "value must be an integer"),
    (lambda d, a, b: fill_buffer(d, b, 1 << 64), ValueError, "value must be in"),
    (lambda d, a, b: fill_buffer("dev", b, 0), TypeError, "device must be an open hbmforge Device"),
])
def test_bad_copies_are_refused_before_anything_is_allocated(copy_dev, call, error, match):
    a, b = copy_dev.alloc(256), copy_dev.alloc(256, "w1")
    before = copy_dev.live_buffers()
    with pytest.raises(error, match=match):
        call(copy_dev, a, b)
    assert copy_dev.live_buffers() == before and not copy_dev.running and copy_dev.kernel.runs == 0


def test_designs_without_a_copy_engine_refuse_copies(golden_dev):
    a, b = golden_dev.alloc(64), golden_dev.alloc(64)
    with pytest.raises(ValueError, match="no COPY opcode: add a copy engine"):
        copy_buffer(golden_dev, b, a)
    with pytest.raises(ValueError, match="no COPY opcode"):
        ProgramBuilder(golden_dev).fill(a, 0)


def test_freed_and_foreign_buffers_are_refused(copy_dev):
    a, b = copy_dev.alloc(64), copy_dev.alloc(64)
    copy_dev.free(a)
    with pytest.raises(BufferStateError, match="src: .* was freed"):
        copy_buffer(copy_dev, b, a)
    with GoldenDevice(tiny_copy_layout()) as other:
        with pytest.raises(BufferStateError, match="belongs to another device"):
            copy_buffer(copy_dev, other.alloc(64), b)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src_word=st.integers(0, 63), dst_word=st.integers(0, 63), words=st.integers(1, 64),
       dst_port=st.sampled_from(["data", "w0", "w1"]), fill=st.one_of(st.none(), st.integers(-2**63, 2**64 - 1)))
def test_copies_and_fills_match_numpy(copy_dev, src_word, dst_word, words, dst_port, fill):
    rng = np.random.default_rng(words)
    src, dst = copy_dev.alloc(1024), copy_dev.alloc(1024, dst_port)
    data, old = rng.integers(0, 256, 1024, dtype=np.uint8), rng.integers(0, 256, 1024, dtype=np.uint8)
    copy_dev.write(src, data)
    copy_dev.write(dst, old)
    want = old.copy()
    s, d, n = 8 * src_word, 8 * dst_word, 8 * words
    try:
        if fill is None:
            copy_buffer(copy_dev, (dst_port, dst.address + d), ("data", src.address + s), nbytes=n)
            want[d:d + n] = data[s:s + n]
        else:
            fill_buffer(copy_dev, (dst_port, dst.address + d), fill, nbytes=n)
            want[d:d + n] = np.frombuffer((fill & (2**64 - 1)).to_bytes(8, "little") * words, np.uint8)
    except ValueError as err:
        assert d + n > 1024 or s + n > 1024, err            # never: the ranges fit
    assert copy_dev.read(dst) == want.tobytes() and copy_dev.read(src) == data.tobytes()
    copy_dev.free(src)
    copy_dev.free(dst)


# -- the COPY/FILL engine's RTL on the Verilator co-simulation ----------------------------------
@pytest.fixture(scope="module")
def sim_copy_dev(tmp_path_factory):
    from hbmforge.host import open_device

    with open_device(tiny_copy_layout().config, build_dir=tmp_path_factory.mktemp("tiny_copy"),
                     progress=False) as dev:
        yield dev


@pytest.mark.rtl
def test_copy_and_fill_run_on_the_cosimulation(sim_copy_dev):
    dev = sim_copy_dev
    rng = np.random.default_rng(7)
    for src_port, dst_port, nbytes in (("data", "w0", 4096), ("w1", "data", 200 * 8), ("w0", "w1", 8)):
        src, dst = dev.alloc(nbytes, src_port), dev.alloc(nbytes + 64, dst_port)
        data = rng.integers(0, 256, nbytes, dtype=np.uint8)
        dev.write(src, data)
        dev.write(dst, bytes(nbytes + 64))
        status = copy_buffer(dev, dst, src)
        assert status.descriptors_done == 1 and status.cycles > 0
        assert dev.read(dst) == data.tobytes() + bytes(64)
        fill_buffer(dev, dst, 0x5A5A_0102_0304_0506, nbytes=64)
        assert dev.read(dst, 64) == bytes([6, 5, 4, 3, 2, 1, 0x5A, 0x5A]) * 8
        assert dev.counters()["ports"][dst_port]["bytes_written"] == 64
    with pytest.raises(ValueError, match="overlap"):
        copy_buffer(dev, src, src)
    assert not dev.running
