"""cocotb tests of the VECTOR engine in a whole kernel (matmul, attention and vector engines).

Runs with :mod:`hbmforge.flows.tb_kernel` (same bench: cocotbext-axi RAM models with random
back-pressure and latency on every port, the AXI rule monitor). Every write also goes to a Python
mirror on which :func:`hbmforge.numerics.program.execute` runs the same program; every byte the
program may touch, STATUS, DESC_DONE and the per-port byte counters must equal the golden ones.
"""
from __future__ import annotations

import numpy as np
import cocotb

from hbmforge.encodings import ErrorCode, Opcode, OutMode, VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from hbmforge.engines.vector import VECTOR_FIELDS, vector_geometry
from hbmforge.generators.vector.testing import CASE_KINDS, ROW_KINDS, blocked_int32, random_case
from hbmforge.host.packing import pack_scales, pack_weights
from hbmforge.numerics import vector as V
from hbmforge.numerics.program import SparseMemory, execute

from .tb_kernel import CASES, SEED, Mirrored, Program, _bench, design_has

HAS_VECTOR = design_has("vector")


class _Operands:
    """What :func:`random_case` needs of a bench, over the kernel bench and the golden mirror."""

    def __init__(self, bench, mem: Mirrored, lay, prog: Program):
        self.bench, self.mem, self.layout, self.prog = bench, mem, lay, prog
        self.geom = vector_geometry(lay)
        self.regions: list[tuple[int, int]] = []

    def alloc(self, nbytes: int, fill=None, port: str = "data") -> int:
        word = self.layout.word_bytes
        size = -(-max(nbytes, 1) // word) * word
        addr = self.bench.alloc(size + word, port)
        data = (bytes(fill) if fill is not None else bytes([0x5A]) * size)[:size]
        self.mem.write(addr, data + bytes(size + word - len(data)))
        self.regions.append((addr, size + word))            # one guard word after each buffer
        return addr

    def add(self, d: dict) -> dict:
        full = {name: 0 for name in VECTOR_FIELDS}
        full.update(d, op=Opcode.VECTOR)
        self.prog.add(full)
        return full


def _compare(bench, mirror, regions, what: str) -> None:
    for start, nbytes in regions:
        got, want = bench.read(start, nbytes), mirror.read(start, nbytes)
        if got != want:
            a, b = np.frombuffer(got, np.uint8), np.frombuffer(want, np.uint8)
            bad = np.flatnonzero(a != b)
            raise AssertionError(f"{what}: [{start:#x}, +{nbytes}): {bad.size} bytes differ from the golden "
                                 f"model, first at +{bad[0]}: got {a[bad[0]]:#04x} expected {b[bad[0]]:#04x}")


async def _counters_match(bench, lay, golden) -> None:
    for p in lay.ports:
        got = await bench.reg_read(f"{p.name.upper()}_BYTES_WRITTEN")
        assert got == golden.bytes_written[p.index], f"{p.name} bytes written {got}, golden {golden.bytes_written[p.index]}"
        if p.index:
            got = await bench.reg_read(f"{p.name.upper()}_BYTES_READ")
            want = golden.weight_bytes_read[p.index - 1]
            assert got == want, f"{p.name} bytes read {got}, golden {want}"


async def _run_checked(bench, lay, mem, mirror, prog, regions, what):
    addr = bench.alloc(prog.nbytes)
    mem.write(addr, prog.to_bytes())
    golden = execute(mirror, addr, len(prog), lay)
    assert golden.ok, golden.detail
    status = await bench.run(addr, len(prog), timeout_cycles=4_000_000)
    assert status == 0, f"{what}: STATUS {status:#x}"
    assert await bench.reg_read("DESC_DONE") == len(prog)
    _compare(bench, mirror, regions, what)
    await _counters_match(bench, lay, golden)


@cocotb.test(skip=not HAS_VECTOR)
async def test_vector_descriptors_of_every_kind_match_golden_under_backpressure(dut):
    bench, lay = await _bench(dut, seed_offset=401)
    rng = np.random.default_rng(SEED + 401)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    prog = Program(lay)
    ops = _Operands(bench, mem, lay, prog)
    g = ops.geom
    kinds = [k for k in CASE_KINDS if g.has_attention or k not in ("rope_qrec", "kv8_rope", "kv4")]
    kinds += list(ROW_KINDS) if g.rows == 1 else []          # res_out: one row per block
    for kind in kinds + [kinds[int(i)] for i in rng.integers(0, len(kinds), max(0, CASES - 3))]:
        random_case(ops, rng, kind)
    await _run_checked(bench, lay, mem, mirror, prog, ops.regions, "vector descriptors")


@cocotb.test(skip=not HAS_VECTOR)
async def test_vector_norm_matmul_swiglu_matmul_residual_chain_stays_on_the_device(dut):
    """RES32 -> RMSNorm -> int8 rows -> MATMUL (gate|up) -> SwiGLU -> int8 rows -> MATMUL -> residual
    add: each engine reads the format the previous one wrote, one program, one run."""
    bench, lay = await _bench(dut, seed_offset=402)
    rng = np.random.default_rng(SEED + 402)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    prog = Program(lay)
    ops = _Operands(bench, mem, lay, prog)
    g = ops.geom
    R, W8 = g.rows, lay.word_bytes
    dim = max(lay.matmul.k_align, W8)
    hidden = min(2 * dim, g.max_dim // 2 // dim * dim) or dim
    m = int(rng.integers(1, 2 * R + 2))
    nb = -(-m // R)
    h = np.rint(rng.normal(0, 1.5, (m, dim)) * 2 ** 16).astype(np.int64)
    h_addr = ops.alloc(nb * R * dim * 4, blocked_int32(h, R))
    c = V.norm_constants(dim, 1e-5, in_frac=16, gamma_frac=20, out_frac=16, center=False)
    gamma = np.rint(rng.uniform(0.5, 1.5, dim) * 2 ** 20).astype(np.int64)
    x1, s1 = ops.alloc(m * dim), ops.alloc(g.scale_bytes(m))
    ops.add({"m": m, "dim": dim, "a_fmt": VectorIn.RES32, "a_addr": h_addr, "a_stride": R * dim * 4,
             "norm": VectorNorm.RMS, "gamma_addr": ops.alloc(dim * 4, V.pack_u32(gamma & 0xFFFFFFFF, W8)),
             "eps_q": c["eps_q"], "eps_shift": c["eps_shift"], "norm_shift": c["norm_shift"],
             "out_fmt": VectorOut.ACT8, "y_addr": x1, "y_scale": s1})

    def matmul(x_addr, k, n):
        wbits = 8 if 8 in lay.mm.weight_bits else lay.mm.weight_bits[-1]
        w = rng.integers(-8, 8, (n, k)).astype(np.int8)
        s = rng.integers(1 << 10, 1 << 12, (n, k // lay.mm.group_size)).astype(np.uint16)
        s_addr = ops.alloc(lay.matmul.scale_bytes(n, k), pack_scales(s, lay).tobytes())
        w_addrs = [ops.alloc(stripe.size, stripe.tobytes(), port=f"w{i}")
                   for i, stripe in enumerate(pack_weights(w, wbits, lay))]
        y_addr = ops.alloc(lay.matmul.out_bytes(m, n, OutMode.INT32))
        d = {"op": Opcode.MATMUL, "m": m, "k": k, "n": n, "wbits": wbits, "out_mode": OutMode.INT32,
             "out_shift": 4, "x_addr": x_addr, "s_addr": s_addr, "q_addr": 0, "y_addr": y_addr}
        d.update({f"w_addr{i}": a for i, a in enumerate(w_addrs)})
        prog.add(d)
        return y_addr

    y_gu = matmul(x1, dim, 2 * hidden)

    def cols(lo, hi, n):
        return ops.alloc(n * 4, V.pack_u32(V.column_multipliers(np.exp(rng.uniform(np.log(lo), np.log(hi), n))), W8))

    x2, s2 = ops.alloc(m * hidden), ops.alloc(g.scale_bytes(m))
    ops.add({"m": m, "dim": hidden, "a_fmt": VectorIn.ACC32, "a_addr": y_gu, "a_stride": R * 2 * hidden * 4,
             "a_scale": s1, "a_cols": cols(1e-6, 1e-4, hidden), "act": VectorAct.SILU,
             "b_fmt": VectorIn.ACC32, "b_addr": y_gu + R * hidden * 4, "b_stride": R * 2 * hidden * 4,
             "b_cols": cols(1e-6, 1e-4, hidden), "combine": VectorCombine.MUL,
             "out_fmt": VectorOut.ACT8, "y_addr": x2, "y_scale": s2})
    y_d = matmul(x2, hidden, dim)
    ops.add({"m": m, "dim": dim, "a_fmt": VectorIn.ACC32, "a_addr": y_d, "a_stride": R * dim * 4,
             "a_scale": s2, "a_cols": cols(1e-6, 1e-4, dim), "b_fmt": VectorIn.RES32, "b_addr": h_addr,
             "b_stride": R * dim * 4, "combine": VectorCombine.ADD, "out_fmt": VectorOut.RES32,
             "y_addr": h_addr, "y_stride": R * dim * 4})
    await _run_checked(bench, lay, mem, mirror, prog, ops.regions, "MLP chain")


@cocotb.test(skip=not HAS_VECTOR)
async def test_bad_vector_descriptor_stops_with_code_and_index(dut):
    bench, lay = await _bench(dut, seed_offset=403, busy=0.1)
    rng = np.random.default_rng(SEED + 403)
    mirror = SparseMemory()
    mem = Mirrored(bench, mirror)
    prog = Program(lay)
    ops = _Operands(bench, mem, lay, prog)
    good = random_case(ops, rng, "add_res32")
    prog.add({**good, "dim": lay.word_bytes + lay.word_bytes // 2}, check=False)     # not whole words
    prog.add(good)
    addr = bench.alloc(prog.nbytes)
    mem.write(addr, prog.to_bytes())
    golden = execute(mirror, addr, len(prog), lay)
    assert (golden.error, golden.error_index) == (ErrorCode.VEC_SHAPE, 1)
    status = await bench.run(addr, len(prog))
    assert status == golden.status, f"STATUS {status:#x}, golden {golden.status:#x}"
    assert await bench.reg_read("DESC_DONE") == 1
    _compare(bench, mirror, ops.regions, "the descriptor before the bad one")
