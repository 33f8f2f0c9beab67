"""Test support for the matmul engine: §4 buffer packing and an amaranth.sim testbench.

The packers here are written from docs/architecture.md §4 independently of the
host's production packer (``hbmforge.host.packing``), so tests comparing the
two cross-check the layout. :class:`EngineBench` serves the engine's DMA
commands from a Python byte memory with random stalls and back-pressure.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...encodings import OutMode
from ...engines.matmul import SPARSE24
from ...layout import DesignLayout
from ...numerics.sparse import encode_sparse24_stream, prune_2_4
from ..dma_bench import DmaBench

__all__ = ["pack_activations", "pack_weights", "pack_scales", "pack_inline", "pack_requant", "unpack_outputs",
           "pack_bias", "MatmulCase", "random_case", "EngineBench"]


def _pad(buf: bytes, word_bytes: int) -> bytes:
    return buf + bytes(-len(buf) % word_bytes)


def pack_activations(x, word_bytes: int) -> bytes:
    """int8 ``[M, K]`` row-major, padded to a whole word."""
    return _pad(np.asarray(x, dtype=np.int8).tobytes(), word_bytes)


def _format_code(wbits) -> int:
    """2, 4, 8, 'ternary' or a descriptor code (with the SPARSE24 flag or not) -> descriptor code."""
    if isinstance(wbits, int) and not isinstance(wbits, bool) and wbits & SPARSE24:
        return _format_code(wbits & ~SPARSE24) | SPARSE24
    if wbits == "ternary" or wbits == 3:
        return 3
    if wbits in (2, 4, 8):
        return int(wbits)
    raise ValueError(f"wbits must be 2, 4, 8 or 'ternary' (code 3), got {wbits!r}")


def pack_weights(w, wbits, weight_ports: int, data_width: int, *, ternary_packing: str = "2bit",
                 k_slice: int | None = None) -> list[bytes]:
    """``[N, K]`` weights -> one byte string per stripe (§4: one stream per K slice of ``k_slice``
    elements, combined words, the slices one after the other; one slice without ``k_slice``).

    Written element by element from the format rules (not vectorized like the host packer):
    int-b: element i at stream bits [i*b, (i+1)*b) two's complement; ternary 2bit: code
    0 -> 00, +1 -> 01, -1 -> 11; ternary 5trit: byte j = sum_t (w[5j+t] + 1) * 3**t.
    """
    w = np.asarray(w, dtype=np.int64)
    if k_slice is not None and w.shape[1] > k_slice:
        parts = [pack_weights(w[:, k0:k0 + k_slice], wbits, weight_ports, data_width,
                              ternary_packing=ternary_packing) for k0 in range(0, w.shape[1], k_slice)]
        return [b"".join(part[p] for part in parts) for p in range(weight_ports)]
    code = _format_code(wbits)
    vals = [int(v) for v in w.reshape(-1)]
    if code & SPARSE24:                   # 2:4 groups: v0, v1, i0, i1 (numerics.sparse's encoder)
        stream = encode_sparse24_stream(w.reshape(-1), 2 if (code & 15) == 3 else code & 15).tobytes()
    elif code == 3 and ternary_packing == "5trit":
        vals += [0] * (-len(vals) % 5)
        stream = bytes(sum((vals[j + t] + 1) * 3 ** t for t in range(5)) for j in range(0, len(vals), 5))
    else:
        bits = 2 if code == 3 else code
        acc = 0
        for i, v in enumerate(vals):
            acc |= (v & ((1 << bits) - 1)) << (i * bits)
        stream = acc.to_bytes(-(-len(vals) * bits // 8), "little")
    wb = data_width // 8
    stream = _pad(stream, wb * weight_ports)
    words = len(stream) // (wb * weight_ports)
    return [b"".join(stream[(c * weight_ports + p) * wb:(c * weight_ports + p + 1) * wb] for c in range(words))
            for p in range(weight_ports)]


def pack_scales(s, word_bytes: int, *, groups_per_slice: int | None = None) -> bytes:
    """u16 little-endian mantissas ``[N, K/G]`` row-major, per K slice of ``groups_per_slice``
    groups (each slice whole words)."""
    s = np.asarray(s, dtype="<u2")
    if groups_per_slice is not None and s.shape[1] > groups_per_slice:
        return b"".join(pack_scales(s[:, g0:g0 + groups_per_slice], word_bytes)
                        for g0 in range(0, s.shape[1], groups_per_slice))
    return _pad(s.tobytes(), word_bytes)


def pack_inline(w, s, wbits, layout: DesignLayout) -> list[bytes]:
    """``scale_stream: inline``: ``[N, K]`` weights and ``[N, K/G]`` mantissas -> one byte string per
    stripe. Per K slice, written as the rule reads: cut the slice's weight stream and its scale
    stream (u16 row-major) into combined words, then emit scale word 0, ``r`` weight words, scale
    word 1, ``r`` weight words, ... until both run out (``r = G x b / 16``)."""
    lay = layout
    P, wb, geom = lay.mm.weight_ports, lay.word_bytes, lay.matmul
    g, ks_full = lay.mm.group_size, geom.k_slice
    code = _format_code(wbits)
    r = geom.inline_ratio(code)
    w, s = np.asarray(w), np.asarray(s)
    out = [[] for _ in range(P)]
    for k0 in range(0, w.shape[1], ks_full):
        ws = pack_weights(w[:, k0:k0 + ks_full], code, P, lay.config.data_width,
                          ternary_packing=lay.mm.ternary_packing)
        wwords = [b"".join(ws[p][c * wb:(c + 1) * wb] for p in range(P)) for c in range(len(ws[0]) // wb)]
        sraw = pack_scales(s[:, k0 // g:(k0 + ks_full) // g], wb * P)
        swords = [sraw[c:c + wb * P] for c in range(0, len(sraw), wb * P)]
        stream = []
        while wwords or swords:
            if swords:
                stream.append(swords.pop(0))
            stream += wwords[:r]
            wwords = wwords[r:]
        for word in stream:
            for p in range(P):
                out[p].append(word[p * wb:(p + 1) * wb])
    return [b"".join(parts) for parts in out]


def pack_bias(bias, word_bytes: int) -> bytes:
    """int32 little-endian per column."""
    return _pad(np.asarray(bias, dtype="<i4").tobytes(), word_bytes)


def pack_requant(mult, shift, word_bytes: int) -> bytes:
    """u64 per column: bits 31:0 ``mult`` (int32), bits 38:32 ``shift``."""
    mult = np.asarray(mult, dtype=np.int64) & 0xFFFFFFFF
    shift = np.asarray(shift, dtype=np.int64) & 0x7F
    return _pad((mult | (shift << 32)).astype("<u8").tobytes(), word_bytes)


def unpack_outputs(buf: bytes, m: int, n: int, rows: int, out_mode: int) -> np.ndarray:
    """Blocked Y (§4) -> ``[M, N]``; also checks that padded rows are 0."""
    dt = np.dtype("<i4") if out_mode == OutMode.INT32 else np.dtype("i1")
    blocks = -(-m // rows)
    y = np.frombuffer(bytes(buf[:blocks * n * rows * dt.itemsize]), dtype=dt).reshape(blocks, n, rows)
    full = y.transpose(0, 2, 1).reshape(blocks * rows, n)
    if np.any(full[m:] != 0):
        raise AssertionError("rows past M are not zero")
    return full[:m]


@dataclass
class MatmulCase:
    """One MATMUL job: operands, output mode and (after the run) the engine's result."""

    x: np.ndarray
    w: np.ndarray
    s: np.ndarray
    wbits: int                       # descriptor code: 2, 4, 8, or 3 (ternary)
    out_mode: int = OutMode.INT32
    out_shift: int = 0
    mult: np.ndarray | None = None
    shift: np.ndarray | None = None
    bias: np.ndarray | None = None
    bias_shift: int = 0
    addrs: dict = field(default_factory=dict)
    result: np.ndarray | None = None
    pad_bytes: bytes | None = None

    def expected(self, group_size: int) -> np.ndarray:
        from ...numerics.matmul import matmul_int32, matmul_int8
        bias = dict(bias=self.bias, bias_shift=self.bias_shift)
        if self.out_mode == OutMode.INT32:
            return matmul_int32(self.x, self.w, self.s, group_size, self.out_shift, **bias)
        return matmul_int8(self.x, self.w, self.s, group_size, self.mult, self.shift, **bias)


def random_case(layout: DesignLayout, rng: np.random.Generator, *, m: int, k: int, n: int, wbits,
                out_mode: int = OutMode.INT32, extremes: bool = True, bias: bool = False,
                sparse24: bool = False) -> MatmulCase:
    """Random operands for one job, K padded to ``k_align``, with shifts that give a spread of
    results (some saturated, some exact) and, with ``extremes``, rows/columns of -128 and of
    the most negative weight, and full-scale scale mantissas. ``wbits``: 2, 4, 8, 'ternary'
    or code 3; the case holds the descriptor code. ``bias``: a random int32 bias per column with
    a random shift (extremes: the most negative bias at the largest shift in column 0).
    ``sparse24``: the weights are pruned 2:4 (magnitude) and the case's code has SPARSE24."""
    from ...numerics.matmul import add_bias, matmul_accumulate

    wbits = _format_code(wbits)
    k = layout.matmul.pad_k(k)
    g = layout.mm.group_size
    wmin, wmax = (-1, 1) if wbits == 3 else (-(1 << (wbits - 1)), (1 << (wbits - 1)) - 1)
    x = rng.integers(-128, 128, (m, k))
    w = rng.integers(wmin, wmax + 1, (n, k))
    s = rng.integers(0, 1 << layout.mm.scale_bits, (n, k // g))
    if extremes:
        x[0, :] = -128
        w[0, :] = wmin
        s[0, :] = (1 << layout.mm.scale_bits) - 1
        if m > 1:
            x[-1, : k // 2] = 127
        if n > 1:
            w[-1, ::2] = wmax
            s[-1, 0] = 0
    if sparse24:
        w = prune_2_4(w)
        wbits |= SPARSE24
    case = MatmulCase(x, w, s, wbits, out_mode)
    if bias:
        top = layout.matmul.widths.max_bias_shift
        case.bias = rng.integers(-(1 << 31), 1 << 31, n)
        case.bias_shift = int(rng.integers(0, top + 1))
        if extremes:
            case.bias[0], case.bias_shift = -(1 << 31), top
    acc = add_bias(matmul_accumulate(x, w, s, g), case.bias, case.bias_shift)
    if out_mode == OutMode.INT32:
        top = max(int(abs(v)).bit_length() for v in acc.flat)
        case.out_shift = int(np.clip(top - 31 + rng.integers(-1, 4), 0, 63))
    else:
        mult = rng.integers(-(1 << 31), 1 << 31, n)
        if extremes:
            mult[0] = -(1 << 31)
        shift = np.zeros(n, dtype=np.int64)
        for j in range(n):
            top = max(int(abs(v * int(mult[j]))).bit_length() for v in acc[:, j])
            shift[j] = int(np.clip(top - 7 + rng.integers(-2, 3), 0, 127))
        if extremes and n > 2:
            shift[1], shift[2] = 0, 127
        case.mult, case.shift = mult, shift
    return case


class EngineBench(DmaBench):
    """Runs :class:`MatmulCase` jobs on a ``MatmulEngine`` in amaranth.sim.

    ``stall`` is the chance that a reader holds back a word (and a command
    port its ready) in any cycle; ``backpressure`` the chance that the writer
    is not ready for ``out_data``. ``fires``/``cycles`` per job are recorded.
    """

    def __init__(self, layout: DesignLayout, *, seed: int = 0, stall: float = 0.0,
                 backpressure: float = 0.0, engine=None):
        from .engine import MatmulEngine

        super().__init__(layout, engine if engine is not None else MatmulEngine(layout), seed=seed,
                         stall=stall, backpressure=backpressure)
        self.cases: list[MatmulCase] = []
        self.stats: list[dict] = []

    # -- memory --------------------------------------------------------------------------
    def alloc(self, data: bytes) -> int:
        wb = self.layout.word_bytes
        addr = len(self.mem) + 4096        # never 0; leave a gap between buffers
        addr = -(-addr // wb) * wb
        self.mem.extend(bytes(addr - len(self.mem)))
        self.mem.extend(_pad(bytes(data), wb))
        return addr

    def add(self, case: MatmulCase) -> MatmulCase:
        lay = self.layout
        wb, P, W = lay.word_bytes, lay.mm.weight_ports, lay.config.data_width
        geom = lay.matmul
        case.addrs["x"] = self.alloc(pack_activations(case.x, wb))
        if geom.inline_scales:          # scales in the stripes; s_addr points at garbage the engine ignores
            case.addrs["w"] = [self.alloc(b) for b in pack_inline(case.w, case.s, case.wbits, lay)]
            case.addrs["s"] = self.alloc(bytes([0xC3]) * wb)
        else:
            case.addrs["w"] = [self.alloc(b) for b in pack_weights(case.w, case.wbits, P, W,
                                                                    ternary_packing=lay.mm.ternary_packing,
                                                                    k_slice=geom.k_slice)]
            case.addrs["s"] = self.alloc(pack_scales(case.s, wb, groups_per_slice=geom.k_slice // lay.mm.group_size))
        case.addrs["b"] = self.alloc(pack_bias(case.bias, wb)) if case.bias is not None else 0
        if case.out_mode == OutMode.INT8:
            case.addrs["q"] = self.alloc(pack_requant(case.mult, case.shift, wb))
        else:
            case.addrs["q"] = 0
        m, k, n = case.x.shape[0], case.x.shape[1], case.w.shape[0]
        out_bytes = lay.matmul.out_bytes(m, n, case.out_mode)
        case.addrs["y"] = self.alloc(bytes([0xA5]) * out_bytes)     # garbage: the engine must overwrite
        pbytes = geom.partial_bytes(m, n, k, case.out_mode)
        case.addrs["p"] = self.alloc(bytes([0x5A]) * pbytes) if pbytes else 0
        self.cases.append(case)
        return case

    def run(self, max_cycles: int = 200_000, vcd: str | None = None):
        from amaranth.sim import Simulator

        dut, lay = self.dut, self.layout
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        self.add_dma(sim)
        counters = {"cycles": 0, "fires": 0, "busy": 0, "first_fire": None, "last_fire": None,
                    "first_out": None}

        async def monitor(ctx):
            while True:
                _, _, fire, busy, ov = await ctx.tick().sample(dut.mac_inc, dut.busy, dut.out_data.valid)
                counters["cycles"] += 1
                if ov and counters["first_out"] is None:
                    counters["first_out"] = counters["cycles"]
                fire = int(fire != 0)            # a fire adds rows x lanes MACs (rows >= 1)
                counters["fires"] += fire
                if fire:
                    if counters["first_fire"] is None:
                        counters["first_fire"] = counters["cycles"]
                    counters["last_fire"] = counters["cycles"]
                counters["busy"] += busy

        sim.add_testbench(monitor, background=True)

        async def driver(ctx):
            for case in self.cases:
                m, k = case.x.shape
                n = case.w.shape[0]
                before = dict(counters)
                counters["first_fire"] = counters["first_out"] = None
                fields = dict(m=m, k=k, n=n, wbits=case.wbits, out_mode=case.out_mode,
                              out_shift=case.out_shift, x_addr=case.addrs["x"], s_addr=case.addrs["s"],
                              q_addr=case.addrs["q"], y_addr=case.addrs["y"], bias=int(case.bias is not None),
                              bias_shift=case.bias_shift, b_addr=case.addrs["b"], p_addr=case.addrs["p"])
                for f, v in fields.items():
                    ctx.set(getattr(dut.job.payload, f), v)
                for i, a in enumerate(case.addrs["w"]):
                    ctx.set(dut.job.payload.w_addr[i], a)
                await self.submit(ctx, max_cycles, lambda: f"job {case.x.shape}x{case.w.shape} (fires so far "
                                                           f"{counters['fires'] - before['fires']})")
                st = {k: counters[k] - before[k] for k in ("cycles", "fires", "busy")}
                if counters["first_fire"] is not None:
                    st["fire_span"] = counters["last_fire"] - counters["first_fire"] + 1
                    st["first_fire"] = counters["first_fire"] - before["cycles"]
                    if counters["first_out"] is not None:
                        st["fire_to_first_out"] = counters["first_out"] - counters["first_fire"]
                self.stats.append(st)
                out = lay.matmul.out_bytes(m, n, case.out_mode)
                raw = self.mem[case.addrs["y"]:case.addrs["y"] + out]
                case.result = unpack_outputs(raw, m, n, lay.mm.rows, case.out_mode)
                used = lay.matmul.row_blocks(m) * n * lay.mm.rows * (4 if case.out_mode == OutMode.INT32 else 1)
                case.pad_bytes = bytes(raw[used:])

        sim.add_testbench(driver)
        self.run_sim(sim, vcd)
        return self.cases
