"""Non-linear units in amaranth.sim: bit-exact against hbmforge.numerics.nonlinear under random input
stalls and random output back-pressure; throughput and latency; constructor checks; Verilog lint."""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import UnusedElaboratable

from hbmforge.generators.nonlinear import GELU, LayerNorm, RMSNorm, Rsqrt, SiLU
from hbmforge.numerics.nonlinear import (
    ActivationSpec,
    NormSpec,
    RsqrtSpec,
    activation_int,
    norm_int,
    norm_test_vectors,
    rsqrt_int,
)
from sim_helpers import put, random_gap, rejects, simulate


# -- scenario helpers -------------------------------------------------------------------------------

def _sender(stream, items, rng, stall):
    """A background testbench that offers ``items`` on ``stream``, idling with probability ``stall``."""
    async def send(ctx):
        for item in items:
            await random_gap(ctx, stream, rng, stall)
            await put(ctx, stream, item)
        ctx.set(stream.valid, 0)
    return send


def _receiver(stream, n, rng, backpressure, got, convert=lambda v: v):
    """A testbench that takes ``n`` items from ``stream``, refusing with probability ``backpressure``."""
    async def recv(ctx):
        while len(got) < n:
            ctx.set(stream.ready, rng.random() >= backpressure)
            _, _, valid, ready, payload = await ctx.tick().sample(stream.valid, stream.ready, stream.payload)
            if valid and ready:
                got.append(convert(payload))
        ctx.set(stream.ready, 0)
    return recv


def _lanes(payload):
    return [int(v) for v in payload]


def _run_stream(dut, items, n_out, *, seed, stall, backpressure, convert=_lanes, extra=(), deadline=None):
    rng = random.Random(seed)
    got = []
    simulate(dut, _receiver(dut.o, n_out, rng, backpressure, got, convert),
             background=[_sender(dut.i, items, rng, stall), *extra],
             deadline=deadline if deadline is not None else 50 * (len(items) + 50))
    return got


def _lint(dut, tmp_path, name):
    from hbmforge.flows.emit import lint
    text = verilog.convert(dut, name=name, emit_src=False)
    path = tmp_path / f"{name}.v"
    path.write_text(text)
    lint(path, top=name)


# -- GELU / SiLU --------------------------------------------------------------------------------------

def _activation_inputs(spec: ActivationSpec, lanes: int, n: int, rng: np.random.Generator):
    lo, hi = -(1 << (spec.width - 1)), (1 << (spec.width - 1)) - 1
    edges = [lo, lo + 1, -1, 0, 1, hi, hi - 1, 1 << spec.frac_bits, -(1 << spec.frac_bits)]
    x = np.concatenate([edges, rng.integers(lo, hi + 1, n * lanes - len(edges))])
    return x.reshape(n, lanes)


@pytest.mark.parametrize("cls,kw", [
    (GELU, dict()),
    (SiLU, dict()),
    (GELU, dict(width=12, frac_bits=8, seg_bits=3, lanes=2)),
    (SiLU, dict(width=16, frac_bits=12, seg_bits=4, lanes=3)),
    (SiLU, dict(width=10, frac_bits=4, seg_bits=4)),
])
def test_activation_matches_golden_under_stalls_and_backpressure(cls, kw):
    dut = cls(**kw)
    rng = np.random.default_rng(len(kw) + dut.width)
    x = _activation_inputs(dut.spec, dut.lanes, 300, rng)
    got = _run_stream(dut, [list(map(int, row)) for row in x], len(x), seed=dut.width,
                      stall=0.3, backpressure=0.4)
    assert np.array_equal(np.array(got), activation_int(x, dut.spec))


def _edges(dut, n, cycles, payload):
    """Drive ``n`` back-to-back beats with ``o.ready`` high; the clock edges of input and output transfers."""
    ins, outs = [], []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        j = 0
        for k in range(cycles):
            if j < n:
                ctx.set(dut.i.payload, payload(j))
            ctx.set(dut.i.valid, j < n)
            _, _, iv, ir, ov = await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid)
            if iv and ir:
                ins.append(k)
                j += 1
            if ov:
                outs.append(k)

    simulate(dut, bench)
    return ins, outs


def test_activation_streams_one_beat_per_cycle_with_latency_4():
    dut = GELU(lanes=2)
    ins, outs = _edges(dut, 40, 50, lambda k: [k, -k])
    assert ins == list(range(40))
    assert outs == [k + dut.latency for k in ins]


def test_activation_holds_output_until_ready():
    dut = SiLU()
    x = [[v] for v in (-5000, -3, 0, 700, 20000)]
    got = _run_stream(dut, x, len(x), seed=3, stall=0.0, backpressure=0.9)
    assert got == [[int(v)] for v in activation_int(np.array(x)[:, 0], dut.spec)]


def test_activation_rejects_bad_parameters():
    rejects(lambda: GELU(frac_bits=15), ValueError, "frac_bits")
    rejects(lambda: GELU(width=3), ValueError, "width")
    rejects(lambda: SiLU(seg_bits=9), ValueError, "seg_bits")
    rejects(lambda: SiLU(frac_bits=3, seg_bits=4), ValueError, "seg_bits")
    rejects(lambda: GELU(lanes=0), ValueError, "lanes")
    rejects(lambda: GELU(lanes=65), ValueError, "lanes")
    rejects(lambda: GELU(width="16"), TypeError, "width")


def _unused(make):
    """Build a component that will not be elaborated, without the UnusedElaboratable warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        obj = make()
        obj._MustUse__silence = True
    return obj


def test_activation_parameters_are_read_only():
    g = _unused(lambda: GELU(width=12, frac_bits=8, seg_bits=3, lanes=2))
    assert (g.width, g.frac_bits, g.seg_bits, g.lanes, g.function, g.latency) == (12, 8, 3, 2, "gelu", 5)
    with pytest.raises(AttributeError):
        g.width = 16


@pytest.mark.parametrize("cls", [GELU, SiLU])
def test_activation_verilog_passes_lint(cls, tmp_path):
    _lint(cls(lanes=2), tmp_path, cls.__name__.lower())


# -- Rsqrt ------------------------------------------------------------------------------------------

def _rsqrt_inputs(bits: int, n: int, rng: random.Random):
    fixed = [1, 2, 3, 4, (1 << bits) - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1]
    return fixed + [rng.randrange(1, 1 << rng.randrange(1, bits + 1)) for _ in range(n - len(fixed))]


@pytest.mark.parametrize("kw", [dict(in_bits=49), dict(in_bits=20, frac_bits=12, iterations=1, seed_bits=4),
                                dict(in_bits=7, iterations=0)])
def test_rsqrt_matches_golden_under_stalls_and_backpressure(kw):
    dut = Rsqrt(**kw)
    rng = random.Random(kw["in_bits"])
    vs = _rsqrt_inputs(dut.in_bits, 60, rng)
    got = _run_stream(dut, vs, len(vs), seed=1, stall=0.3, backpressure=0.4,
                      convert=lambda p: (int(p.mant), int(p.exp)), deadline=40 * len(vs))
    assert got == [rsqrt_int(v, dut.spec) for v in vs]


@pytest.mark.parametrize("bits", [1, 2, 7, 49, 90])
def test_highest_set_bit_tree(bits):
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator
    from hbmforge.generators.nonlinear.rsqrt import highest_set_bit
    m = Module()
    v = Signal(bits)
    any_, idx = highest_set_bit(v)
    rng = random.Random(bits)
    values = [0, 1, (1 << bits) - 1] + [1 << b for b in range(bits)] + [rng.getrandbits(bits) for _ in range(50)]

    async def bench(ctx):
        for x in values:
            ctx.set(v, x)
            assert (ctx.get(any_), ctx.get(idx) if x else 0) == (int(x != 0), max(x.bit_length() - 1, 0)), x

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_rsqrt_latency():
    dut = Rsqrt(in_bits=49)
    ins, outs = _edges(dut, 1, dut.latency + 10, lambda k: 12345)
    assert outs == [ins[0] + dut.latency]


def test_rsqrt_rejects_bad_parameters():
    rejects(lambda: Rsqrt(in_bits=0), ValueError, "in_bits")
    rejects(lambda: Rsqrt(in_bits=40, frac_bits=31), ValueError, "frac_bits")
    rejects(lambda: Rsqrt(in_bits=40, iterations=5), ValueError, "iterations")
    rejects(lambda: Rsqrt(in_bits=40, seed_bits=0), ValueError, "seed_bits")


# -- RMSNorm / LayerNorm ----------------------------------------------------------------------------

def _norm_run(dut, x, gamma, beta, *, seed, stall, backpressure):
    """Load gamma/beta through ``params``, stream the vectors ``x [n, dim]``; the output vectors."""
    L, B = dut.lanes, dut.beats
    rng = random.Random(seed)
    params = []
    for a in range(B):
        p = {"addr": a, "gamma": [int(v) for v in gamma[a * L:(a + 1) * L]]}
        if beta is not None:
            p["beta"] = [int(v) for v in beta[a * L:(a + 1) * L]]
        params.append(p)
    beats = [[int(v) for v in row[a * L:(a + 1) * L]] for row in x for a in range(B)]
    got = []
    loaded = []

    async def param_sender(ctx):
        await _sender(dut.params, params, rng, stall)(ctx)
        loaded.append(True)

    async def input_sender(ctx):
        while not loaded:                       # the vectors go in after the parameters
            await ctx.tick()
        await _sender(dut.i, beats, rng, stall)(ctx)

    simulate(dut, _receiver(dut.o, len(beats), rng, backpressure, got, _lanes),
             background=[param_sender, input_sender], deadline=20 * (len(beats) + 40 * len(x) + B) + 200)
    return np.array(got).reshape(len(x), dut.dim)


def _norm_case(cls, kw, n, seed):
    dut = cls(**kw)
    sp = dut.spec
    rng = np.random.default_rng(seed)
    x = norm_test_vectors(sp, n, rng)
    glo, ghi = -(1 << (sp.gamma_width - 1)), (1 << (sp.gamma_width - 1)) - 1
    gamma = rng.integers(glo, ghi + 1, sp.dim)
    gamma[:2] = [glo, ghi]
    beta = rng.integers(-(1 << (sp.out_width - 1)), 1 << (sp.out_width - 1), sp.dim) if sp.center else None
    return dut, x, gamma, beta


@pytest.mark.parametrize("cls,kw", [
    (RMSNorm, dict(dim=16, lanes=2)),
    (LayerNorm, dict(dim=16, lanes=4)),
    (RMSNorm, dict(dim=12, lanes=3, width=12, frac_bits=6, gamma_width=8, gamma_frac_bits=6, out_width=12,
                   out_frac_bits=8, eps=1e-6)),
    (LayerNorm, dict(dim=6, lanes=1, eps=0.25, gamma_width=10, gamma_frac_bits=0, out_frac_bits=14)),
    (LayerNorm, dict(dim=4, lanes=4, width=8, frac_bits=4, out_width=20, out_frac_bits=12)),
])
def test_norm_matches_golden_under_stalls_and_backpressure(cls, kw):
    dut, x, gamma, beta = _norm_case(cls, kw, 16, seed=kw["dim"] * kw["lanes"])
    got = _norm_run(dut, x, gamma, beta, seed=5, stall=0.3, backpressure=0.4)
    assert np.array_equal(got, norm_int(x, gamma, beta, dut.spec))


def test_norm_back_to_back_vectors_overlap_fill_and_drain():
    dut, x, gamma, beta = _norm_case(LayerNorm, dict(dim=32, lanes=2), 6, seed=9)
    got = _norm_run(dut, x, gamma, beta, seed=1, stall=0.0, backpressure=0.0)
    assert np.array_equal(got, norm_int(x, gamma, beta, dut.spec))

    # timing with parameters already loaded (gamma = 0 is fine: only the handshakes matter);
    # vectors of more beats than the Rsqrt unit is busy per vector (one value at a time)
    dut = LayerNorm(dim=64, lanes=2)
    assert dut.beats > dut.rsqrt_busy_cycles
    n = 6
    B, SL = dut.beats, dut.scalar_latency
    ins, outs = _edges(dut, n * B, 4 * n * B, lambda k: [k, -k])
    period = 2 * B + SL - 1                                         # two vectors (two banks)
    assert ins == [p * period + k for p in range(n // 2) for k in range(2 * B)]
    # each vector's drain starts SL cycles after its last input beat and never bubbles
    assert outs == [ins[(j // B) * B + B - 1] + SL + 4 + j % B for j in range(n * B)]
    assert outs[0] == dut.latency


def test_norm_parameters_and_validation():
    r = _unused(lambda: RMSNorm(dim=64, lanes=4, eps=1e-6))
    assert (r.dim, r.lanes, r.beats, r.eps, r.width, r.frac_bits, r.gamma_width, r.gamma_frac_bits,
            r.out_width, r.out_frac_bits, r.rsqrt_bits) == (64, 4, 16, 1e-6, 16, 10, 16, 12, 16, 10, 18)
    with pytest.raises(AttributeError):
        r.dim = 32
    assert "beta" not in r.params.payload.shape().members
    ln = _unused(lambda: LayerNorm(dim=64))
    assert "beta" in ln.params.payload.shape().members
    rejects(lambda: RMSNorm(dim=10, lanes=4), ValueError, "dim 10 must be a multiple of lanes 4")
    rejects(lambda: RMSNorm(dim=0), ValueError, "dim")
    rejects(lambda: RMSNorm(dim=1 << 17), ValueError, "dim")
    rejects(lambda: LayerNorm(dim=8, eps=0.0), ValueError, "eps")
    rejects(lambda: LayerNorm(dim=8, eps=float("nan")), ValueError, "eps")
    rejects(lambda: LayerNorm(dim=8, frac_bits=16), ValueError, "frac_bits")
    rejects(lambda: LayerNorm(dim=8, gamma_width=1), ValueError, "gamma_width")
    rejects(lambda: LayerNorm(dim=8, rsqrt_bits=4), ValueError, "rsqrt_bits")
    rejects(lambda: LayerNorm(dim=8, lanes=128), ValueError, "lanes")
    rejects(lambda: LayerNorm(dim=8.0), TypeError, "dim")


@pytest.mark.parametrize("make", [lambda: Rsqrt(in_bits=49), lambda: RMSNorm(dim=16, lanes=2),
                                  lambda: LayerNorm(dim=24, lanes=4)])
def test_norm_and_rsqrt_verilog_pass_lint(make, tmp_path):
    dut = make()
    _lint(dut, tmp_path, type(dut).__name__.lower())


@pytest.mark.slow
@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
def test_norm_matches_golden_at_a_realistic_dim(cls):
    dut, x, gamma, beta = _norm_case(cls, dict(dim=768, lanes=8), 8, seed=768)
    got = _norm_run(dut, x, gamma, beta, seed=2, stall=0.2, backpressure=0.3)
    assert np.array_equal(got, norm_int(x, gamma, beta, dut.spec))


@pytest.mark.slow
@pytest.mark.parametrize("cls", [GELU, SiLU])
def test_activation_matches_golden_on_every_int16_input(cls):
    dut = cls(lanes=8)
    x = np.arange(-32768, 32768).reshape(-1, 8)
    got = _run_stream(dut, [list(map(int, row)) for row in x], len(x), seed=4, stall=0.1, backpressure=0.1)
    assert np.array_equal(np.array(got), activation_int(x, dut.spec))
