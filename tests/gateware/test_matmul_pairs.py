"""The 2:4 pair fire's datapath units: MacArray and GroupAccumulator with ``pairs``, bit-exact
against hbmforge.numerics.sparse (and, through it, against the dense product of the decoded columns)."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned

from hbmforge.generators.matmul.accum import GroupAccumulator
from hbmforge.generators.matmul.array import MacArray
from hbmforge.numerics.sparse import (decode_sparse24_stream, dense_pair_fire_sums, dense_pair_slots,
                                      encode_sparse24_stream, pair_fire_sums, pair_slots, prune_2_4)
from sim_helpers import rejects, simulate


def _pair_line(rng, lanes: int, ternary: bool):
    """Two random 2:4 2-bit columns of ``lanes`` weights -> (slot words, dense columns [2, L])."""
    if ternary:
        cols = prune_2_4(rng.integers(-1, 2, (2, lanes)))
        codes = np.where(cols < 0, 3, cols)            # ternary codes 00 0, 01 +1, 11 -1
    else:
        cols = prune_2_4(rng.integers(-2, 2, (2, lanes)))
        codes = cols
    raw = encode_sparse24_stream(codes.reshape(-1), 2)
    if rng.random() < 0.3:                             # reserved codes and repeated indexes too
        raw = rng.integers(0, 256, raw.size).astype(np.uint8)
    bits = np.unpackbits(raw, bitorder="little")
    dense = decode_sparse24_stream(bits, 2 * lanes, 2, ternary).reshape(2, lanes)
    vals, idx = pair_slots(bits, lanes, ternary)
    words = [int(v & 3) | int(i) << 2 for v, i in zip(vals, idx)]
    return words, vals, idx, dense


def _check_fires(dut, fires, lanes: int, R: int):
    """Fire ``fires`` (dicts: pair, dense, the lane words, x [R, L], the expected sums) back to back,
    the activations one cycle after each fire; every fire's sums equal its expected ones, in order."""
    got = []

    async def bench(ctx):
        for i in range(len(fires) + dut.latency + 1):
            if i < len(fires):
                f = fires[i]
                ctx.set(dut.valid, 1)
                ctx.set(dut.pair, f["pair"])
                ctx.set(dut.dense, f["dense"])
                ctx.set(dut.tag, i)
                for l in range(lanes):
                    ctx.set(dut.w[l], f["words"][l] - 16 if f["words"][l] >= 8 else f["words"][l])
            else:
                ctx.set(dut.valid, 0)
            if 0 < i <= len(fires):                    # activations one cycle after the fire
                x = fires[i - 1]["x"]
                for r in range(R):
                    for l in range(lanes):
                        ctx.set(dut.x[r][l], (int(x[r, l]) + 128) & 0xFF)
            await ctx.tick()
            if ctx.get(dut.o_valid):
                got.append((ctx.get(dut.o_tag), [[ctx.get(dut.sums[r][j]) for j in range(dut.groups_per_fire)]
                                                 for r in range(R)]))

    simulate(dut, bench)
    assert [t for t, _ in got] == list(range(len(fires)))
    for (_, sums), f in zip(got, fires):
        assert sums == f["exp"].tolist(), (f["pair"], f["dense"])


@pytest.mark.parametrize("lanes,group,fmt", [(32, 16, None), (16, 16, "int4"), (64, 8, None)])
def test_mac_array_pair_fire_sums_two_columns_and_dense_fires_stay_exact(lanes, group, fmt):
    rng = np.random.default_rng(lanes * group)
    R = 2
    dut = MacArray(rows=R, lanes=lanes, group_size=group, weight_shape=signed(4), tag_layout=unsigned(8),
                   lane_format=fmt, pairs=True)
    assert dut.groups_per_fire == 2 * lanes // group
    fires = []
    for i in range(12):
        x = rng.integers(-128, 128, (R, lanes))
        if i < 2:
            x[:] = -128 if i == 0 else 127
        if rng.random() < 0.5:
            ternary = bool(rng.random() < 0.5)
            words, vals, idx, dense = _pair_line(rng, lanes, ternary)
            exp = pair_fire_sums(x, vals, idx, group)
            # the pair sums are the dense products of the two decoded columns, group by group
            span = min(lanes, group)
            for h in range(2):
                for j in range(lanes // span):
                    got = exp[:, 2 * j + h]
                    want = x[:, j * span:(j + 1) * span] @ dense[h, j * span:(j + 1) * span]
                    assert (got == want).all()
            fires.append((1, words, x, exp))
        else:
            w = rng.integers(-8, 8, lanes)
            # half 2j + h: the lanes of group j with (l mod 4) // 2 == h
            exp = (x * w[None, :]).reshape(R, lanes // group, group // 4, 2, 2).sum(axis=(2, 4)).reshape(R, -1)
            fires.append((0, [int(v) & 15 for v in w], x, exp))
    _check_fires(dut, [dict(pair=p, dense=0, words=w, x=x, exp=e) for p, w, x, e in fires], lanes, R)


def _dense_pair_line(rng, lanes: int, ternary: bool):
    """Two random dense 2-bit columns of ``lanes`` weights as a pair line -> (slot words, v0, v1,
    dense columns [2, L])."""
    codes = rng.integers(0, 4, 2 * lanes)                 # every code, ternary's reserved 10 too
    bits = np.unpackbits(np.packbits(np.stack([codes & 1, codes >> 1], axis=1).reshape(-1), bitorder="little"),
                         bitorder="little")
    table = np.array([0, 1, 0, -1]) if ternary else np.array([0, 1, -2, -1])
    dense = table[codes].reshape(2, lanes)
    v0, v1 = dense_pair_slots(bits, lanes, ternary)
    words = [int(a & 3) | int(b & 3) << 2 for a, b in zip(v0, v1)]
    return words, v0, v1, dense


@pytest.mark.parametrize("lanes,group,fmt", [(32, 16, "int4"), (16, 16, None), (64, 8, "int4")])
def test_mac_array_dense_pair_fire_sums_two_dense_columns_beside_2_4_and_dense_fires(lanes, group, fmt):
    """``dense_pairs``: a dense pair fire's slots (two int2 weights each) give both columns' group
    sums, bit-exact, between 2:4 pair fires and plain dense int4 fires on the same array."""
    rng = np.random.default_rng(lanes + group)
    R = 2
    dut = MacArray(rows=R, lanes=lanes, group_size=group, weight_shape=signed(4), tag_layout=unsigned(8),
                   lane_format=fmt, pairs=True, dense_pairs=True)
    fires = []
    for i in range(16):
        x = rng.integers(-128, 128, (R, lanes))
        if i < 2:
            x[:] = -128 if i == 0 else 127
        kind = ["dpair", "pair", "dense"][i % 3] if i > 2 else "dpair"
        if kind == "dpair":
            words, v0, v1, dense = _dense_pair_line(rng, lanes, bool(rng.random() < 0.5))
            exp = dense_pair_fire_sums(x, v0, v1, group)
            for h in range(2):                         # the two dense columns' group sums
                for j in range(lanes // group):
                    want = x[:, j * group:(j + 1) * group] @ dense[h, j * group:(j + 1) * group]
                    assert (exp[:, 2 * j + h] == want).all()
            fires.append((1, 1, words, x, exp))
        elif kind == "pair":
            words, vals, idx, _ = _pair_line(rng, lanes, bool(rng.random() < 0.5))
            fires.append((1, 0, words, x, pair_fire_sums(x, vals, idx, group)))
        else:
            w = rng.integers(-8, 8, lanes)
            exp = (x * w[None, :]).reshape(R, lanes // group, group // 4, 2, 2).sum(axis=(2, 4)).reshape(R, -1)
            fires.append((0, int(rng.integers(0, 2)), [int(v) & 15 for v in w], x, exp))
    _check_fires(dut, [dict(pair=p, dense=d, words=w, x=x, exp=e) for p, d, w, x, e in fires], lanes, R)


def test_group_accumulator_pairs_scale_each_half_and_keep_dense_columns_whole():
    rng = np.random.default_rng(11)
    R, NG = 2, 4                                       # 4 half-group partials: 2 groups a column
    dut = GroupAccumulator(rows=R, groups=NG, sum_shape=signed(16), group_bits=18, scale_bits=16,
                           acc_bits=44, tag_layout=unsigned(4), pairs=True)
    fires, expected = [], []
    for col in range(10):
        pair = rng.random() < 0.5
        nf = 1 if pair else int(rng.integers(1, 4))
        acc = np.zeros((2, R), dtype=object)
        for f in range(nf):
            sums = rng.integers(-(1 << 15), 1 << 15, (R, NG))
            if pair:
                scales = rng.integers(0, 1 << 16, NG)
                for h in range(2):                     # partial 2j + h: column h's group j
                    acc[h] += [sum(int(sums[r, 2 * j + h]) * int(scales[2 * j + h]) for j in range(2))
                               for r in range(R)]
            else:                                      # a dense group's scale on both its halves
                g = rng.integers(0, 1 << 16, NG // 2)
                scales = np.repeat(g, 2)
                acc[0] += [sum(int(sums[r, k]) * int(scales[k]) for k in range(NG)) for r in range(R)]
            fires.append(dict(sums=sums, scales=scales, pair=pair, first=f == 0, last=f == nf - 1, tag=col))
        expected.append((col, [int(v) for v in acc[0]] + [int(v) for v in acc[1]]))
    got = []

    async def bench(ctx):
        pending = list(fires)
        idle = 0
        while pending or idle < dut.latency + 2:
            if pending and rng.random() < 0.8:
                f = pending.pop(0)
                ctx.set(dut.valid, 1)
                ctx.set(dut.pair, f["pair"])
                for r in range(R):
                    for k in range(NG):
                        ctx.set(dut.sums[r][k], int(f["sums"][r, k]))
                for k in range(NG):
                    ctx.set(dut.scales[k], int(f["scales"][k]))
                for k in ("grp_first", "grp_last"):
                    ctx.set(getattr(dut, k), 1)
                ctx.set(dut.col_first, f["first"])
                ctx.set(dut.col_last, f["last"])
                ctx.set(dut.tag, f["tag"])
            else:
                ctx.set(dut.valid, 0)
                idle += not pending
            await ctx.tick()
            if ctx.get(dut.o_valid):
                got.append((ctx.get(dut.o_tag), [ctx.get(dut.acc[r]) for r in range(2 * R)]))

    simulate(dut, bench)
    assert got == expected


def test_pair_units_name_bad_parameters():
    rejects(lambda: MacArray(rows=1, lanes=16, group_size=16, weight_shape=signed(2), tag_layout=unsigned(1),
                             pairs=True), ValueError, "pairs needs weight lanes of at least 4 bits")
    rejects(lambda: MacArray(rows=1, lanes=8, group_size=16, weight_shape=signed(4), tag_layout=unsigned(1),
                             pairs=True), ValueError, "lanes >= group_size")
    rejects(lambda: MacArray(rows=1, lanes=16, group_size=16, weight_shape=signed(4), tag_layout=unsigned(1),
                             pairs=1), TypeError, "pairs must be True or False")
    rejects(lambda: MacArray(rows=1, lanes=16, group_size=16, weight_shape=signed(4), tag_layout=unsigned(1),
                             dense_pairs=True), ValueError, "dense_pairs needs pairs")
    rejects(lambda: MacArray(rows=1, lanes=16, group_size=16, weight_shape=signed(4), tag_layout=unsigned(1),
                             pairs=True, dense_pairs="yes"), TypeError, "dense_pairs must be True or False")
    rejects(lambda: GroupAccumulator(rows=1, groups=1, sum_shape=signed(8), group_bits=9, scale_bits=16,
                                     acc_bits=30, tag_layout=unsigned(1), pairs=True), ValueError, "pairs needs at least two")
