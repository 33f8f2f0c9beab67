"""The descriptor-level golden model: programs in memory against the matmul golden model."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.host.packing import (pack_activations, pack_bias, pack_requant, pack_scales, pack_weights,
                                   unpack_output)
from hbmforge.host.program import ProgramBuilder
from hbmforge.encodings import ErrorCode, OutMode
from hbmforge.layout import DesignLayout
from hbmforge.numerics import matmul_int8, matmul_int32
from hbmforge.numerics.program import ProgramResult, SparseMemory, execute

PROGRAM, X, S, Q, Y, B, P = 0x0, 0x10_000, 0x20_000, 0x30_000, 0x40_000, 0x50_000, 0x800_000
W = [0x100_000 * (i + 1) for i in range(4)]


def layout(**engine) -> DesignLayout:
    eng = {"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
           "weight_bits": [4, 8], "group_size": 16, "scale_bits": 16, "max_k": 256}
    eng.update(engine)
    return DesignLayout(parse_config({"version": 1, "name": "tiny", "board": "u280", "clock_mhz": 300,
                                      "axi": {"data_width": 64}, "engines": [eng]}))


class Case:
    """Random operands of one matmul placed in memory with the host packers."""

    def __init__(self, lay, m, k, n, wbits, mode=OutMode.INT32, out_shift=0, seed=0, mem=None, base=0,
                 bias=False, bias_shift=0):
        rng = np.random.default_rng(seed)
        g = lay.mm.group_size
        self.lay, self.m, self.k, self.n, self.wbits, self.mode = lay, m, k, n, wbits, mode
        self.x = rng.integers(-128, 128, (m, k))
        self.w = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (n, k))
        self.s = rng.integers(0, 1 << lay.mm.scale_bits, (n, k // g))
        self.mult = rng.integers(1, 1 << 20, n)
        self.shift = rng.integers(20, 40, n)
        self.out_shift = out_shift
        self.bias = rng.integers(-(1 << 31), 1 << 31, n) if bias else None
        self.bias_shift = bias_shift
        self.mem = SparseMemory() if mem is None else mem
        self.base = base
        self.store()

    def store(self):
        """Write the operands into memory (again, after a test changed them)."""
        lay, base = self.lay, self.base
        self.mem.write(base + X, pack_activations(self.x, lay).tobytes())
        self.mem.write(base + S, pack_scales(self.s, lay).tobytes())
        self.mem.write(base + Q, pack_requant(self.mult, self.shift, lay).tobytes())
        if self.bias is not None:
            self.mem.write(base + B, pack_bias(self.bias, lay).tobytes())
        for i, stripe in enumerate(pack_weights(self.w, self.wbits, lay)):
            self.mem.write(base + W[i], stripe.tobytes())

    def add_to(self, prog: ProgramBuilder):
        b = self.base
        prog.matmul(m=self.m, k=self.k, n=self.n, wbits=self.wbits, x=b + X, s=b + S, y=b + Y,
                    w=[b + W[i] for i in range(self.lay.mm.weight_ports)], out_mode=self.mode,
                    out_shift=self.out_shift, q=b + Q, bias=None if self.bias is None else b + B,
                    bias_shift=self.bias_shift, p=b + P if self.k > self.lay.matmul.k_slice else None)

    def expected(self):
        g = self.lay.mm.group_size
        bias = dict(bias=self.bias, bias_shift=self.bias_shift)
        if self.mode == OutMode.INT32:
            return matmul_int32(self.x, self.w, self.s, g, self.out_shift, **bias)
        return matmul_int8(self.x, self.w, self.s, g, self.mult, self.shift, **bias)

    def result(self):
        nbytes = self.lay.matmul.out_bytes(self.m, self.n, self.mode)
        return unpack_output(self.mem.read(self.base + Y, nbytes), self.m, self.n, self.mode, self.lay)


def run(lay, mem, prog: ProgramBuilder, count=None) -> ProgramResult:
    mem.write(PROGRAM, prog.to_bytes())
    return execute(mem, PROGRAM, len(prog) if count is None else count, lay)


@pytest.mark.parametrize("seed", range(6))
def test_random_matmuls_match_the_matmul_golden_model(seed):
    rng = np.random.default_rng(100 + seed)
    lay = layout(rows=int(rng.choice([1, 2, 4])), weight_ports=int(rng.choice([1, 2, 4])))
    m, n = int(rng.integers(1, 10)), int(rng.integers(1, 20))
    k = 16 * int(rng.integers(1, 17))
    for wbits in (4, 8):
        for mode in (OutMode.INT32, OutMode.INT8):
            case = Case(lay, m, k, n, wbits, mode, out_shift=int(rng.integers(0, 20)), seed=seed)
            prog = ProgramBuilder(lay)
            case.add_to(prog)
            res = run(lay, case.mem, prog)
            assert res.ok and res.descriptors_done == 1, res.detail
            assert np.array_equal(case.result(), case.expected())
            assert res.mac_ops == m * k * n
            # the weights are read once per chunk of rows the activation buffer holds
            chunks = lay.matmul.chunks(m, n, k, mode)
            assert chunks == -(-lay.matmul.row_blocks(m) // lay.matmul.chunk_blocks(m, n, k, mode))
            assert res.weight_bytes_read == [chunks * lay.matmul.weight_port_bytes(n, k, wbits)] * lay.mm.weight_ports


@pytest.mark.parametrize("mode", [OutMode.INT32, OutMode.INT8])
def test_bias_is_added_before_the_output_stage(mode):
    lay = layout(rows=2)
    shift = lay.matmul.widths.max_bias_shift
    for bias_shift in (0, shift):
        case = Case(lay, 5, 48, 7, 4, mode, out_shift=12, seed=3, bias=True, bias_shift=bias_shift)
        prog = ProgramBuilder(lay)
        case.add_to(prog)
        assert prog.descriptors[0]["bias"] == 1 and prog.descriptors[0]["bias_shift"] == bias_shift
        assert run(lay, case.mem, prog).ok
        assert np.array_equal(case.result(), case.expected())
        plain = Case(lay, 5, 48, 7, 4, mode, out_shift=12, seed=3)
        assert not np.array_equal(case.expected(), plain.expected())        # the bias matters


@pytest.mark.parametrize("rows, mode", [(2, OutMode.INT32), (3, OutMode.INT8)])
def test_k_above_one_pass_is_split_exactly_with_partials_in_the_scratch(rows, mode):
    lay = layout(rows=rows, tile_n=2)
    geom = lay.matmul
    k = 3 * geom.k_slice + 48                             # four slices, the last one 48 long
    m, n = 7, 5
    case = Case(lay, m, k, n, 8, mode, out_shift=20, seed=5, bias=True, bias_shift=4)
    case.s[:] = (1 << 16) - 1
    case.x[0, :] = -128
    case.w[0, :] = -128
    case.store()
    case.mem.write(P, b"\xA5" * geom.partial_bytes(m, n, k, mode))
    prog = ProgramBuilder(lay)
    case.add_to(prog)
    res = run(lay, case.mem, prog)
    assert res.ok, res.detail
    assert np.array_equal(case.result(), case.expected())
    # the scratch holds slices 0..2 and the bias, per chunk in fire order (tile, block, column, row)
    from hbmforge.numerics.matmul import add_bias, matmul_accumulate
    kp = 3 * geom.k_slice
    part = add_bias(matmul_accumulate(case.x[:, :kp], case.w[:, :kp], case.s[:, :kp // 16], 16), case.bias, 4)
    cb = geom.chunk_blocks(m, n, k, mode)
    stride = geom.partial_stride(m, n, k, mode)
    blocks = geom.row_blocks(m)
    for q in range(geom.chunks(m, n, k, mode)):
        raw = case.mem.read(P + q * stride, stride)
        got = [int.from_bytes(raw[8 * i:8 * i + 8], "little", signed=True) for i in range(stride // 8)]
        want = []
        for t0 in range(0, n, geom.tile_n):
            for b in range(q * cb, min(blocks, (q + 1) * cb)):
                for j in range(t0, min(n, t0 + geom.tile_n)):
                    want += [int(part[r, j]) if r < m else 0 for r in range(b * rows, (b + 1) * rows)]
        pad = geom.round_words(8 * len(want)) // 8
        assert got[:len(want)] == want and not any(got[len(want):pad])     # zero pad to a word, no further
    assert abs(int(part[0, 0])) >= 1 << 36                # far beyond int32: the scratch keeps it exact
    written = lay.matmul.out_bytes(m, n, mode) + 3 * sum(
        geom.round_words(min(cb, blocks - q * cb) * rows * n * 8) for q in range(geom.chunks(m, n, k, mode)))
    assert res.bytes_written[0] == written
    assert res.weight_bytes_read == [geom.chunks(m, n, k, mode) * geom.weight_port_bytes(n, k, 8)] * 2


def test_decodes_hand_packed_int4_weights():
    """Independent of the packers: bytes written by hand, one-hot activations pick single weights."""
    lay = layout()
    mem = SparseMemory()
    mem.write(W[0], bytes([0xE1, 0xC3, 0xA5, 0x87, 0x10, 0x32, 0x54, 0x76]))   # w[0, :16], stripe 0
    mem.write(W[1], bytes(8))
    mem.write(X, np.eye(16, dtype=np.int8).tobytes())                           # x = I (M=16)
    mem.write(S, (3).to_bytes(2, "little"))                                      # scale 3
    prog = ProgramBuilder(lay)
    prog.matmul(m=16, k=16, n=1, wbits=4, x=X, s=S, y=Y, w=W[:2])
    assert run(lay, mem, prog).ok
    y = unpack_output(mem.read(Y, lay.matmul.out_bytes(16, 1, OutMode.INT32)), 16, 1, OutMode.INT32, lay)
    assert list(y[:, 0]) == [3 * v for v in [1, -2, 3, -4, 5, -6, 7, -8, 0, 1, 2, 3, 4, 5, 6, 7]]


def test_writes_blocked_output_with_zero_pad_rows():
    lay = layout(rows=4)
    case = Case(lay, 3, 16, 2, 8)
    case.mem.write(Y, b"\xAA" * 64)                                             # garbage to be overwritten
    prog = ProgramBuilder(lay)
    case.add_to(prog)
    assert run(lay, case.mem, prog).ok
    raw = np.frombuffer(case.mem.read(Y, 32), dtype="<i4")
    y = case.expected()
    assert list(raw) == [y[0, 0], y[1, 0], y[2, 0], 0, y[0, 1], y[1, 1], y[2, 1], 0]
    assert case.mem.read(Y + 32, 32) == b"\xAA" * 32                             # nothing past out_bytes


def test_a_program_runs_every_descriptor_and_end_stops_it():
    lay = layout()
    mem = SparseMemory()
    a = Case(lay, 3, 32, 5, 4, mem=mem, base=0x1000_0000, seed=1)
    b = Case(lay, 2, 64, 3, 8, OutMode.INT8, mem=mem, base=0x2000_0000, seed=2)
    prog = ProgramBuilder(lay)
    a.add_to(prog)
    b.add_to(prog)
    prog.end()
    a.add_to(prog)
    res = run(lay, mem, prog)
    assert res.ok and res.descriptors_done == 2
    assert np.array_equal(a.result(), a.expected()) and np.array_equal(b.result(), b.expected())
    assert run(lay, mem, prog, count=1).descriptors_done == 1


def _bad(lay, **changes):
    """A valid descriptor with some fields overwritten."""
    prog = ProgramBuilder(lay)
    Case(lay, 2, 16, 2, 4).add_to(prog)
    fields = prog.descriptors[0]
    fields.update(changes)
    bad = ProgramBuilder(lay)
    bad.unchecked(**fields)
    return bad


@pytest.mark.parametrize("changes, code", [
    ({"op": 9}, ErrorCode.BAD_OPCODE),
    ({"wbits": 2}, ErrorCode.BAD_WBITS),
    ({"k": 0}, ErrorCode.BAD_K),
    ({"k": 24}, ErrorCode.BAD_K),
    ({"k": 4096 + 16}, ErrorCode.BAD_K),
    ({"bias": 2}, ErrorCode.BAD_BIAS),
    ({"bias": 1, "b_addr": B, "bias_shift": 64}, ErrorCode.BAD_BIAS),
    ({"bias": 1, "b_addr": B + 4}, ErrorCode.MISALIGNED),
    ({"k": 512, "p_addr": P + 8 + 4}, ErrorCode.MISALIGNED),
    ({"m": 0}, ErrorCode.BAD_SHAPE),
    ({"n": 0}, ErrorCode.BAD_SHAPE),
    ({"m": 1 << 32}, ErrorCode.BAD_SHAPE),
    ({"out_mode": 2}, ErrorCode.BAD_OUT_MODE),
    ({"out_shift": 64}, ErrorCode.BAD_OUT_MODE),
    ({"x_addr": X + 4}, ErrorCode.MISALIGNED),
    ({"w_addr1": W[1] + 1}, ErrorCode.MISALIGNED),
    ({"out_mode": 1, "q_addr": Q + 2}, ErrorCode.MISALIGNED),
])
def test_bad_descriptors_stop_with_the_hardware_error_code(changes, code):
    lay = layout()
    case = Case(lay, 2, 16, 2, 4)
    good = ProgramBuilder(lay)
    case.add_to(good)
    prog = ProgramBuilder(lay)
    case.add_to(prog)
    prog.unchecked(**_bad(lay, **changes).descriptors[0])
    res = run(lay, case.mem, prog)
    assert (res.error, res.error_index, res.descriptors_done) == (code, 1, 1), res.detail
    assert res.status == 1 | code << 8 | 1 << 16


def test_unused_addresses_are_not_checked():
    lay = layout()
    case = Case(lay, 2, 16, 2, 4)
    assert run(lay, case.mem, _bad(lay, b_addr=3, bias_shift=99, p_addr=5)).ok     # no bias, one slice


def test_int32_mode_ignores_q_addr_alignment_and_int8_mode_ignores_out_shift():
    lay = layout()
    case = Case(lay, 2, 16, 2, 4)
    prog = _bad(lay, q_addr=3)
    assert run(lay, case.mem, prog).ok
    case8 = Case(lay, 2, 16, 2, 4, OutMode.INT8)
    prog = _bad(lay, out_mode=1, q_addr=Q, out_shift=200)
    assert run(lay, case8.mem, prog).ok


def test_checks_opcode_first_when_everything_is_wrong():
    lay = layout()
    prog = ProgramBuilder(lay)
    prog.unchecked(op=3, wbits=3, k=5, m=0, out_mode=9, x_addr=1)
    assert run(lay, SparseMemory(), prog).error == ErrorCode.BAD_OPCODE
    prog = ProgramBuilder(lay)
    prog.unchecked(op=1, wbits=3, k=5, m=0, out_mode=9, x_addr=1)
    assert run(lay, SparseMemory(), prog).error == ErrorCode.BAD_WBITS


def test_a_misaligned_program_fails_descriptor_zero():
    res = execute({}, PROGRAM + 4, 1, layout())
    assert (res.error, res.error_index, res.status) == (ErrorCode.MISALIGNED, 0, 1 | ErrorCode.MISALIGNED << 8)
    assert execute({}, PROGRAM + 4, 0, layout()).ok


def test_zero_memory_is_an_end_descriptor():
    res = execute({}, PROGRAM, 5, layout())
    assert res.ok and res.descriptors_done == 0


def test_flat_memory_out_of_range_is_an_axi_error():
    lay = layout()
    mem = bytearray(0x50_000)                     # holds X, S, Q, Y but not the weights
    case = Case(lay, 2, 16, 2, 4, mem=SparseMemory())
    prog = ProgramBuilder(lay)
    case.add_to(prog)
    mem[PROGRAM:PROGRAM + prog.nbytes] = prog.to_bytes()
    res = execute(mem, PROGRAM, 1, lay)
    assert (res.error, res.error_index) == (ErrorCode.AXI_RESP, 0)
    assert "outside" in res.detail
    assert execute(bytearray(16), PROGRAM, 1, lay).error == ErrorCode.AXI_RESP   # descriptor fetch


def test_flat_and_paged_memories_give_the_same_result():
    lay = layout()
    sparse = Case(lay, 3, 48, 4, 8, seed=9)
    prog = ProgramBuilder(lay)
    sparse.add_to(prog)
    flat = np.zeros(0x400_000, dtype=np.uint8)
    pages: dict = {}
    for target in (flat, pages):
        for page, data in sparse.mem.pages.items():
            if isinstance(target, dict):
                target[page] = bytearray(data)
            else:
                target[page * 4096:(page + 1) * 4096] = np.frombuffer(data, np.uint8)
    run(lay, sparse.mem, prog)
    for target in (flat, pages):
        if isinstance(target, dict):
            SparseMemory(target).write(PROGRAM, prog.to_bytes())
        else:
            target[:prog.nbytes] = np.frombuffer(prog.to_bytes(), np.uint8)
        assert execute(target, PROGRAM, 1, lay).ok
    nbytes = lay.matmul.out_bytes(3, 4, OutMode.INT32)
    assert bytes(flat[Y:Y + nbytes]) == SparseMemory(pages).read(Y, nbytes) == sparse.mem.read(Y, nbytes)


def test_memory_of_an_unknown_kind_is_refused():
    with pytest.raises(TypeError, match="dict of pages"):
        execute([0] * 10, 0, 1, layout())
