"""The COPY/FILL golden model (hbmforge.numerics.copy), its shared checks and COPY in whole programs.

Expected memories here are built with plain slicing and an explicit byte formula, never
with ``run_copy`` itself, so the golden model is tested against something independent.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import CopyMode, ErrorCode, Opcode, OutMode
from hbmforge.engines import FAMILIES, first_error
from hbmforge.engines.copy import COPY_FIELDS, copy_checks, max_copy_bytes
from hbmforge.generators.matmul.testing import (pack_activations, pack_requant, pack_scales,
                                                pack_weights, unpack_outputs)
from hbmforge.layout import DesignLayout
from hbmforge.numerics.copy import fill_pattern, run_copy
from hbmforge.numerics.matmul import matmul_int8, matmul_int32
from hbmforge.numerics.program import ProgramResult, SparseMemory, execute

from designs import tiny_config_dict

PROGRAM = 0x0


def copy_layout(*, data_width: int = 64, weight_ports: int = 2) -> DesignLayout:
    cfg = tiny_config_dict(weight_ports=weight_ports)
    cfg["axi"]["data_width"] = data_width
    cfg["engines"].append({"kind": "copy", "buffer_words": 8})
    return DesignLayout(parse_config(cfg))


@pytest.fixture(scope="module")
def lay() -> DesignLayout:
    return copy_layout()


def desc(mode=CopyMode.COPY, src_port=0, src_addr=0x1000, dst_port=1, dst_addr=0x2000, nbytes=64,
         value=0) -> dict:
    """A COPY descriptor (``nbytes``: its ``bytes`` slot)."""
    return {"op": Opcode.COPY, "mode": mode, "src_port": src_port, "src_addr": src_addr,
            "dst_port": dst_port, "dst_addr": dst_addr, "bytes": nbytes, "value": value}


def pattern_byte(value: int, i: int) -> int:
    """Byte ``i`` of a FILL: byte ``i mod 8`` of the 64-bit value, least significant first."""
    return (value >> (8 * (i % 8))) & 0xFF


class ListMemory:
    """A flat memory for run_copy that records every access (and checks nothing)."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        self.reads, self.writes = [], []

    def read(self, addr, n):
        self.reads.append((addr, n))
        return bytes(self.data[addr:addr + n])

    def write(self, addr, data):
        self.writes.append((addr, len(data)))
        self.data[addr:addr + len(data)] = data


# -- golden model of one descriptor ---------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 0x0123_4567_89AB_CDEF, (1 << 64) - 1, 1 << 63])
def test_fill_pattern_repeats_the_value_little_endian_every_eight_bytes(value):
    for n in (0, 1, 7, 8, 9, 16, 61, 64):
        got = fill_pattern(value, n)
        assert len(got) == n
        assert list(got) == [pattern_byte(value, i) for i in range(n)]


def test_fill_pattern_keeps_only_the_low_64_bits():
    assert fill_pattern((0xAB << 64) | 0x11, 16) == fill_pattern(0x11, 16)


def test_run_copy_moves_exactly_the_source_bytes_to_the_destination():
    rng = random.Random(1)
    before = rng.randbytes(4096)
    mem = ListMemory(before)
    run_copy(mem, desc(src_addr=0x100, dst_addr=0x800, nbytes=0x240))
    want = bytearray(before)
    want[0x800:0xA40] = before[0x100:0x340]
    assert mem.data == want
    assert mem.reads == [(0x100, 0x240)] and mem.writes == [(0x800, 0x240)]


def test_run_copy_fill_writes_the_pattern_and_reads_nothing():
    before = random.Random(2).randbytes(4096)
    mem = ListMemory(before)
    value = 0xF0E1_D2C3_B4A5_9687
    run_copy(mem, desc(mode=CopyMode.FILL, src_addr=0x3000, dst_addr=0x108, nbytes=0x58, value=value))
    want = bytearray(before)
    want[0x108:0x160] = bytes(pattern_byte(value, i) for i in range(0x58))
    assert mem.data == want
    assert mem.reads == []


# -- the shared checks --------------------------------------------------------------------

def test_the_check_order_is_the_familys_error_order(lay):
    fam = FAMILIES["copy"]
    assert [c.code for c in copy_checks(lay)] == list(fam.errors) == [
        ErrorCode.BAD_COPY_MODE, ErrorCode.BAD_PORT, ErrorCode.BAD_LENGTH, ErrorCode.MISALIGNED,
        ErrorCode.OVERLAP]
    assert lay.fields_for(Opcode.COPY) == ("op",) + COPY_FIELDS
    assert fam.channels(lay).stream_writers == len(lay.ports) - 1


def _cases(lay):
    """(descriptor overrides, expected code): each rule, its edges, and which rule wins."""
    wb = lay.word_bytes
    ports = len(lay.ports)
    top = max_copy_bytes(wb)
    fill = CopyMode.FILL
    return [
        ({}, ErrorCode.NONE),
        ({"mode": fill}, ErrorCode.NONE),
        # mode
        ({"mode": 2}, ErrorCode.BAD_COPY_MODE),
        ({"mode": 1 << 63}, ErrorCode.BAD_COPY_MODE),
        ({"mode": 2, "dst_port": ports, "nbytes": 0, "dst_addr": 3}, ErrorCode.BAD_COPY_MODE),
        # ports: destination always, source only for COPY
        ({"dst_port": ports}, ErrorCode.BAD_PORT),
        ({"dst_port": ports, "mode": fill}, ErrorCode.BAD_PORT),
        ({"src_port": ports}, ErrorCode.BAD_PORT),
        ({"src_port": 1 << 40}, ErrorCode.BAD_PORT),
        ({"src_port": ports, "mode": fill}, ErrorCode.NONE),
        ({"src_port": ports - 1, "dst_port": ports - 1}, ErrorCode.NONE),
        ({"dst_port": ports, "nbytes": 0, "src_addr": 0x2000}, ErrorCode.BAD_PORT),
        # length: zero, not whole words, more than one DMA command
        ({"nbytes": 0}, ErrorCode.BAD_LENGTH),
        ({"nbytes": 0, "mode": fill}, ErrorCode.BAD_LENGTH),
        ({"nbytes": wb - 1}, ErrorCode.BAD_LENGTH),
        ({"nbytes": 3 * wb + 4}, ErrorCode.BAD_LENGTH),
        ({"nbytes": top + wb}, ErrorCode.BAD_LENGTH),
        ({"nbytes": 1 << 32}, ErrorCode.BAD_LENGTH),
        ({"nbytes": top, "src_addr": 1 << 40}, ErrorCode.NONE),
        ({"nbytes": wb}, ErrorCode.NONE),
        ({"nbytes": 0, "dst_addr": 0x2001}, ErrorCode.BAD_LENGTH),
        # alignment: destination always, source only for COPY
        ({"dst_addr": 0x2004}, ErrorCode.MISALIGNED),
        ({"dst_addr": 0x2001, "mode": fill}, ErrorCode.MISALIGNED),
        ({"src_addr": 0x1000 + wb // 2}, ErrorCode.MISALIGNED),
        ({"src_addr": 0x1003, "mode": fill}, ErrorCode.NONE),
        ({"src_addr": 0x2004, "dst_addr": 0x2000}, ErrorCode.MISALIGNED),      # overlapping too
        # overlap: same memory whatever the ports; touching ranges are fine
        ({"src_addr": 0x2000}, ErrorCode.OVERLAP),
        ({"src_addr": 0x2000 - 64 + wb}, ErrorCode.OVERLAP),                  # last word of src = first of dst
        ({"src_addr": 0x2000 + 64 - wb}, ErrorCode.OVERLAP),                  # first word of src = last of dst
        ({"src_addr": 0x2000 - 64}, ErrorCode.NONE),                          # src ends where dst begins
        ({"src_addr": 0x2000 + 64}, ErrorCode.NONE),                          # src begins where dst ends
        ({"src_addr": 0x2000 - 8 * wb, "dst_port": 0, "nbytes": 16 * wb}, ErrorCode.OVERLAP),
        ({"src_port": 2, "dst_port": 1, "src_addr": 0x2000 + wb}, ErrorCode.OVERLAP),   # different ports
        ({"src_addr": 0x2000, "mode": fill}, ErrorCode.NONE),                 # FILL reads nothing
        ({"src_addr": 0x2000 + 64 - wb, "nbytes": 0}, ErrorCode.BAD_LENGTH),
    ]


def test_every_rule_and_its_edges_in_rule_order(lay):
    for over, code in _cases(lay):
        d = desc(**over)
        got, why = lay.validate_descriptor(d)
        assert got == code, f"{over}: got {got.name} ({why}), want {code.name}"
        assert (why == "") == (code == ErrorCode.NONE)
        assert first_error(copy_checks(lay), d) == (got, why)


def test_failure_messages_name_the_field(lay):
    wb = lay.word_bytes
    cases = [({"mode": 5}, "mode 5"), ({"dst_port": 9}, "dst_port 9"), ({"src_port": 9}, "src_port 9"),
             ({"bytes": 12}, "bytes 12"), ({"dst_addr": 0x2001}, "dst_addr 0x2001"),
             ({"src_addr": 0x1001}, "src_addr 0x1001"), ({"src_addr": 0x2000}, "overlap")]
    for over, text in cases:
        d = {**desc(nbytes=8 * wb), **over}
        code, why = lay.validate_descriptor(d)
        assert code != ErrorCode.NONE and text in why, (over, code, why)
    why = lay.validate_descriptor({**desc(dst_port=9), "bytes": wb})[1]
    assert all(name in why for name in lay.port_names), why


def test_checks_follow_the_port_word_and_the_port_count():
    wide = copy_layout(data_width=256, weight_ports=4)          # 32-byte words, ports data, w0..w3
    d = desc(src_port=4, dst_port=3, src_addr=0x1000, dst_addr=0x2000, nbytes=64)
    assert wide.validate_descriptor(d)[0] == ErrorCode.NONE
    assert wide.validate_descriptor({**d, "src_port": 5})[0] == ErrorCode.BAD_PORT
    assert wide.validate_descriptor({**d, "bytes": 48})[0] == ErrorCode.BAD_LENGTH
    assert wide.validate_descriptor({**d, "dst_addr": 0x2010})[0] == ErrorCode.MISALIGNED
    assert max_copy_bytes(32) == (1 << 32) - 32
    assert wide.validate_descriptor({**d, "bytes": (1 << 32) - 32, "src_addr": 1 << 33})[0] == ErrorCode.NONE


# -- whole programs ---------------------------------------------------------------------

class MatmulOperands:
    """Random int4 matmul operands packed at ``base`` (x, s, q, y, w0, w1 in 4 KiB slots)."""

    def __init__(self, lay, mem, base, *, m, k, n, wbits=4, mode=OutMode.INT32, seed=0):
        rng = np.random.default_rng(seed)
        g, wb = lay.mm.group_size, lay.word_bytes
        self.lay, self.m, self.k, self.n, self.wbits, self.mode = lay, m, k, n, wbits, mode
        self.x = rng.integers(-128, 128, (m, k))
        self.w = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (n, k))
        self.s = rng.integers(0, 1 << 12, (n, k // g))
        self.mult = rng.integers(1, 1 << 20, n)
        self.shift = rng.integers(20, 30, n)
        self.addr = {name: base + i * 0x1000 for i, name in enumerate(["x", "s", "q", "y", "w0", "w1"])}
        mem.write(self.addr["x"], pack_activations(self.x, wb))
        mem.write(self.addr["s"], pack_scales(self.s, wb))
        mem.write(self.addr["q"], pack_requant(self.mult, self.shift, wb))
        for p, stripe in enumerate(pack_weights(self.w, wbits, lay.mm.weight_ports, lay.config.data_width)):
            mem.write(self.addr[f"w{p}"], stripe)

    def descriptor(self, **over):
        a = self.addr
        d = {"op": Opcode.MATMUL, "m": self.m, "k": self.k, "n": self.n, "wbits": self.wbits,
             "out_mode": self.mode, "out_shift": 4, "x_addr": a["x"], "s_addr": a["s"], "q_addr": a["q"],
             "y_addr": a["y"], **{f"w_addr{p}": a[f"w{p}"] for p in range(self.lay.mm.weight_ports)}}
        d.update(over)
        return d

    def expected(self, w=None):
        w = self.w if w is None else w
        g = self.lay.mm.group_size
        if self.mode == OutMode.INT32:
            return matmul_int32(self.x, w, self.s, g, 4)
        return matmul_int8(self.x, w, self.s, g, self.mult, self.shift)

    def result(self, mem):
        nbytes = self.lay.matmul.out_bytes(self.m, self.n, self.mode)
        return unpack_outputs(mem.read(self.addr["y"], nbytes), self.m, self.n, self.lay.mm.rows, self.mode)

    @property
    def out_bytes(self):
        return self.lay.matmul.out_bytes(self.m, self.n, self.mode)

    def weight_port_bytes(self):
        """Weights are streamed once per chunk of row blocks that share one pass over W."""
        geom = self.lay.matmul
        chunks = geom.chunks(self.m, self.n, self.k, self.mode)
        return chunks * geom.weight_port_bytes(self.n, self.k, self.wbits)


def write_program(lay, mem, descs, addr=PROGRAM):
    mem.write(addr, b"".join(lay.encode_descriptor(d) for d in descs))


def copy_d(src_port, src_addr, dst_port, dst_addr, nbytes):
    return {"op": Opcode.COPY, "mode": CopyMode.COPY, "src_port": src_port, "src_addr": src_addr,
            "dst_port": dst_port, "dst_addr": dst_addr, "bytes": nbytes}


def fill_d(dst_port, dst_addr, nbytes, value):
    return {"op": Opcode.COPY, "mode": CopyMode.FILL,
            "dst_port": dst_port, "dst_addr": dst_addr, "bytes": nbytes, "value": value}


def test_program_mixing_matmul_copy_fill_and_end(lay):
    """Weights are copied into place by the program itself before the matmul that uses them."""
    mem = SparseMemory()
    wb = lay.word_bytes
    a = MatmulOperands(lay, mem, 0x10_0000, m=3, k=32, n=4, seed=1)
    b = MatmulOperands(lay, mem, 0x20_0000, m=2, k=64, n=3, wbits=8, mode=OutMode.INT8, seed=2)
    staged = {p: 0x30_0000 + p * 0x1000 for p in range(2)}       # a's weights, moved by COPY first
    wbytes = lay.matmul.weight_port_bytes(a.n, a.k, a.wbits)
    rng = random.Random(3)
    blob = rng.randbytes(40 * wb)
    mem.write(0x40_0000, blob)
    value = 0x0807_0605_0403_0201
    descs = [
        copy_d(1, a.addr["w0"], 2, staged[0], wbytes),                # w0 -> w1
        copy_d(2, a.addr["w1"], 1, staged[1], wbytes),                # w1 -> w0
        a.descriptor(w_addr0=staged[0], w_addr1=staged[1]),
        copy_d(0, a.addr["y"], 2, 0x50_0000, a.out_bytes),            # data -> w1: a's output
        fill_d(1, 0x60_0000, 24 * wb, value),
        b.descriptor(),
        copy_d(0, 0x40_0000, 0, 0x40_0000 + 40 * wb, 40 * wb),        # touching, same port
        {"op": Opcode.END},
        fill_d(0, 0x40_0000, 8 * wb, 0),                              # after END: never runs
    ]
    write_program(lay, mem, descs)
    before = {0x40_0000: mem.read(0x40_0000, 80 * wb)}
    res = execute(mem, PROGRAM, len(descs), lay)
    assert res.ok and res.status == 0 and res.descriptors_done == 7, res.detail
    np.testing.assert_array_equal(a.result(mem), a.expected())
    np.testing.assert_array_equal(b.result(mem), b.expected())
    assert mem.read(0x50_0000, a.out_bytes) == mem.read(a.addr["y"], a.out_bytes)
    assert mem.read(0x60_0000, 24 * wb) == bytes(pattern_byte(value, i) for i in range(24 * wb))
    assert mem.read(0x40_0000, 80 * wb) == blob + blob == before[0x40_0000][:40 * wb] * 2
    # per-port traffic: matmul Y and the copies' destinations written; stream-port reads
    assert res.bytes_written == [a.out_bytes + b.out_bytes + 40 * wb, wbytes + 24 * wb, wbytes + a.out_bytes]
    assert res.output_bytes_written == res.bytes_written[0]
    assert res.weight_bytes_read == [wbytes + a.weight_port_bytes() + b.weight_port_bytes(),
                                     wbytes + a.weight_port_bytes() + b.weight_port_bytes()]
    assert res.mac_ops == a.m * a.k * a.n + b.m * b.k * b.n


def test_a_bad_copy_stops_the_program_at_its_index(lay):
    wb = lay.word_bytes
    for i, (over, code) in enumerate(_cases(lay)):
        if code == ErrorCode.NONE:
            continue
        mem = SparseMemory()
        mem.write(0x1000, random.Random(i).randbytes(64))
        bad = desc(**over)
        descs = [fill_d(2, 0x9000, 2 * wb, 0x77), bad, fill_d(0, 0xA000, wb, 0x55)]
        write_program(lay, mem, descs)
        res = execute(mem, PROGRAM, 3, lay)
        assert (res.error, res.error_index, res.descriptors_done) == (code, 1, 1), (over, res)
        assert res.status == 1 | int(code) << 8 | 1 << 16
        assert res.bytes_written == [0, 0, 2 * wb]
        assert mem.read(0x9000, 2 * wb) == fill_pattern(0x77, 2 * wb)
        assert mem.read(0xA000, wb) == bytes(wb)                              # never ran
        assert mem.read(0x2000, 64) == bytes(64)                              # the bad one wrote nothing


@pytest.mark.parametrize("what", ["dst_past_end", "src_past_end", "fill_past_end", "dst_straddles_end"])
def test_out_of_range_memory_gives_axi_resp_and_leaves_memory_unchanged(lay, what):
    wb = lay.word_bytes
    size = 0x4000
    mem = bytearray(random.Random(4).randbytes(size))
    prog = 0x3000
    cases = {
        "dst_past_end": copy_d(0, 0x100, 1, size, 4 * wb),
        "src_past_end": copy_d(2, size + 0x100, 0, 0x200, 4 * wb),
        "fill_past_end": {**fill_d(1, size + 0x1_0000, wb, 3)},
        "dst_straddles_end": copy_d(0, 0x100, 0, size - 2 * wb, 4 * wb),
    }
    descs = [fill_d(1, 0x800, wb, 0xAB), cases[what]]
    raw = b"".join(lay.encode_descriptor(d) for d in descs)
    mem[prog:prog + len(raw)] = raw
    before = bytes(mem)
    res = execute(mem, prog, 2, lay)
    assert (res.error, res.error_index, res.descriptors_done) == (ErrorCode.AXI_RESP, 1, 1), res
    want = bytearray(before)
    want[0x800:0x800 + wb] = bytes([0xAB]) + bytes(wb - 1)
    assert bytes(mem) == bytes(want)
    assert res.bytes_written == [0, wb, 0]


def test_fill_ignores_its_source_range_and_a_copy_to_the_top_of_the_address_space_is_an_axi_error(lay):
    wb = lay.word_bytes
    mem = SparseMemory()
    top = (1 << 64) - 2 * wb
    descs = [{**fill_d(2, 0x100, wb, 9), "src_addr": (1 << 64) - 8, "src_port": 7},
             copy_d(0, 0x100, 1, top, 4 * wb)]
    write_program(lay, mem, descs)
    res = execute(mem, PROGRAM, 2, lay)
    assert (res.error, res.error_index, res.descriptors_done) == (ErrorCode.AXI_RESP, 1, 1), res
    assert mem.read(0x100, wb) == fill_pattern(9, wb)
    assert mem.read(top, 2 * wb) == bytes(2 * wb)


def test_program_result_status_encodes_code_and_index():
    r = ProgramResult(error=ErrorCode.OVERLAP, error_index=0x1_0003)
    assert r.status == 1 | 16 << 8 | 3 << 16 and not r.ok
    assert ProgramResult().status == 0 and ProgramResult().ok
