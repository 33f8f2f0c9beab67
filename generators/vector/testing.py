"""Test support for the vector engine: random descriptors of every kind and an amaranth.sim bench.

:class:`VectorBench` serves the engine's DMA commands from a Python byte memory (random stalls on
every reader, random back-pressure on every writer), runs a list of VECTOR descriptors one after
the other and compares the whole memory with :func:`hbmforge.numerics.vector.run_vector` run on a
copy, descriptor after descriptor. :func:`random_case` builds one random descriptor of a named
kind with its operands in the bench memory.
"""
from __future__ import annotations

import numpy as np

from ...encodings import Opcode, VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from ...engines.attention import attention_geometry
from ...engines.vector import VECTOR_FIELDS, vector_geometry
from ...layout import DesignLayout
from ...mathutil import round_up
from ...numerics import vector as V
from ..attention.testing import ByteMemory
from ..dma_bench import DmaBench

__all__ = ["VectorBench", "random_case", "CASE_KINDS", "GROUP_KINDS", "ROW_KINDS", "blocked_int32"]


class VectorBench(DmaBench):
    def __init__(self, layout: DesignLayout, *, seed: int = 0, stall: float = 0.0, backpressure: float = 0.0,
                 engine=None, response_delay: tuple[int, int] = (1, 6)):
        from .engine import VectorEngine

        super().__init__(layout, engine if engine is not None else VectorEngine(layout), seed=seed,
                         stall=stall, backpressure=backpressure, response_delay=response_delay)
        self.geom = vector_geometry(layout)
        self.mem = bytearray(4096)
        self.jobs: list[dict] = []
        self.cycles: list[int] = []

    def alloc(self, nbytes: int, fill=None) -> int:
        addr = round_up(len(self.mem) + 64, 4096)
        self.mem.extend(bytes(addr - len(self.mem)))
        data = bytes(fill) if fill is not None else bytes(nbytes)
        data = data + bytes(max(nbytes - len(data), 0))
        data = data + bytes(-len(data) % self.layout.word_bytes)
        self.mem.extend(data)
        return addr

    def add(self, d: dict) -> dict:
        full = {name: 0 for name in VECTOR_FIELDS}
        full.update(d)
        code, why = self.layout.validate_descriptor({**full, "op": Opcode.VECTOR})
        if code:
            raise ValueError(f"bad descriptor ({code.name}): {why}")
        self.jobs.append(full)
        return full

    def expected_memory(self) -> bytearray:
        shadow = ByteMemory(bytearray(self.mem))
        for d in self.jobs:
            V.run_vector(shadow, d, self.layout)
        return shadow.mem

    def run(self, max_cycles: int = 200_000, vcd: str | None = None) -> bytearray:
        """Run every job on the engine; returns the memory the golden model expects (compare with
        ``self.mem``)."""
        from amaranth.sim import Simulator

        expected = self.expected_memory()
        dut = self.dut
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        self.add_dma(sim)
        count = {"cycles": 0}

        async def monitor(ctx):
            async for _ in ctx.tick():
                count["cycles"] += 1

        sim.add_testbench(monitor, background=True)

        async def driver(ctx):
            for d in self.jobs:
                before = count["cycles"]
                for f in VECTOR_FIELDS:
                    ctx.set(getattr(dut.job.payload, f), d[f])
                await self.submit(ctx, max_cycles, lambda: f"vector job {d}")
                self.cycles.append(count["cycles"] - before)

        sim.add_testbench(driver)
        self.run_sim(sim, vcd)
        return expected


CASE_KINDS = ("add_res32", "norm_act8", "layernorm_res32", "swiglu_act8", "gelu_bias_res32", "rows_act8",
              "rope_qrec", "kv8_rope", "kv4", "silu_res32_acc")
#: kinds that need a design with at least 4 KV ports (two port groups): not in CASE_KINDS
GROUP_KINDS = ("kv_groups",)
#: kinds that need a design of one row per block (res_out): not in CASE_KINDS
ROW_KINDS = ("residual_norm_act8",)
_HEAD_KINDS = ("rope_qrec", "kv8_rope", "kv4", "kv_groups")


def blocked_int32(x: np.ndarray, R: int) -> bytes:
    """int32 rows ``[m, dim]`` in the matmul's blocked layout (rows beyond ``m`` zero)."""
    return V.pack_blocked(x, R)


def random_case(bench: VectorBench, rng: np.random.Generator, kind: str, *, m: int | None = None,
                dim: int | None = None) -> dict:
    """One random descriptor of ``kind`` (see :data:`CASE_KINDS`) with its operands allocated."""
    lay, g = bench.layout, bench.geom
    R, W8 = g.rows, lay.word_bytes
    word_elems = W8
    m = int(rng.integers(1, 2 * R + 2)) if m is None else m
    hd = g.head_dim or 16
    groups = 1
    if kind == "kv_groups":
        choices = [n for n in g.kv_group_choices() if n >= 2 and g.max_dim // hd >= n]
        if not choices:
            raise ValueError(f"kind 'kv_groups' needs at least 4 KV ports, this design has {g.kv_ports}")
        groups = int(rng.choice(choices))
    if dim is None:
        unit = max(word_elems, hd * groups) if kind in _HEAD_KINDS else word_elems
        dim = unit * int(rng.integers(1, max(2, min(4, g.max_dim // unit)) + 1))
    nb = -(-m // R)

    def ints(shape, bits):
        return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape)

    def blocked_buf(x):
        return bench.alloc(nb * R * dim * 4, blocked_int32(x, R))

    def col_table(values):
        return bench.alloc(dim * 4, V.pack_u32(np.asarray(values) & 0xFFFFFFFF, W8))

    def cols(lo, hi):
        return col_table(V.column_multipliers(np.exp(rng.uniform(np.log(lo), np.log(hi), dim))))

    def scales():
        amax = rng.integers(1, 1 << 31, m)
        a, e = V.row_scale(amax)
        return bench.alloc(g.scale_bytes(m), V.pack_scale_records(a, e, R, W8))

    d = {"m": m, "dim": dim}
    if kind == "add_res32":
        a = blocked_buf(ints((m, dim), 31))
        b = blocked_buf(ints((m, dim), 31))
        d.update(a_fmt=VectorIn.RES32, a_addr=a, a_stride=R * dim * 4, b_fmt=VectorIn.RES32, b_addr=b,
                 b_stride=R * dim * 4, combine=VectorCombine.ADD, out_fmt=VectorOut.RES32, y_addr=b,
                 y_stride=R * dim * 4)
    elif kind in ("norm_act8", "layernorm_res32"):
        center = kind == "layernorm_res32"
        x = np.rint(rng.normal(rng.uniform(-2, 2) if center else 0, 2.0 ** rng.uniform(-2, 6), (m, dim))
                    * 2 ** 16).astype(np.int64)
        x = np.clip(x, V.I32_MIN, V.I32_MAX)
        c = V.norm_constants(dim, 1e-5, in_frac=16, gamma_frac=20, out_frac=16, center=center)
        gamma = np.rint(rng.uniform(-2, 2, dim) * 2 ** 20).astype(np.int64)
        d.update(a_fmt=VectorIn.RES32, a_addr=blocked_buf(x), a_stride=R * dim * 4,
                 norm=VectorNorm.LAYER if center else VectorNorm.RMS, gamma_addr=col_table(gamma),
                 eps_q=c["eps_q"], eps_shift=c["eps_shift"], norm_shift=c["norm_shift"])
        if center:
            beta = np.rint(rng.normal(0, 1, dim) * 2 ** 16).astype(np.int64)
            d.update(beta_addr=col_table(beta), out_fmt=VectorOut.RES32, y_addr=bench.alloc(nb * R * dim * 4),
                     y_stride=R * dim * 4)
        else:
            d.update(out_fmt=VectorOut.ACT8, y_addr=bench.alloc(m * dim), y_scale=bench.alloc(g.scale_bytes(m)))
    elif kind in ("swiglu_act8", "silu_res32_acc"):
        n_total = 2 * dim
        y = bench.alloc(nb * R * n_total * 4, blocked_int32(ints((m, n_total), 32), R))
        d.update(a_fmt=VectorIn.ACC32, a_addr=y, a_stride=R * n_total * 4, a_scale=scales(),
                 a_cols=cols(1e-9, 1e-5), act=VectorAct.SILU)
        if kind == "swiglu_act8":
            d.update(b_fmt=VectorIn.ACC32, b_addr=y + R * dim * 4, b_stride=R * n_total * 4, b_cols=cols(1e-9, 1e-5),
                     combine=VectorCombine.MUL, out_fmt=VectorOut.ACT8, y_addr=bench.alloc(m * dim),
                     y_scale=bench.alloc(g.scale_bytes(m)))
        else:
            d.update(out_fmt=VectorOut.RES32, y_addr=bench.alloc(nb * R * dim * 4), y_stride=R * dim * 4)
    elif kind == "residual_norm_act8":
        # a decoder's residual add and the next RMSNorm in one pass: h += deq(y) in place (res_out),
        # and norm(h) as ACT8 rows
        h = np.clip(np.rint(rng.normal(0, 2.0 ** rng.uniform(-2, 6), (m, dim)) * 2 ** 16), V.I32_MIN, V.I32_MAX)
        hb = blocked_buf(h.astype(np.int64))
        c = V.norm_constants(dim, 1e-5, in_frac=16, gamma_frac=20, out_frac=16, center=False)
        gamma = np.rint(rng.uniform(-2, 2, dim) * 2 ** 20).astype(np.int64)
        d.update(a_fmt=VectorIn.ACC32, a_addr=blocked_buf(ints((m, dim), 32)), a_stride=R * dim * 4,
                 a_scale=scales(), a_cols=cols(1e-10, 1e-6), b_fmt=VectorIn.RES32, b_addr=hb, b_stride=R * dim * 4,
                 combine=VectorCombine.ADD, norm=VectorNorm.RMS, gamma_addr=col_table(gamma), eps_q=c["eps_q"],
                 eps_shift=c["eps_shift"], norm_shift=c["norm_shift"], out_fmt=VectorOut.ACT8,
                 y_addr=bench.alloc(m * dim), y_scale=bench.alloc(g.scale_bytes(m)), res_out=1, res_addr=hb,
                 y_stride=R * dim * 4)
    elif kind == "gelu_bias_res32":
        d.update(a_fmt=VectorIn.ACC32, a_addr=blocked_buf(ints((m, dim), 32)), a_stride=R * dim * 4,
                 a_scale=scales(), a_cols=cols(1e-10, 1e-6), bias=1,
                 bias_addr=col_table(ints(dim, 20)), act=VectorAct.GELU, out_fmt=VectorOut.RES32,
                 y_addr=bench.alloc(nb * R * dim * 4), y_stride=R * dim * 4)
    elif kind == "rows_act8":
        d.update(a_fmt=VectorIn.ROWS32, a_addr=bench.alloc(m * dim * 4, ints((m, dim), 28).astype("<i4").tobytes()),
                 a_stride=dim * 4, a_cols=cols(0.5, 300), out_fmt=VectorOut.ACT8, y_addr=bench.alloc(m * dim),
                 y_scale=bench.alloc(g.scale_bytes(m)))
    elif kind in _HEAD_KINDS:
        att = attention_geometry(lay)
        heads = dim // hd
        pos0 = int(rng.integers(0, max(1, g.max_context - m - 1)))
        rope = V.rope_table(pos0 + m, hd, float(rng.choice([10000.0, 500000.0])))
        d.update(a_fmt=VectorIn.ACC32, a_addr=blocked_buf(ints((m, dim), 32)), a_stride=R * dim * 4,
                 a_scale=scales(), a_cols=cols(1e-15, 1e-12), pos0=pos0)
        if kind in ("rope_qrec", "kv8_rope") or (kind == "kv_groups" and rng.random() < 0.5):
            d.update(rope=1, rope_addr=bench.alloc(len(V.pack_rope_table(rope, W8)), V.pack_rope_table(rope, W8)))
        if kind == "rope_qrec":
            consts = V.qrec_constants(np.exp(rng.uniform(np.log(1e-7), np.log(1e-4), heads)), 1, head_dim=hd,
                                      frac_bits=16)
            d.update(out_fmt=VectorOut.QREC, y_addr=bench.alloc(m * heads * att.q_record_bytes),
                     consts_addr=bench.alloc(heads * 8, np.asarray(consts, "<u8").tobytes()))
        else:
            bits = {"kv8_rope": 8, "kv4": 4}.get(kind) or int(rng.choice(g.kv_bits))
            if bits not in g.kv_bits:
                bits = g.kv_bits[0]
            P = att.page_tokens
            npages = -(-(pos0 + m) // P)
            pool_pages = npages + 2
            perm = rng.permutation(pool_pages)[:npages]
            pbytes = att.page_bytes(bits, heads // groups)
            hs = np.exp(rng.uniform(np.log(1e-6), np.log(1e-4), heads))
            consts = V.kv_constants(hs, bits, frac_bits=16)
            port = int(rng.integers(1, g.kv_ports - 2 * (groups - 1) + 1))

            def pool():
                return bench.alloc(pool_pages * pbytes, rng.integers(0, 256, pool_pages * pbytes, dtype=np.uint8).tobytes())

            if groups > 1:        # the pool table: one pool per port group
                table = np.asarray([pool() for _ in range(groups)], "<u8").tobytes()
                d.update(kv_groups=groups, pool=bench.alloc(len(table), table))
            else:
                d.update(pool=pool())
            d.update(out_fmt=VectorOut.KV, kv_bits=bits, port=port,
                     bt_addr=bench.alloc(npages * 4, np.asarray(perm, "<u4").tobytes()),
                     consts_addr=bench.alloc(heads * 8, np.asarray([int(c) for c in consts], "<u8").tobytes()))
    else:
        raise ValueError(f"unknown case kind {kind!r}; kinds: {CASE_KINDS + GROUP_KINDS + ROW_KINDS}")
    return bench.add(d)
