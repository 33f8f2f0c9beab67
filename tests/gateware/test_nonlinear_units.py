"""Non-linear units in amaranth.sim: bit-exact against hbmforge.numerics.nonlinear under random input
stalls and random output back-pressure; throughput and latency; constructor checks; Verilog lint."""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import UnusedElaboratable

from hbmforge.generators.nonlinear import GELU, SiLU
from hbmforge.numerics.nonlinear import (
    ActivationSpec,
    NormSpec,
    RsqrtSpec,
    activation_int,
    norm_int,
    norm_test_vectors,
    rsqrt_int,
)
from sim_helpers import rejects, simulate


# -- scenario helpers -------------------------------------------------------------------------------

def _sender(stream, items, rng, stall):
    """A background testbench that offers ``items`` on ``stream``, idling with probability ``stall``."""
    async def send(ctx):
        for item in items:
            while rng.random() < stall:
                ctx.set(stream.valid, 0)
                await ctx.tick()
            ctx.set(stream.payload, item)
            ctx.set(stream.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(stream.ready)
                if ready:
                    break
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
    from hbmforge.emit import lint
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
        for k in range(cycles):
            if k < n:
                ctx.set(dut.i.payload, payload(k))
            ctx.set(dut.i.valid, k < n)
            _, _, iv, ir, ov = await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid)
            if iv and ir:
                ins.append(k)
            if ov:
                outs.append(k)

    simulate(dut, bench)
    return ins, outs


def test_activation_streams_one_beat_per_cycle_with_latency_3():
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
    assert (g.width, g.frac_bits, g.seg_bits, g.lanes, g.function, g.latency) == (12, 8, 3, 2, "gelu", 3)
    with pytest.raises(AttributeError):
        g.width = 16


@pytest.mark.parametrize("cls", [GELU, SiLU])
def test_activation_verilog_passes_lint(cls, tmp_path):
    _lint(cls(lanes=2), tmp_path, cls.__name__.lower())
