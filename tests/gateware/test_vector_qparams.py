"""The vector engine's group-parameter pipeline (QuantParams) against the golden model, one group
a cycle with gaps, all three modes mixed (amaranth.sim)."""
from __future__ import annotations

import random

from amaranth.sim import Simulator

from hbmforge.encodings import VectorOut
from hbmforge.generators.vector.qparams import QuantParams
from hbmforge.numerics.softmax import reciprocal
from hbmforge.numerics.vector import KV_MAX_HS, KV_MAX_KS, qrec_multiplier, row_scale


def _rsr(v: int, s: int) -> int:
    return v if s == 0 else ((v >> (s - 1)) + 1) >> 1


def golden(mode: VectorOut, A: int, const: int) -> tuple[int, int, int]:
    """(mult, shift, meta) of one group, from hbmforge.numerics.vector's definitions."""
    if mode == VectorOut.KV:
        km, ks, hm, hs = const & 0xFFFF, (const >> 16) & 0x3F, (const >> 32) & 0xFFFF, (const >> 48) & 0x3F
        mant = min(max(_rsr(A * km, ks), 1), 65535)
        y, n = reciprocal(mant)
        return _rsr(hm * y, 10), min(hs + n + 6, 63), mant
    a, e = (int(x) for x in row_scale(A))
    y, n = reciprocal(a)
    if mode == VectorOut.QREC:
        mult, shift = (int(x) for x in qrec_multiplier(a, e, const & 0xFFFF, (const >> 16) & 0xFF))
        meta = mult | shift << 16
    else:
        meta = a | e << 16
    return 127 * y, n + 16 + e, meta


def _absmax(rng: random.Random) -> int:
    bits = rng.choice([0, 1, 5, 15, 16, 17, 24, 31, 32])
    edge = rng.random() < 0.3
    if bits == 0:
        return 0
    return (1 << bits) - 1 if edge else (1 << (bits - 1)) + rng.getrandbits(bits - 1)


def _const(rng: random.Random, mode: VectorOut) -> int:
    if mode == VectorOut.KV:
        return (rng.getrandbits(16) | rng.randint(0, KV_MAX_KS) << 16 | rng.getrandbits(16) << 32
                | rng.randint(0, KV_MAX_HS) << 48)
    return rng.getrandbits(16) | rng.randint(0, 255) << 16


def test_quant_params_match_the_golden_model_every_cycle():
    rng = random.Random(10)
    modes = [VectorOut.ACT8, VectorOut.QREC, VectorOut.KV]
    cases = []
    for _ in range(600):
        mode = rng.choice(modes)
        A = _absmax(rng)
        if mode == VectorOut.KV:
            A &= (1 << 31) - 1               # KV groups hold int32 magnitudes below 2^31
        cases.append(None if rng.random() < 0.2 else (mode, A, _const(rng, mode)))
    dut = QuantParams()
    got = []

    async def bench(ctx):
        for case in cases + [None] * (QuantParams.LATENCY + 1):
            ctx.set(dut.i_valid, case is not None)
            if case is not None:
                ctx.set(dut.mode, case[0])
                ctx.set(dut.absmax, case[1])
                ctx.set(dut.const, case[2])
            await ctx.tick()
            if ctx.get(dut.o_valid):
                got.append((ctx.get(dut.mult), ctx.get(dut.shift), ctx.get(dut.meta)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [golden(*c) for c in cases if c is not None]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"group {i}: got {g}, want {w}"
