"""Cycles per VECTOR descriptor of one LLaMA-2-7B decode layer; prints one JSON object per line.

    python benchmarks/vector_decode.py [--config examples/u280_llm512.yaml] [--ctx 2048] [--seed 0]
                                       [--read-latency 32] [--write-latency 32] [--only NAME ...]

The vector engine of ``--config`` alone (amaranth.sim, ``generators/vector/testing.VectorBench``)
runs the nine VECTOR descriptors a decoder layer issues in decode (``host/blocks.py``: RMSNorm ->
ACT8, Q records with RoPE, K and V appends to the paged KV cache, the attention output -> ACT8, the
residual add, RMSNorm -> ACT8, SwiGLU -> ACT8, the residual add) at hidden 4096, 32 heads of 128,
FFN 11008, one token at position ``ctx - 1``, on random operands. Each descriptor's result is
compared with the golden model (``hbmforge.numerics.vector.run_vector``) bit for bit.

The bench's memory has a fixed latency: a read command's first word comes ``--read-latency``
cycles after the command is accepted (up to 8 commands outstanding, then one word per cycle), a
write command's answer ``--write-latency`` cycles after its last word (writes are pipelined). 32
cycles is the U280 HBM page-hit latency (107 ns) at 300 MHz; the co-simulation's calibrated model
adds the shell's pipeline, bank conflicts and refresh, so its figures are somewhat higher.

On a design of one row per block it also runs ``residual_norm_act8``: the residual add and the next
RMSNorm as one descriptor (``res_out``), as ``ModelProgram`` issues them there.

Metrics (``{"bench": "vector_decode", "metric", "value", "unit", ...}``): ``descriptor_cycles``
per descriptor (with its bytes read + written and ``bytes / 64`` as the port-rate bound), then
``layer_vector_cycles`` (the sum of the nine) and, with the fused pass, ``layer_vector_cycles_fused``
(a layer in a model: seven descriptors, each residual carrying the next norm).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def emit(metric: str, value, unit: str, **context) -> None:
    print(json.dumps({"bench": "vector_decode", "metric": metric, "value": value, "unit": unit, **context}),
          flush=True)


def latency_bench(read_latency: int, write_latency: int, outstanding: int = 8):
    """A VectorBench whose memory answers after fixed latencies, pipelined (no stalls)."""
    from hbmforge.generators.dma_bench import until
    from hbmforge.generators.vector.testing import VectorBench

    class LatencyBench(VectorBench):
        def __init__(self, layout, **kw):
            super().__init__(layout, seed=0, stall=0.0, backpressure=0.0, **kw)
            self.now = 0
            self.read_bytes = 0
            self.written_bytes = 0

        def _reader(self, name, cmd, data):
            queue: deque = deque()
            wb = self.layout.word_bytes
            self.commands[name] = []

            async def take_commands(ctx):
                while True:
                    ctx.set(cmd.ready, int(len(queue) < outstanding))
                    _, _, valid, ready, addr, nbytes = await ctx.tick().sample(
                        cmd.valid, cmd.ready, cmd.payload.addr, cmd.payload.bytes)
                    if valid and ready:
                        self.commands[name].append((addr, nbytes))
                        self.read_bytes += nbytes
                        queue.append((self.now + read_latency, addr, nbytes))

            async def deliver(ctx):
                while True:
                    if not queue or queue[0][0] > self.now:
                        ctx.set(data.valid, 0)
                        await ctx.tick()
                        continue
                    _, addr, nbytes = queue[0]
                    for a in range(addr, addr + nbytes, wb):
                        ctx.set(data.payload, int.from_bytes(self.mem[a:a + wb], "little"))
                        ctx.set(data.valid, 1)
                        await until(ctx, data.ready)
                    queue.popleft()
                    ctx.set(data.valid, 0)

            return take_commands, deliver

        def _writer(self, name, cmd, data, done):
            wb = self.layout.word_bytes
            self.commands[name] = []
            answers: deque = deque()

            async def write(ctx):
                while True:
                    ctx.set(cmd.ready, 1)
                    addr, nbytes = await until(ctx, cmd.valid, cmd.payload.addr, cmd.payload.bytes)
                    ctx.set(cmd.ready, 0)
                    self.commands[name].append((addr, nbytes))
                    self.written_bytes += nbytes
                    ctx.set(data.ready, 1)
                    for a in range(addr, addr + nbytes, wb):
                        word, = await until(ctx, data.valid, data.payload)
                        self.mem[a:a + wb] = int(word).to_bytes(wb, "little")
                    ctx.set(data.ready, 0)
                    answers.append(self.now + write_latency)

            async def respond(ctx):
                while True:
                    if not answers or answers[0] > self.now:
                        await ctx.tick()
                        continue
                    answers.popleft()
                    ctx.set(done.valid, 1)
                    ctx.set(done.payload.error, 0)
                    await until(ctx, done.ready)
                    ctx.set(done.valid, 0)

            return [write, respond]

        def add_dma(self, sim):
            async def clock(ctx):
                async for _ in ctx.tick():
                    self.now += 1
            sim.add_testbench(clock, background=True)
            super().add_dma(sim)

    return LatencyBench


NAMES = ("norm1_act8", "q_rope_qrec", "k_append", "v_append", "attn_out_act8", "o_residual", "norm2_act8",
         "swiglu_act8", "down_residual", "residual_norm_act8")
#: the nine passes of host/blocks.py before res_out; on a design of one row per block a residual add
#: and the norm after it are one descriptor (``residual_norm_act8``, twice a layer)
NINE = NAMES[:9]
FUSED_OUT = ("o_residual", "norm2_act8", "down_residual", "norm1_act8")


def layer_descriptors(bench, rng, *, ctx: int, hidden=4096, heads=32, kv_heads=32, head_dim=128, ffn=11008):
    """The nine VECTOR descriptors of a decode layer (host/blocks.py order before res_out), and with one
    row per block the fused residual add + RMSNorm, operands allocated."""
    from hbmforge.encodings import VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
    from hbmforge.engines.attention import attention_geometry
    from hbmforge.numerics import vector as V

    lay, g = bench.layout, bench.geom
    R, W8 = g.rows, lay.word_bytes
    att = attention_geometry(lay)
    m, pos0 = 1, ctx - 1
    nq, nk = heads * head_dim, kv_heads * head_dim
    nqkv = nq + 2 * nk

    def ints(shape, bits):
        return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape)

    def blocked(x):
        return bench.alloc(R * x.shape[1] * 4, V.pack_blocked(x, R))

    def cols(dim, lo=1e-9, hi=1e-5):
        c = V.column_multipliers(np.exp(rng.uniform(np.log(lo), np.log(hi), dim)))
        return bench.alloc(dim * 4, V.pack_u32(np.asarray(c) & 0xFFFFFFFF, W8))

    def scales():
        a, e = V.row_scale(rng.integers(1, 1 << 31, m))
        return bench.alloc(g.scale_bytes(m), V.pack_scale_records(a, e, R, W8))

    def norm_fields(dim):
        c = V.norm_constants(dim, 1e-5, in_frac=16, gamma_frac=20, out_frac=16, center=False)
        gamma = np.rint(rng.uniform(0.5, 1.5, dim) * 2 ** 20).astype(np.int64)
        return dict(norm=VectorNorm.RMS, gamma_addr=bench.alloc(dim * 4, V.pack_u32(gamma & 0xFFFFFFFF, W8)),
                    eps_q=c["eps_q"], eps_shift=c["eps_shift"], norm_shift=c["norm_shift"])

    h = blocked(np.rint(rng.normal(0, 1, (m, hidden)) * 2 ** 16).astype(np.int64))
    xa, xs_a = bench.alloc(hidden), bench.alloc(g.scale_bytes(m))
    xb, xs_b = bench.alloc(max(hidden, ffn)), bench.alloc(g.scale_bytes(m))
    yqkv = blocked(ints((m, nqkv), 32))
    res = dict(a_fmt=VectorIn.RES32, a_addr=h, a_stride=R * hidden * 4)
    rope = V.rope_table(pos0 + m, head_dim, 10000.0)
    rope_addr = bench.alloc(len(V.pack_rope_table(rope, W8)), V.pack_rope_table(rope, W8))
    P = att.page_tokens
    npages = -(-(pos0 + m) // P)
    bits = att.kv_bits[0]
    pbytes = att.page_bytes(bits, kv_heads)
    bt = bench.alloc(npages * 4, np.asarray(rng.permutation(npages + 1)[:npages], "<u4").tobytes())
    pools = [bench.alloc((npages + 1) * pbytes, rng.integers(0, 256, (npages + 1) * pbytes, dtype=np.uint8).tobytes())
             for _ in range(2)]
    acc = dict(a_fmt=VectorIn.ACC32, a_stride=R * nqkv * 4, a_scale=scales())
    qrec = bench.alloc(m * heads * att.q_record_bytes)
    qconsts = V.qrec_constants(np.exp(rng.uniform(np.log(1e-7), np.log(1e-4), heads)), 1, head_dim=head_dim,
                               frac_bits=16)
    o = bench.alloc(m * nq * 4, ints((m, nq), 28).astype("<i4").tobytes())
    y = blocked(ints((m, 2 * ffn), 32))
    out = []
    out.append(("norm1_act8", dict(m=m, dim=hidden, **res, **norm_fields(hidden), out_fmt=VectorOut.ACT8,
                                   y_addr=xa, y_scale=xs_a)))
    out.append(("q_rope_qrec", dict(m=m, dim=nq, **acc, a_addr=yqkv, a_cols=cols(nq), rope=1, rope_addr=rope_addr,
                                    pos0=pos0, out_fmt=VectorOut.QREC, y_addr=qrec,
                                    consts_addr=bench.alloc(heads * 8, np.asarray(qconsts, "<u8").tobytes()))))
    for col0, which, pool, port in ((nq, "k", pools[0], 1), (nq + nk, "v", pools[1], att.kv_ports)):
        kc = V.kv_constants(np.exp(rng.uniform(np.log(1e-6), np.log(1e-4), kv_heads)), bits, frac_bits=16)
        extra = dict(rope=1, rope_addr=rope_addr) if which == "k" else {}
        out.append((f"{which}_append", dict(
            m=m, dim=nk, **acc, a_addr=yqkv + R * col0 * 4, a_cols=cols(nk), **extra, pos0=pos0,
            out_fmt=VectorOut.KV, kv_bits=bits, bt_addr=bt, pool=pool, port=port,
            consts_addr=bench.alloc(kv_heads * 8, np.asarray([int(c) for c in kc], "<u8").tobytes()))))
    out.append(("attn_out_act8", dict(m=m, dim=nq, a_fmt=VectorIn.ROWS32, a_addr=o, a_stride=nq * 4,
                                      a_cols=cols(nq, 0.5, 300), out_fmt=VectorOut.ACT8, y_addr=xb, y_scale=xs_b)))

    def residual(name):
        return (name, dict(m=m, dim=hidden, a_fmt=VectorIn.ACC32, a_addr=y, a_stride=R * hidden * 4, a_scale=xs_b,
                           a_cols=cols(hidden), b_fmt=VectorIn.RES32, b_addr=h, b_stride=R * hidden * 4,
                           combine=VectorCombine.ADD, out_fmt=VectorOut.RES32, y_addr=h, y_stride=R * hidden * 4))
    out.append(residual("o_residual"))
    out.append(("norm2_act8", dict(m=m, dim=hidden, **res, **norm_fields(hidden), out_fmt=VectorOut.ACT8,
                                   y_addr=xa, y_scale=xs_a)))
    out.append(("swiglu_act8", dict(m=m, dim=ffn, a_fmt=VectorIn.ACC32, a_addr=y, a_stride=R * 2 * ffn * 4,
                                    a_scale=xs_a, a_cols=cols(ffn), act=VectorAct.SILU, b_fmt=VectorIn.ACC32,
                                    b_addr=y + R * ffn * 4, b_stride=R * 2 * ffn * 4, b_cols=cols(ffn),
                                    combine=VectorCombine.MUL, out_fmt=VectorOut.ACT8, y_addr=xb, y_scale=xs_b)))
    out.append(residual("down_residual"))
    if R == 1:                      # res_out: the residual add writes h and the next norm's int8 rows
        _, fused = residual("residual_norm_act8")
        fused.update(norm_fields(hidden), out_fmt=VectorOut.ACT8, y_addr=xa, y_scale=xs_a, res_out=1, res_addr=h)
        out.append(("residual_norm_act8", fused))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "u280_llm512.yaml"))
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--read-latency", type=int, default=32)
    ap.add_argument("--write-latency", type=int, default=32)
    ap.add_argument("--only", nargs="*", default=None, help="descriptor names to run (default: all)")
    args = ap.parse_args(argv)

    from hbmforge.config import load_config
    from hbmforge.layout import DesignLayout

    lay = DesignLayout(load_config(args.config))
    bench_cls = latency_bench(args.read_latency, args.write_latency)
    total_cycles = total_bytes = 0
    cycles = {}
    ok = True
    # every descriptor in a bench of its own (cycles and bytes per descriptor, a fresh memory)
    if args.only and set(args.only) - set(NAMES):
        ap.error(f"--only: unknown descriptor(s) {sorted(set(args.only) - set(NAMES))}; names: {', '.join(NAMES)}")
    for name in NAMES:
        if args.only and name not in args.only:
            continue
        bench = bench_cls(lay)
        descs = dict(layer_descriptors(bench, np.random.default_rng(args.seed), ctx=args.ctx))
        if name not in descs:           # the fused pass: one row per block only
            continue
        bench.add(descs[name])
        expected = bench.run(max_cycles=400_000)
        exact = bench.mem == expected
        ok &= exact
        nbytes = bench.read_bytes + bench.written_bytes
        cycles[name] = (bench.cycles[0], nbytes)
        if name in NINE:
            total_cycles += bench.cycles[0]
            total_bytes += nbytes
        emit("descriptor_cycles", bench.cycles[0], "cycles", descriptor=name, bytes_read=bench.read_bytes,
             bytes_written=bench.written_bytes, port_bound_cycles=nbytes // lay.word_bytes, bit_exact=exact,
             config=Path(args.config).name, ctx=args.ctx, seed=args.seed, read_latency=args.read_latency,
             write_latency=args.write_latency)
    emit("layer_vector_cycles", total_cycles, "cycles", bytes=total_bytes, port_bound_cycles=total_bytes // lay.word_bytes,
         bit_exact=ok, config=Path(args.config).name, ctx=args.ctx, seed=args.seed)
    if "residual_norm_act8" in cycles and all(n in cycles for n in FUSED_OUT):
        # a layer in steady state: its down residual carries the next layer's norm1
        fused_cycles = total_cycles - sum(cycles[n][0] for n in FUSED_OUT) + 2 * cycles["residual_norm_act8"][0]
        fused_bytes = total_bytes - sum(cycles[n][1] for n in FUSED_OUT) + 2 * cycles["residual_norm_act8"][1]
        emit("layer_vector_cycles_fused", fused_cycles, "cycles", bytes=fused_bytes, descriptors=7,
             port_bound_cycles=fused_bytes // lay.word_bytes, bit_exact=ok, config=Path(args.config).name,
             ctx=args.ctx, seed=args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
