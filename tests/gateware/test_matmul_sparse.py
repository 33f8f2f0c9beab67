"""2:4 sparse weights in the matmul RTL: the bit gearbox, the group expansion, the unpacker and whole
jobs of every weight format, bit-exact against the golden model under random stalls and back-pressure."""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hbmforge.config import parse_config
from hbmforge.encodings import OutMode
from hbmforge.engines.matmul import SPARSE24
from hbmforge.generators.matmul.sparse import BitGearbox, expand_sparse24, sparse24_chunk_bits
from hbmforge.generators.matmul.testing import EngineBench, random_case
from hbmforge.generators.matmul.unpack import widen_lanes
from hbmforge.layout import DesignLayout
from hbmforge.numerics.sparse import decode_sparse24_stream, encode_sparse24_stream, is_2_4, prune_2_4

from designs import tiny_config_dict
from sim_helpers import gearbox_output_valid, rejects, run_gearbox

INT32, INT8 = OutMode.INT32, OutMode.INT8


def _layout(data_width=64, **engine):
    cfg = tiny_config_dict(**{"sparse24": True, **engine})
    cfg["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(cfg))


@pytest.mark.parametrize("in_w,out_w", [(128, 48), (64, 80), (512, 384), (128, 320), (64, 64)])
def test_bit_gearbox_keeps_order_drops_packet_tails_and_never_bubbles(in_w, out_w):
    rng = random.Random(in_w + out_w)
    packets = []
    for _ in range(4):
        items = rng.randint(1, 6)
        bits = [rng.getrandbits(out_w) for _ in range(items)]
        stream = sum(v << (i * out_w) for i, v in enumerate(bits))
        nwords = -(-items * out_w // in_w)
        stream |= rng.getrandbits(nwords * in_w - items * out_w) << (items * out_w)     # garbage tail
        packets.append((bits, [(stream >> (j * in_w)) & ((1 << in_w) - 1) for j in range(nwords)]))
    got = run_gearbox(BitGearbox(in_w, out_w), [(len(items), words) for items, words in packets], rng)
    assert got == [v for items, _ in packets for v in items]
    if in_w >= out_w:                     # a word per item or better: one item every cycle once primed
        seen = gearbox_output_valid(BitGearbox(in_w, out_w), [rng.getrandbits(in_w) for _ in range(40)], 20)
        assert all(seen[2:]), seen


def test_bit_gearbox_validates_widths():
    rejects(lambda: BitGearbox(96, 48), ValueError, "power of two")
    rejects(lambda: BitGearbox(0, 48), ValueError, "in_width")


@pytest.mark.parametrize("bits,ternary", [(2, False), (2, True), (4, False), (8, False)])
def test_group_expansion_matches_the_golden_decoder_on_random_and_reserved_encodings(bits, ternary):
    """Random raw groups, repeated indexes and reserved ternary codes included."""
    lanes, lw = 16, 8
    gb = sparse24_chunk_bits(lanes, bits)
    m = Module()
    chunk, out = Signal(gb), Signal(lanes * lw)

    def widen(vals, count):
        if ternary:
            from hbmforge.generators.matmul.unpack import ternary_codes
            vals = ternary_codes(m, vals, count, name="t")
        return widen_lanes(m, vals, count, bits, lw, name="w")

    m.d.comb += out.eq(expand_sparse24(m, chunk, lanes, bits, widen, name="x"))
    rng = np.random.default_rng(bits + ternary)
    raws = [int(rng.integers(0, 1 << 62)) | (int(rng.integers(0, 1 << 62)) << 62) for _ in range(200)]
    raws = [r & ((1 << gb) - 1) for r in raws] + [0, (1 << gb) - 1]

    async def bench(ctx):
        for raw in raws:
            ctx.set(chunk, raw)
            await ctx.delay(1e-9)
            got = [(ctx.get(out) >> (lw * i)) & ((1 << lw) - 1) for i in range(lanes)]
            got = [g - (1 << lw) if g >> (lw - 1) else g for g in got]
            stream = np.array([(raw >> j) & 1 for j in range(gb)], dtype=np.uint8)
            assert got == decode_sparse24_stream(stream, lanes, bits, ternary).tolist(), hex(raw)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_encoder_round_trips_through_the_decoder():
    rng = np.random.default_rng(5)
    for bits, lo, hi in ((2, -2, 1), (4, -8, 7), (8, -128, 127)):
        w = prune_2_4(rng.integers(lo, hi + 1, (3, 32)))
        raw = encode_sparse24_stream(w.reshape(-1), bits)
        stream = np.unpackbits(raw, bitorder="little")
        assert np.array_equal(decode_sparse24_stream(stream, w.size, bits, False).reshape(w.shape), w)


def _run(layout, shapes, *, seed=0, stall=0.3, backpressure=0.3, bias=False):
    """Jobs ``(m, k, n, wbits, out_mode, sparse)`` back to back; every result bit-exact."""
    rng = np.random.default_rng(seed)
    bench = EngineBench(layout, seed=seed, stall=stall, backpressure=backpressure)
    for m, k, n, wbits, mode, sparse in shapes:
        case = random_case(layout, rng, m=m, k=k, n=n, wbits=wbits, out_mode=mode, bias=bias, sparse24=sparse)
        assert bool(case.wbits & SPARSE24) == sparse and (not sparse or is_2_4(case.w))
        bench.add(case)
    bench.run(max_cycles=40_000)
    for case in bench.cases:
        np.testing.assert_array_equal(case.result, case.expected(layout.mm.group_size),
                                      err_msg=f"job {case.x.shape}x{case.w.shape} wbits={case.wbits:#x}")
        assert not any(case.pad_bytes)
    return bench


def test_sparse_jobs_of_every_format_match_golden_beside_dense_ones():
    # int4 chunks are 3 x 16 bits (a non-power-of-two gearbox), int8 5 x 16, int2/ternary 2 x 16
    lay = _layout(weight_bits=[2, "ternary", 4, 8], weight_ports=2)
    _run(lay, [(3, 64, 3, 4, INT32, True), (2, 48, 4, 8, INT8, True), (3, 32, 2, 2, INT32, True),
               (2, 64, 3, "ternary", INT8, True), (2, 32, 3, 4, INT32, False), (1, 48, 2, 8, INT32, True)],
         seed=51)


def test_sparse_int4_with_k_split_in_slices_a_bias_and_one_port_of_128_bits():
    lay = _layout(data_width=128, weight_bits=[4, 8], weight_ports=1, max_k=64, tile_n=4)
    _run(lay, [(3, 160, 5, 4, INT8, True), (2, 96, 3, 8, INT32, True)], seed=52, bias=True)


def test_sparse_weights_stream_fewer_words_than_dense():
    lay = _layout(weight_bits=[4, 8], weight_ports=1)
    bench = _run(lay, [(1, 256, 8, 8, INT32, False), (1, 256, 8, 8, INT32, True)], seed=53, stall=0.0,
                 backpressure=0.0)
    dense, sparse = (lay.matmul.weight_port_bytes(8, 256, code) for code in (8, 8 | SPARSE24))
    assert sparse * 8 == dense * 5                                     # (2 x 8 + 4) / (4 x 8) bits
    # 16 int8 lanes take two 64-bit words per fire dense, 1.25 sparse: the port bounds both
    assert bench.stats[1]["cycles"] <= bench.stats[0]["cycles"]


# -- the 2:4 pair fire (sparse24_pairs): two columns a fire, the zeros skipped --------------------

def _pairs_layout(**engine):
    """Two groups of 16 per 32-lane fire (four half-group partials a row)."""
    return _layout(**{"weight_bits": [2, "ternary", 4], "lanes": 32, "max_k": 32, "sparse24_pairs": True,
                      **engine})


def test_pair_fire_jobs_match_golden_beside_dense_and_odd_n_ones():
    """int2 and ternary 2:4 jobs with N even run as pair fires; odd N, dense and int4 2:4 jobs as
    before; INT8 and INT32 results, a bias, a short last row block, split K (K > max_k)."""
    lay = _pairs_layout()
    _run(lay, [(3, 32, 4, 2, INT8, True), (2, 32, 6, "ternary", INT32, True), (3, 96, 4, 2, INT32, True),
               (2, 32, 3, 2, INT8, True), (3, 64, 2, 4, INT32, False), (1, 64, 8, "ternary", INT8, True),
               (2, 32, 4, 4, INT8, True)], seed=61, bias=True)


def test_pair_fire_with_one_group_a_fire():
    lay = _pairs_layout(lanes=16, max_k=16)
    _run(lay, [(3, 16, 4, 2, INT8, True), (2, 48, 6, "ternary", INT32, True), (1, 16, 3, 2, INT32, True)],
         seed=64, bias=True)


def test_pair_fire_many_tiles_and_chunks_without_bias():
    lay = _pairs_layout(tile_n=2, rows=1)
    _run(lay, [(3, 32, 10, 2, INT8, True), (2, 128, 6, "ternary", INT32, True), (1, 32, 2, 2, INT32, True)],
         seed=62)


def test_pair_fire_halves_the_cycles_of_an_array_bound_job():
    """GEMM over a chunk of row blocks is array-bound: a pair job fires half as often."""
    lay = _pairs_layout(rows=1, weight_ports=2)
    bench = _run(lay, [(8, 32, 32, 2, INT32, True), (8, 32, 32, 4, INT32, True)], seed=63, stall=0.0,
                 backpressure=0.0)
    pair, dense = (s["cycles"] for s in bench.stats)
    assert pair < 0.7 * dense, (pair, dense)


# -- the dense pair fire (dense_pairs): two dense 2-bit columns a fire, two products a lane ---------

def test_dense_pair_jobs_match_golden_beside_2_4_pairs_odd_n_and_int4():
    """Dense int2 and ternary jobs with N even run as dense pair fires, 2:4 ones as 2:4 pair fires,
    on one engine; odd N and int4 as before; INT8 and INT32 results, a bias, split K."""
    lay = _pairs_layout(dense_pairs=True)
    _run(lay, [(3, 32, 4, 2, INT8, False), (2, 32, 6, "ternary", INT32, False), (3, 96, 4, 2, INT32, False),
               (2, 32, 4, 2, INT8, True), (2, 32, 3, 2, INT8, False), (3, 64, 2, 4, INT32, False),
               (1, 64, 8, "ternary", INT8, False), (2, 32, 2, "ternary", INT32, True)], seed=71, bias=True)


def test_dense_pairs_without_sparse24_and_one_group_a_fire():
    lay = _layout(sparse24=False, weight_bits=[2, "ternary", 4], lanes=16, max_k=16, dense_pairs=True, tile_n=2)
    _run(lay, [(3, 16, 10, 2, INT8, False), (2, 48, 6, "ternary", INT32, False), (1, 16, 3, 2, INT32, False),
               (2, 32, 4, 4, INT8, False)], seed=72, bias=True)


def test_dense_pair_fire_halves_the_cycles_of_an_array_bound_dense_job():
    """A dense W2 GEMM over a chunk of row blocks is array-bound: as dense pair fires it takes about
    half the cycles, and as many as the same job with dense_pairs off takes for half its columns."""
    on, off = (_pairs_layout(rows=1, weight_ports=2, dense_pairs=d) for d in (True, False))
    pair = _run(on, [(8, 32, 32, 2, INT32, False)], seed=73, stall=0.0, backpressure=0.0).stats[0]["cycles"]
    dense = _run(off, [(8, 32, 32, 2, INT32, False)], seed=73, stall=0.0, backpressure=0.0).stats[0]["cycles"]
    assert pair < 0.7 * dense, (pair, dense)


def test_split_k_pair_jobs_take_a_partial_entry_a_cycle():
    """From the second K slice on, a pair fire adds two columns' partial sums: the collector hands
    one entry (two sums a row) a cycle, so the later slices fire at the first one's rate. (One sum a
    cycle paced them at half: 291 cycles against 160 for the same fires in one slice.)"""
    lay = _layout(data_width=256, weight_bits=[2, "ternary", 4], lanes=64, max_k=64, sparse24_pairs=True, rows=1,
                  weight_ports=1)
    bench = _run(lay, [(1, 64, 192, 2, INT32, True), (1, 192, 64, 2, INT32, True)], seed=65, stall=0.0,
                 backpressure=0.0)
    one_slice, three_slices = (s["cycles"] for s in bench.stats)
    assert three_slices < one_slice + 100, (one_slice, three_slices)
    # two rows a block, random stalls and back-pressure: entries of two 128-bit items, bit-exact
    lay2 = _layout(data_width=256, weight_bits=[2, "ternary", 4], lanes=64, max_k=64, sparse24_pairs=True, rows=2,
                   weight_ports=1)
    _run(lay2, [(3, 192, 6, 2, INT32, True), (2, 128, 4, "ternary", INT8, True), (3, 128, 3, 2, INT32, True)],
         seed=66, bias=True)
