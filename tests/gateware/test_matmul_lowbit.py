"""MatmulEngine with int2 and ternary ('2bit', '5trit') weights in amaranth.sim, bit-exact with numerics.

Every scenario packs its buffers with generators/matmul/testing.py (written from
the §4 format rules), serves the DMA commands with random stalls on every input
stream and random back-pressure on ``out_data``, and compares Y with the golden
model. Units (trit decoder, trit gearbox, lane widening, the 2-bit products) are
checked on their own first.
"""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from hbmforge.config import parse_config
from hbmforge.generators.matmul.array import MacArray
from hbmforge.generators.matmul.gearbox import TritGearbox, decode_five_trits
from hbmforge.generators.matmul.testing import EngineBench, random_case
from hbmforge.generators.matmul.unpack import WeightUnpacker, widen_lanes
from hbmforge.encodings import OutMode
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict
from sim_helpers import gearbox_output_valid, rejects, run_gearbox, simulate

INT32, INT8 = OutMode.INT32, OutMode.INT8
CODE = {-1: 0b11, 0: 0b00, 1: 0b01}


def _layout(data_width=64, **engine):
    cfg = tiny_config_dict(**engine)
    cfg["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(cfg))


def _run(layout, shapes, *, seed=0, stall=0.3, backpressure=0.3, max_cycles=20_000, bias=False):
    """Jobs ``(m, k, n, wbits, out_mode)`` back to back on one engine; every result bit-exact."""
    rng = np.random.default_rng(seed)
    bench = EngineBench(layout, seed=seed, stall=stall, backpressure=backpressure)
    for m, k, n, wbits, mode in shapes:
        bench.add(random_case(layout, rng, m=m, k=k, n=n, wbits=wbits, out_mode=mode, bias=bias))
    bench.run(max_cycles=max_cycles)
    for case in bench.cases:
        np.testing.assert_array_equal(case.result, case.expected(layout.mm.group_size),
                                      err_msg=f"job {case.x.shape}x{case.w.shape} wbits={case.wbits} "
                                              f"mode={case.out_mode}")
        assert not any(case.pad_bytes), "output pad bytes must be 0"
    return bench


# -- units ------------------------------------------------------------------------------------

def test_trit_decoder_covers_every_byte():
    m = Module()
    b = Signal(8)
    out = decode_five_trits(m, b, name="d")

    async def bench(ctx):
        for v in range(256):
            ctx.set(b, v)
            await ctx.delay(1e-9)
            trits = [(v // 3 ** t) % 3 - 1 for t in range(5)] if v < 243 else [0] * 5
            assert ctx.get(out) == sum(CODE[t] << (2 * i) for i, t in enumerate(trits)), v

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("src,dst,lanes", [(2, 4, 16), (2, 8, 16), (4, 8, 12), (2, 8, 8)])
def test_widening_sign_extends_every_lane(src, dst, lanes):
    rng = random.Random(src * dst + lanes)
    m = Module()
    c, o = Signal(src * lanes), Signal(dst * lanes)
    m.d.comb += o.eq(widen_lanes(m, c, lanes, src, dst, name="w"))
    lo, hi = -(1 << (src - 1)), (1 << (src - 1)) - 1
    cases = [[lo] * lanes, [hi] * lanes] + [[rng.randint(lo, hi) for _ in range(lanes)] for _ in range(10)]

    async def bench(ctx):
        for vals in cases:
            ctx.set(c, sum((v & ((1 << src) - 1)) << (src * i) for i, v in enumerate(vals)))
            await ctx.delay(1e-9)
            assert ctx.get(o) == sum((v & ((1 << dst) - 1)) << (dst * i) for i, v in enumerate(vals))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("width,lanes", [(64, 16), (64, 64), (128, 32), (256, 128)])
def test_trit_gearbox_keeps_order_drops_packet_tails_and_never_bubbles(width, lanes):
    """Packets of whole items from whole words; random input stalls and output readiness."""
    nbytes = width // 8
    rng = random.Random(width + lanes)
    packets = []
    for _ in range(3):
        items = rng.randint(1, 4) * max(1, 5 * nbytes // lanes + 1)
        trits = [rng.randint(-1, 1) for _ in range(items * lanes)]
        padded = trits + [0] * (-len(trits) % 5)
        raw = bytes(sum((padded[j + t] + 1) * 3 ** t for t in range(5)) for j in range(0, len(padded), 5))
        raw += bytes(rng.randrange(256) for _ in range(-len(raw) % nbytes))    # garbage tail: dropped
        packets.append((items, trits, [int.from_bytes(raw[i:i + nbytes], "little")
                                       for i in range(0, len(raw), nbytes)]))
    got = run_gearbox(TritGearbox(width, lanes), [(items, words) for items, _, words in packets], rng)
    expect = []
    for items, trits, _ in packets:
        for i in range(items):
            expect.append(sum(CODE[t] << (2 * j) for j, t in enumerate(trits[i * lanes:(i + 1) * lanes])))
    assert got == expect

    # with a source that never stalls and a sink always ready, one item leaves every cycle
    # once the buffer is primed when words carry more trits than an item needs
    if 5 * nbytes >= lanes:
        words = [rng.getrandbits(width) & int("f2" * nbytes, 16) for _ in range(16)]  # bytes < 243
        seen = gearbox_output_valid(TritGearbox(width, lanes), words, 12)
        assert all(seen[2:]), seen


def test_two_and_four_bit_products_are_exact_without_a_multiplier():
    rng = np.random.default_rng(3)
    for fmt, wbits, wvals in (("int2", 2, (-2, -1, 0, 1)), ("ternary", 2, (-1, 0, 1)),
                              ("int4", 4, tuple(range(-8, 8))), ("int4", 3, tuple(range(-4, 4)))):
        R, L, G = 2, 16, 16
        dut = MacArray(rows=R, lanes=L, group_size=G, weight_shape=signed(wbits), tag_layout=unsigned(1),
                       lane_format=fmt)
        assert not re.search(r"^\s*assign .* \* ", verilog.convert(dut, emit_src=False), re.M)    # no $mul
        xs = [np.full((R, L), -128), np.full((R, L), 127)] + [rng.integers(-128, 128, (R, L)) for _ in range(4)]
        ws = [np.full(L, min(wvals)), np.full(L, min(wvals))] + [rng.choice(wvals, L) for _ in range(4)]
        got = []

        async def bench(ctx, xs=xs, ws=ws, dut=dut, got=got):
            for x, w in zip(xs, ws):
                ctx.set(dut.valid, 1)
                for lane in range(L):
                    ctx.set(dut.w[lane], int(w[lane]))
                await ctx.tick()
                ctx.set(dut.valid, 0)
                for r in range(R):
                    for lane in range(L):
                        ctx.set(dut.x[r][lane], int(x[r, lane]) + 128)
                for _ in range(dut.latency - 1):
                    await ctx.tick()
                assert ctx.get(dut.o_valid)
                got.append([int(ctx.get(dut.sums[r][0])) for r in range(R)])

        simulate(dut, bench)
        assert got == [list((x * w[None, :]).sum(axis=1)) for x, w in zip(xs, ws)]
    rejects(lambda: MacArray(rows=1, lanes=16, group_size=16, weight_shape=signed(8), tag_layout=unsigned(1),
                             lane_format="ternary"), ValueError, "2-bit weight lanes")


def _lane_shape(**kw):
    u = WeightUnpacker(lanes=16, weight_ports=1, data_width=64, **kw)
    u._MustUse__silence = True
    return u.lane_shape


def test_unpacker_lane_width_and_bad_parameters():
    assert _lane_shape(weight_bits=(2, "ternary")) == signed(2)
    assert _lane_shape(weight_bits=("ternary", 4)) == signed(4)
    assert _lane_shape(weight_bits=(2, 8)) == signed(8)
    rejects(lambda: WeightUnpacker(lanes=16, weight_ports=1, data_width=64, weight_bits=(1,)), ValueError,
            "weight_bits")
    rejects(lambda: WeightUnpacker(lanes=16, weight_ports=1, data_width=64, weight_bits=("ternary",),
                                   ternary_packing="3bit"), ValueError, "ternary_packing")
    rejects(lambda: TritGearbox(60, 16), ValueError, "in_width")


# -- the engine ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ports", [1, 2])
def test_int2_only_engine_both_output_modes(ports):
    lay = _layout(rows=2, lanes=32, weight_ports=ports, group_size=16, weight_bits=[2])
    assert lay.matmul.widths.max_wbits == 2
    _run(lay, [(5, 64, 3, 2, INT32), (3, 32, 4, 2, INT8), (1, 96, 2, 2, INT32)], seed=ports)


@pytest.mark.parametrize("ports", [1, 2])
def test_ternary_2bit_engine_both_output_modes(ports):
    lay = _layout(rows=3, lanes=16, weight_ports=ports, group_size=32, weight_bits=["ternary"])
    _run(lay, [(4, 64, 3, "ternary", INT32), (2, 32, 5, "ternary", INT8)], seed=10 + ports)


@pytest.mark.parametrize("ports,lanes,data_width", [(1, 16, 64), (2, 64, 64), (1, 32, 128)])
def test_ternary_5trit_engine_with_non_dividing_trit_ratio(ports, lanes, data_width):
    # 5 * P * W / 8 trits per combined word: 40 vs 16 lanes, 80 vs 64, 80 vs 32
    lay = _layout(data_width=data_width, rows=2, lanes=lanes, weight_ports=ports, group_size=16,
                  weight_bits=["ternary"], ternary_packing="5trit", max_k=256)
    _run(lay, [(3, 64, 3, "ternary", INT32), (2, 2 * lanes, 5, "ternary", INT8), (1, lanes, 1, "ternary", INT32)],
         seed=20 + lanes)


def test_mixed_format_engine_switches_formats_between_jobs():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16, weight_bits=[2, "ternary", 4, 8])
    _run(lay, [(3, 32, 3, "ternary", INT32), (2, 48, 2, 2, INT8), (2, 32, 2, 8, INT32),
               (3, 16, 3, 4, INT8), (1, 32, 2, "ternary", INT8)], seed=30)


def test_5trit_and_int2_weights_with_k_split_in_slices_and_a_bias():
    # each K slice is a 5-trit stream of its own (padded to whole words): the trit gearbox drops
    # the leftover trits at every slice's end
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, weight_bits=[2, "ternary"],
                  ternary_packing="5trit", max_k=48, tile_n=2)
    _run(lay, [(3, 112, 5, "ternary", INT8), (5, 80, 3, 2, INT32)], seed=32, bias=True)


def test_mixed_5trit_and_int4_engine():
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, weight_bits=["ternary", 4],
                  ternary_packing="5trit")
    assert lay.matmul.widths.max_wbits == 4
    _run(lay, [(3, 48, 3, "ternary", INT8), (2, 32, 3, 4, INT32), (2, 32, 2, "ternary", INT32)], seed=31)


def test_int4_products_in_luts_engine_mixes_int2_ternary_and_int4():
    # int4_products lut: the array's lanes are shift-and-add ("int4"), bit-exact like the DSP ones
    lay = _layout(rows=2, lanes=32, weight_ports=2, group_size=16, weight_bits=[2, "ternary", 4],
                  int4_products="lut")
    _run(lay, [(3, 64, 3, 4, INT8), (2, 32, 2, 2, INT32), (2, 64, 3, "ternary", INT8), (1, 96, 2, 4, INT32)],
         seed=33)


def test_all_extreme_low_bit_operands_saturate_like_golden():
    lay = _layout(rows=2, lanes=16, weight_ports=1, group_size=16, weight_bits=[2, "ternary"])
    rng = np.random.default_rng(9)
    bench = EngineBench(lay, seed=9, stall=0.2, backpressure=0.2)
    for wbits, wmin in ((2, -2), ("ternary", -1)):
        for mode in (INT32, INT8):
            case = random_case(lay, rng, m=3, k=256, n=3, wbits=wbits, out_mode=mode)
            case.x[:] = -128
            case.w[:] = wmin
            case.w[1, ::3] = 1
            case.s[:] = (1 << 16) - 1
            case.out_shift = 0
            if mode == INT8:
                case.mult[:] = [-(1 << 31), (1 << 31) - 1, 1]
                case.shift[:] = [127, 0, 40]
            bench.add(case)
    bench.run(max_cycles=20_000)
    for case in bench.cases:
        np.testing.assert_array_equal(case.result, case.expected(16))


def test_port_balanced_2bit_and_5trit_engines_fire_at_the_port_rate():
    """No stalls: int2 with L*2 = P*W fires every cycle; 5trit with 40 trits per word for 32
    lanes fires every cycle too (array bound), for 64 lanes every 1.6 cycles (port bound)."""
    for fmt, lanes, packing, per_fire in ((2, 32, "2bit", 1.0), ("ternary", 32, "5trit", 1.0),
                                          ("ternary", 64, "5trit", 1.6)):
        lay = _layout(rows=1, lanes=lanes, weight_ports=1, group_size=32, weight_bits=[fmt],
                      ternary_packing=packing, max_k=512)
        bench = _run(lay, [(1, 512, 8, fmt, INT32)], seed=40, stall=0.0, backpressure=0.0)
        st = bench.stats[0]
        assert st["fires"] == 8 * 512 // lanes
        assert st["fire_span"] <= st["fires"] * per_fire + 4, (fmt, lanes, packing, st)
