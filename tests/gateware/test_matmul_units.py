"""Matmul engine building blocks in amaranth.sim: adapters, unpacker, array, accumulators, output stage,
packer, activation buffer; plus the §4 packers against the host's independent implementation."""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from hbmforge.generators.matmul.accum import GroupAccumulator
from hbmforge.generators.matmul.actbuf import ActivationBuffer
from hbmforge.generators.matmul.array import MacArray
from hbmforge.generators.matmul.gearbox import WidthAdapter
from hbmforge.generators.matmul.pack import OutputPacker
from hbmforge.generators.matmul.requant import OutputStage
from hbmforge.generators.matmul.sequencer import ceil_div_const
from hbmforge.generators.matmul.unpack import WeightUnpacker, _widen_nibbles
from hbmforge.numerics.fixed import rshift_round, saturate
from sim_helpers import rejects, simulate


_rejects = rejects


def _sim(dut, *benches, background=()):
    simulate(dut, *benches, background=background)


async def _wait(ctx, cond, *samples):
    """``ctx.tick().sample(*samples).until(cond)`` as a plain loop (safe in background testbenches)."""
    while True:
        _, _, *values, flag = await ctx.tick().sample(*samples, cond)
        if flag:
            return values


def _sender(stream, items, rng, stall=0.0):
    """A background testbench that sends ``items`` on ``stream`` with random gaps."""
    async def send(ctx):
        await _send(ctx, stream, items, rng, stall)
    return send


async def _send(ctx, stream, items, rng, stall=0.0, set_payload=None):
    for item in items:
        while rng.random() < stall:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        if set_payload:
            set_payload(ctx, item)
        else:
            ctx.set(stream.payload, item)
        ctx.set(stream.valid, 1)
        await _wait(ctx, stream.ready)
    ctx.set(stream.valid, 0)


# -- WidthAdapter ---------------------------------------------------------------------------

@pytest.mark.parametrize("in_w,out_w", [(64, 16), (64, 64), (32, 128)])
def test_width_adapter_splits_and_gathers_low_bits_first_with_stalls(in_w, out_w):
    rng = random.Random(in_w * out_w)
    dut = WidthAdapter(in_w, out_w)
    words = [rng.getrandbits(in_w) for _ in range(24)]
    stream_bits = sum(w << (i * in_w) for i, w in enumerate(words))
    n_items = len(words) * in_w // out_w
    expected = [(stream_bits >> (i * out_w)) & ((1 << out_w) - 1) for i in range(n_items)]
    got = []

    async def consumer(ctx):
        while len(got) < n_items:
            ctx.set(dut.o.ready, rng.random() > 0.3)
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                got.append(payload)

    _sim(dut, consumer, background=[_sender(dut.i, words, rng, stall=0.3)])
    assert got == expected


def test_width_adapter_drops_the_rest_of_the_word_after_a_packets_last_item():
    rng = random.Random(1)
    dut = WidthAdapter(64, 16)                   # 4 items per word
    words = [0x4444_3333_2222_1111, 0x8888_7777_6666_5555, 0xCCCC_BBBB_AAAA_9999]
    # packet 1: 3 items (rest of word 0 dropped); packet 2: 5 items spanning words 1..2
    plan = [(0x1111, 0), (0x2222, 0), (0x3333, 1), (0x5555, 0), (0x6666, 0), (0x7777, 0), (0x8888, 0),
            (0x9999, 1)]
    got = []

    async def consumer(ctx):
        for expect, last in plan:
            ctx.set(dut.o_last, last)
            ctx.set(dut.o.ready, 1)
            payload, = await _wait(ctx, dut.o.valid, dut.o.payload)
            got.append(payload)
        ctx.set(dut.o.ready, 0)

    _sim(dut, consumer, background=[_sender(dut.i, words, rng)])
    assert got == [p for p, _ in plan]


def test_width_adapter_streams_one_item_per_cycle():
    dut = WidthAdapter(32, 8)
    words = list(range(1, 17))
    cycles = []

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        n = 0
        first = None
        c = 0
        while n < 64:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            c += 1
            if valid:
                first = c if first is None else first
                n += 1
        cycles.append(c - first + 1)

    _sim(dut, consumer, background=[_sender(dut.i, words, random.Random(0))])
    assert cycles == [64]


def test_width_adapter_validates_widths():
    _rejects(lambda: WidthAdapter(64, 24), ValueError, "power-of-two")
    _rejects(lambda: WidthAdapter("64", 16), TypeError, "in_width")


# -- weight unpacker --------------------------------------------------------------------------

def test_nibble_widening_sign_extends_every_lane():
    rng = random.Random(2)
    for lanes in (16, 12):
        m = Module()
        c, o = Signal(4 * lanes), Signal(8 * lanes)
        m.d.comb += o.eq(_widen_nibbles(m, c, lanes))
        cases = [[-8] * lanes, [7] * lanes] + [[rng.randrange(-8, 8) for _ in range(lanes)] for _ in range(20)]

        async def bench(ctx):
            for lanes_v in cases:
                ctx.set(c, sum((v & 15) << (4 * i) for i, v in enumerate(lanes_v)))
                await ctx.delay(1e-9)
                assert ctx.get(o) == sum((v & 255) << (8 * i) for i, v in enumerate(lanes_v))

        sim = Simulator(m)
        sim.add_testbench(bench)
        sim.run()


@pytest.mark.parametrize("wbits", [4, 8])
def test_weight_unpacker_zips_stripes_into_signed_lanes(wbits):
    from hbmforge.generators.matmul.testing import pack_weights

    rng = np.random.default_rng(wbits)
    L, P, W = 16, 2, 64
    dut = WeightUnpacker(lanes=L, weight_ports=P, data_width=W, weight_bits=(4, 8))
    lo, hi = -(1 << (wbits - 1)), 1 << (wbits - 1)
    w = rng.integers(lo, hi, (3, 32))                 # 6 chunks
    w[0, :] = lo
    stripes = pack_weights(w, wbits, P, W)
    flat = w.reshape(-1)
    chunks = [list(flat[i * L:(i + 1) * L]) for i in range(len(flat) // L)]
    got = []
    prng = random.Random(wbits)

    async def consumer(ctx):
        ctx.set(dut.wbits, wbits)
        for i in range(len(chunks)):
            ctx.set(dut.o_last, i == len(chunks) - 1)
            ctx.set(dut.o.ready, 1)
            lanes, = await _wait(ctx, dut.o.valid, dut.o.payload)
            got.append([int(v) for v in lanes])
            ctx.set(dut.o.ready, 0)
            for _ in range(prng.randrange(2)):
                await ctx.tick()

    def stripe_sender(p):
        words = [int.from_bytes(stripes[p][i:i + 8], "little") for i in range(0, len(stripes[p]), 8)]
        return _sender(dut.w_data[p], words, prng, stall=0.3)

    _sim(dut, consumer, background=[stripe_sender(p) for p in range(P)])
    assert got == [[int(v) for v in c] for c in chunks]


# -- MAC array and accumulation ---------------------------------------------------------------

@pytest.mark.parametrize("lanes,group", [(16, 16), (32, 8 * 2), (16, 64)])
def test_mac_array_group_sums_are_exact_for_extreme_operands(lanes, group):
    rng = np.random.default_rng(lanes + group)
    R = 3
    dut = MacArray(rows=R, lanes=lanes, group_size=group, weight_shape=signed(8), tag_layout=unsigned(8))
    span, ng = min(lanes, group), max(1, lanes // group)
    xs = [np.full((R, lanes), -128), np.full((R, lanes), 127)] + [rng.integers(-128, 128, (R, lanes))
                                                                  for _ in range(6)]
    ws = [np.full(lanes, -128), np.full(lanes, -128)] + [rng.integers(-128, 128, lanes) for _ in range(6)]
    got = []

    async def bench(ctx):
        for i in range(len(xs) + dut.latency + 1):
            if i < len(xs):
                ctx.set(dut.valid, 1)
                ctx.set(dut.tag, i)
                for l in range(lanes):
                    ctx.set(dut.w[l], int(ws[i][l]))
            else:
                ctx.set(dut.valid, 0)
            if 0 < i <= len(xs):                    # activations one cycle after the fire
                for r in range(R):
                    for l in range(lanes):
                        ctx.set(dut.x[r][l], (int(xs[i - 1][r, l]) + 128) & 0xFF)
            await ctx.tick()
            if ctx.get(dut.o_valid):
                got.append((ctx.get(dut.o_tag), [[ctx.get(dut.sums[r][j]) for j in range(ng)]
                                                 for r in range(R)]))

    _sim(dut, bench)
    assert [t for t, _ in got] == list(range(len(xs)))
    for (_, sums), x, w in zip(got, xs, ws):
        exp = [[int(np.dot(x[r, j * span:(j + 1) * span], w[j * span:(j + 1) * span])) for j in range(ng)]
               for r in range(R)]
        assert sums == exp


def test_group_accumulator_scales_groups_spanning_several_fires():
    rng = np.random.default_rng(3)
    R, fpg, groups_per_col = 2, 4, 3                  # 4 fires per group, 3 groups per column
    dut = GroupAccumulator(rows=R, groups=1, sum_shape=signed(20), group_bits=22, scale_bits=16,
                           acc_bits=40, tag_layout=unsigned(4), fires_per_group=fpg)
    cols = 3
    fires = []
    expected = []
    for col in range(cols):
        acc = [0] * R
        for g in range(groups_per_col):
            scale = int(rng.integers(0, 1 << 16)) if g else (1 << 16) - 1
            part = [0] * R
            for f in range(fpg):
                sums = [int(v) for v in rng.integers(-(1 << 19), 1 << 19, R)]
                part = [p + s for p, s in zip(part, sums)]
                fires.append(dict(sums=sums, grp_first=f == 0, grp_last=f == fpg - 1, col_first=g == 0,
                                  col_last=(g == groups_per_col - 1 and f == fpg - 1), scale=scale, tag=col))
            acc = [a + p * scale for a, p in zip(acc, part)]
        expected.append((col, acc))
    got = []

    async def bench(ctx):
        pending = list(fires)
        idle = 0
        while pending or idle < dut.latency + 2:
            if pending and rng.random() < 0.8:          # gaps between fires
                f = pending.pop(0)
                ctx.set(dut.valid, 1)
                for r in range(R):
                    ctx.set(dut.sums[r][0], f["sums"][r])
                for k in ("grp_first", "grp_last", "col_first", "col_last"):
                    ctx.set(getattr(dut, k), f[k])
                ctx.set(dut.scales[0], f["scale"])
                ctx.set(dut.tag, f["tag"])
            else:
                ctx.set(dut.valid, 0)
                idle += not pending
            await ctx.tick()
            if ctx.get(dut.o_valid):
                got.append((ctx.get(dut.o_tag), [ctx.get(dut.acc[r]) for r in range(R)]))

    _sim(dut, bench)
    assert got == expected


# -- output stage -----------------------------------------------------------------------------

@pytest.mark.parametrize("acc_bits,halves", [(20, 1), (44, 1), (61, 1), (44, 2), (61, 2)])
def test_output_stage_rounds_and_saturates_like_golden(acc_bits, halves):
    """halves=2: two columns (the pair fire) with their own mult and shift, and INT8 columns mixed
    with INT32 ones (one out_shift for both halves)."""
    rng = random.Random(acc_bits * halves)
    Rh = 2
    R = Rh * halves
    dut = OutputStage(rows=R, acc_bits=acc_bits, halves=halves)
    top, bot = (1 << (acc_bits - 1)) - 1, -(1 << (acc_bits - 1))

    def acc_value():
        if rng.random() < 0.25:
            return rng.choice([bot, top, 0, -1, 1, bot + 1])
        b = rng.randrange(1, acc_bits)
        return rng.randrange(-(1 << (b - 1)), 1 << (b - 1))

    cases = []
    for _ in range(400):
        int8 = rng.random() < 0.6
        acc = [acc_value() for _ in range(R)]
        mults, shifts = [], []
        for h in range(halves):
            mult = rng.choice([-(1 << 31), (1 << 31) - 1, 0, 1, -1, rng.randrange(-(1 << 31), 1 << 31)])
            mag = max(1, max(abs(a * (mult if int8 else 1)) for a in acc[h * Rh:(h + 1) * Rh]).bit_length())
            if int8:
                shift = rng.choice([0, 1, 30, 31, 32, 126, 127, max(0, min(127, mag - rng.randrange(0, 10)))])
            else:
                shift = rng.choice([0, 1, 62, 63, max(0, min(63, mag - rng.randrange(-2, 34)))])
            mults.append(mult)
            shifts.append(shift if int8 or h == 0 else shifts[0])
        cases.append((int8, acc, mults, shifts, rng.randrange(0, Rh + 1)))
    got = []

    async def bench(ctx):
        for i in range(len(cases) + dut.latency + 1):
            if i < len(cases):
                int8, acc, mults, shifts, rows = cases[i]
                ctx.set(dut.valid, 1)
                ctx.set(dut.int8, int8)
                for r in range(R):
                    ctx.set(dut.acc[r], acc[r])
                for h, sfx in enumerate(["", "_odd"][:halves]):
                    ctx.set(getattr(dut, "mult" + sfx), mults[h])
                    ctx.set(getattr(dut, "shift" + sfx), shifts[h] if int8 else 0)
                ctx.set(dut.out_shift, 0 if int8 else shifts[0])
                ctx.set(dut.rows_valid, rows)
            else:
                ctx.set(dut.valid, 0)
            await ctx.tick()
            if ctx.get(dut.o_valid):
                got.append([ctx.get(dut.y[r]) for r in range(R)])

    _sim(dut, bench)
    assert len(got) == len(cases)
    for (int8, acc, mults, shifts, rows), y in zip(cases, got):
        exp = [int(saturate(rshift_round(a * mults[r // Rh] if int8 else a, shifts[r // Rh]), 8 if int8 else 32))
               if r % Rh < rows else 0 for r, a in enumerate(acc)]
        assert y == exp, (int8, acc, mults, shifts, rows)


def test_output_stage_rejects_accumulators_wider_than_62_bits():
    _rejects(lambda: OutputStage(rows=2, acc_bits=63), ValueError, "acc_bits")


# -- output packer ----------------------------------------------------------------------------

_EBYTES = {0: 4, 1: 1, 2: 8}          # column mode -> element bytes (int32, int8, raw int64)


def _packed_words(columns, W: int = 64) -> list[int]:
    """What the packer must emit for ``columns`` of ``(mode, values, last)``: the elements little-endian
    one after another, a zero-padded word after each column marked last."""
    raw = b""
    for mode, col, last in columns:
        raw += b"".join(int(v).to_bytes(_EBYTES[mode], "little", signed=True) for v in col)
        if last:
            raw += bytes(-len(raw) % (W // 8))
    return [int.from_bytes(raw[i:i + W // 8], "little") for i in range(0, len(raw), W // 8)]


async def _pack(ctx, dut, columns, rng, *, valid_p: float, ready_p: float, until_finished: bool,
                max_cycles: int = 2000) -> list[int]:
    """Offer ``columns`` (mode, values, last) with random gaps and back-pressure; the words out."""
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    words, pending = [], list(columns)
    for _ in range(max_cycles):
        if until_finished and ctx.get(dut.finished):
            break
        if pending:
            mode, col, last = pending[0]
            for r, v in enumerate(col):
                ctx.set(dut.i.payload.y[r], v)
            if hasattr(dut.i.payload, "pair"):          # a pair item holds two columns' results
                ctx.set(dut.i.payload.pair, len(col) > len(dut.i.payload.y) // 2)
            ctx.set(dut.i.payload.mode, mode)
            ctx.set(dut.i.payload.last, last)
            ctx.set(dut.i.valid, rng.random() < valid_p)
        else:
            ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, rng.random() < ready_p)
        _, _, iv, ir, ov, orr, word = await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid,
                                                              dut.o.ready, dut.o.payload)
        if iv and ir:
            pending.pop(0)
        if ov and orr:
            words.append(word)
    return words


def _pack_jobs(dut, jobs, rng) -> list[list[int]]:
    """Each job's columns through the packer (random gaps and back-pressure) until it finishes: its words."""
    got = []

    async def bench(ctx):
        for cols in jobs:
            got.append(await _pack(ctx, dut, cols, rng, valid_p=0.7, ready_p=0.5, until_finished=True))

    _sim(dut, bench)
    return got


@pytest.mark.parametrize("rows,mode", [(4, 0), (4, 1), (3, 0), (3, 1), (16, 0), (1, 1), (2, 2), (3, 2)])
def test_packer_emits_blocked_bytes_with_zero_padding_under_backpressure(rows, mode):
    """Columns of one element size (mode 0 int32, 1 int8, 2 raw int64); a column marked last
    flushes a zero-padded word."""
    rng = random.Random(rows * 3 + mode)
    dut = OutputPacker(rows=rows, data_width=64)
    top = 1 << (8 * _EBYTES[mode] - 1)
    jobs = [[(mode, [rng.randrange(-top, top) for _ in range(rows)], c == ncols - 1) for c in range(ncols)]
            for ncols in (5, 1, 8)]
    assert _pack_jobs(dut, jobs, rng) == [_packed_words(cols) for cols in jobs]


def test_packer_switches_element_size_only_after_the_previous_flush_left():
    """A split-K job: raw int64 partial sums (flushed at the pass end), then int8 columns of Y:
    every word leaves in column order, none lost while the other path still holds one."""
    rng = random.Random(7)
    rows = 3
    dut = OutputPacker(rows=rows, data_width=64)
    seq = [(2, [rng.randrange(-(1 << 40), 1 << 40) for _ in range(rows)], i == 2) for i in range(3)] + \
          [(1, [rng.randrange(-128, 128) for _ in range(rows)], i == 4) for i in range(5)]
    got = []

    async def bench(ctx):
        got.extend(await _pack(ctx, dut, seq, rng, valid_p=1.0, ready_p=0.3, until_finished=False, max_cycles=400))

    _sim(dut, bench)
    assert got == _packed_words(seq)


@pytest.mark.parametrize("rows", [1, 3])
def test_packer_with_pairs_writes_two_column_items_as_two_consecutive_columns(rows):
    """The pair fire's items (two columns' results), every mode, jobs of pairs between jobs of single
    columns (a job's items are all one or the other): the same bytes as the columns one by one."""
    rng = random.Random(rows)
    dut = OutputPacker(rows=rows, data_width=64, pairs=True)
    jobs = []
    for mode in (1, 0, 2, 1):
        top = 1 << (8 * _EBYTES[mode] - 1)
        for width in (2, 1):
            n = rng.randrange(1, 8)
            jobs.append([(mode, [rng.randrange(-top, top) for _ in range(rows * width)], c == n - 1)
                         for c in range(n)])
    assert _pack_jobs(dut, jobs, rng) == [_packed_words(cols) for cols in jobs]


# -- activation buffer ------------------------------------------------------------------------

def _engine_geometry(**engine):
    from hbmforge.config import parse_config
    from hbmforge.generators.matmul.geometry import EngineGeometry
    from hbmforge.layout import DesignLayout

    from designs import tiny_config_dict
    return EngineGeometry.of(DesignLayout(parse_config(tiny_config_dict(**engine))))


def test_activation_ring_holds_row_blocks_until_released_and_reuses_their_slots():
    """Two passes of row blocks through a ring of two slots: a block is readable once filled, the
    third block waits for a release, every line reads back as x + 128 two cycles after its address."""
    from hbmforge.generators.matmul.actbuf import ActivationBuffer

    rng = random.Random(4)
    geom = _engine_geometry(rows=2, lanes=16, max_k=64, tile_m=4)     # 2 slots of 4 lines per bank
    R, L, K = geom.rows, geom.lanes, 64
    dut = ActivationBuffer(geom)
    assert geom.act_depth == 8 and dut.READ_LATENCY == 2
    passes = [(3, 2), (2, 1)]                       # (rows, blocks) of two passes: blocks of 2, 1, 2 rows
    M = sum(r for r, _ in passes)
    x = [[rng.randrange(256) for _ in range(K)] for _ in range(M)]
    raw = bytes(v for row in x for v in row)
    words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    seen = []

    async def compute(ctx):
        ctx.set(dut.stride_log, 2)
        ctx.set(dut.slots_log, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        oldest = 0
        row0 = 0
        for b in range(3):
            await _wait(ctx, dut.ahead)
            if b == 1:                                  # block 2 cannot load before block 0 is released
                for _ in range(30):
                    await ctx.tick()
                assert ctx.get(dut.ahead) == 2
            rows = min(R, [2, 1, 2][b])
            block = []
            for line in range(K // L):
                ctx.set(dut.rd_addr, oldest + line)
                await ctx.tick()
                await ctx.tick()
                block.append([[ctx.get(dut.rd_data[r][l]) for l in range(L)] for r in range(rows)])
            seen.append((row0, block))
            row0 += rows
            ctx.set(dut.release, 1)
            await ctx.tick()
            ctx.set(dut.release, 0)
            oldest = (oldest + 4) % 8

    async def feed(ctx):
        await ctx.tick().repeat(2)                      # after start
        for rows, nblk in passes:
            ctx.set(dut.passes.payload.kc, K // L)
            ctx.set(dut.passes.payload.rows, rows)
            ctx.set(dut.passes.payload.nblk, nblk)
            ctx.set(dut.passes.valid, 1)
            await _wait(ctx, dut.passes.ready)
        ctx.set(dut.passes.valid, 0)

    _sim(dut, compute, background=[_sender(dut.data, words, rng, stall=0.3), feed])
    assert len(seen) == 3
    for row0, block in seen:
        for line, rows in enumerate(block):
            for r, lanes in enumerate(rows):
                assert lanes == [v ^ 0x80 for v in x[row0 + r][line * L:(line + 1) * L]]


# -- sequencer arithmetic and parameter checks ------------------------------------------------------

@pytest.mark.parametrize("divisor", [1, 2, 3, 4, 5, 7, 12, 63, 64])
def test_ceil_div_const_is_exact_for_32_bit_values(divisor):
    m = Module()
    v, q = Signal(32), Signal(34)
    quotient, latency = ceil_div_const(m, v, divisor, 32, name="q")
    m.d.comb += q.eq(quotient)
    assert (latency == 0) == (divisor & (divisor - 1) == 0)
    rng = random.Random(divisor)
    values = [0, 1, divisor - 1, divisor, divisor + 1, (1 << 32) - 1, (1 << 32) - divisor] + \
             [rng.getrandbits(32) for _ in range(200)]

    async def bench(ctx):
        for value in values:
            ctx.set(v, value)
            if latency:
                await ctx.tick().repeat(latency + 1)     # the quotient settles after `latency` edges
            else:
                await ctx.delay(1e-9)
            assert ctx.get(q) == -(-value // divisor), value

    sim = Simulator(m)
    if latency:
        sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_components_name_bad_parameters():
    _rejects(lambda: WeightUnpacker(lanes=16, weight_ports=1, data_width=64, weight_bits=(3,)), ValueError,
             "weight_bits")
    _rejects(lambda: WeightUnpacker(lanes=12, weight_ports=1, data_width=64), ValueError, "lanes")
    _rejects(lambda: ActivationBuffer({"rows": 2}), TypeError, "EngineGeometry")
    _rejects(lambda: MacArray(rows=2, lanes=16, group_size=24, weight_shape=signed(8), tag_layout=unsigned(1)),
             ValueError, "group_size")
    _rejects(lambda: OutputPacker(rows=2.0, data_width=64), TypeError, "rows")
    _rejects(lambda: GroupAccumulator(rows=2, groups=2, sum_shape=signed(20), group_bits=22, scale_bits=16,
                                      acc_bits=40, tag_layout=unsigned(1), fires_per_group=2),
             ValueError, "not both")


# -- §4 packers: ours vs the host's ----------------------------------------------------------------

def test_testing_packers_agree_with_host_packing():
    from hbmforge.host import packing as host
    from hbmforge.config import parse_config
    from hbmforge.generators.matmul import testing
    from hbmforge.layout import DesignLayout

    from designs import tiny_config_dict

    lay = DesignLayout(parse_config(tiny_config_dict()))
    rng = np.random.default_rng(5)
    m, k, n = 3, 48, 5
    x = rng.integers(-128, 128, (m, k))
    s = rng.integers(0, 1 << 16, (n, k // lay.mm.group_size))
    mult, shift = rng.integers(-(1 << 31), 1 << 31, n), rng.integers(0, 128, n)
    wb = lay.word_bytes
    assert bytes(host.pack_activations(x, lay)) == testing.pack_activations(x, wb)
    assert bytes(host.pack_scales(s, lay)) == testing.pack_scales(s, wb)
    assert bytes(host.pack_requant(mult, shift, lay)) == testing.pack_requant(mult, shift, wb)
    for wbits in (4, 8):
        w = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (n, k))
        ours = testing.pack_weights(w, wbits, lay.mm.weight_ports, lay.config.data_width)
        theirs = host.pack_weights(w, wbits, lay)
        assert [bytes(t) for t in theirs] == ours
    for mode in (0, 1):
        y = rng.integers(-128, 128, (m, n)) if mode else rng.integers(-(1 << 31), 1 << 31, (m, n))
        raw = bytes(host.pack_output(y, mode, lay))
        np.testing.assert_array_equal(testing.unpack_outputs(raw, m, n, lay.mm.rows, mode), y)
