"""``scale_stream: inline``: the group scales travel in the weight stripes.

Whole MatmulEngine jobs in amaranth.sim with the stripes packed per the inline rule by
generators/matmul/testing.py (scale word, r weight words, scale word, ...), random stalls on every
port and back-pressure on ``out_data``, bit-exact with hbmforge.numerics.matmul; the engine must
issue no scale command and read exactly the inline stripe bytes of every slice once per pass.
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import ConfigError, parse_config
from hbmforge.encodings import OutMode
from hbmforge.generators.matmul.testing import EngineBench, random_case
from hbmforge.layout import DesignLayout

from designs import tiny_config_dict

INT32, INT8 = OutMode.INT32, OutMode.INT8


def _layout(data_width=64, **engine):
    cfg = tiny_config_dict(**{"scale_stream": "inline", **engine})
    cfg["axi"]["data_width"] = data_width
    return DesignLayout(parse_config(cfg))


def _run(layout, shapes, *, seed=0, stall=0.3, backpressure=0.3, sparse=False, max_cycles=40_000):
    """Jobs ``(m, k, n, wbits, out_mode)`` back to back; every result bit-exact; the DMA commands are
    the inline stripes (no scale command)."""
    rng = np.random.default_rng(seed)
    bench = EngineBench(layout, seed=seed, stall=stall, backpressure=backpressure)
    for m, k, n, wbits, mode in shapes:
        bench.add(random_case(layout, rng, m=m, k=k, n=n, wbits=wbits, out_mode=mode, bias=bool(seed % 2),
                              sparse24=sparse))
    bench.run(max_cycles=max_cycles)
    geom = layout.matmul
    expect_w = []
    for case in bench.cases:
        np.testing.assert_array_equal(case.result, case.expected(layout.mm.group_size),
                                      err_msg=f"job {case.x.shape}x{case.w.shape} wbits={case.wbits}")
        assert not any(case.pad_bytes)
        m, k = case.x.shape
        n = case.w.shape[0]
        chunks = geom.chunks(m, n, k, case.out_mode)
        off = 0
        for s in range(geom.slices(k)):
            nbytes = geom.slice_weight_port_bytes(n, geom.slice_k(k, s), case.wbits)
            expect_w += [(case.addrs["w"][0] + off, nbytes)] * chunks
            off += nbytes
    assert bench.commands["scale"] == []
    assert bench.commands["w0"] == expect_w
    return bench


def test_int4_int8_gemv_and_gemm_with_several_chunks():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16, tile_m=4)
    _run(lay, [(1, 64, 5, 4, INT32), (7, 48, 3, 8, INT8), (5, 32, 17, 4, INT32), (1, 16, 1, 8, INT32)], seed=1)


def test_int2_and_ternary_four_ports_group_32():
    lay = _layout(rows=2, lanes=32, weight_ports=4, group_size=32, weight_bits=[2, "ternary"])
    _run(lay, [(1, 96, 7, 2, INT32), (3, 64, 5, "ternary", INT8), (5, 128, 3, 2, INT8)], seed=2)


def test_split_k_slices_each_carry_their_scale_words():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16, max_k=64, weight_bits=[2, 4, 8])
    _run(lay, [(3, 192, 5, 4, INT32), (1, 160, 3, 2, INT8), (2, 80, 4, 8, INT32)], seed=3)


def test_one_port_of_128_bits_group_larger_than_lanes():
    lay = _layout(data_width=128, rows=1, lanes=16, weight_ports=1, group_size=64, weight_bits=[2, 4, 8])
    _run(lay, [(1, 128, 6, 2, INT32), (2, 192, 3, 8, INT8), (1, 64, 9, 4, INT32)], seed=4)


def test_scale_item_wider_than_the_combined_word_gathers():
    # lanes 128, G 16: 8 scales (128 bits) per fire from 64-bit combined words
    lay = _layout(rows=1, lanes=128, weight_ports=1, group_size=16, max_k=256, weight_bits=[2, 4])
    _run(lay, [(1, 256, 3, 4, INT32), (2, 128, 5, 2, INT32)], seed=5, max_cycles=60_000)


def test_sparse24_every_format():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16, sparse24=True, max_k=64,
                  weight_bits=[2, 4, 8, "ternary"])
    _run(lay, [(1, 64, 5, 4, INT32), (3, 128, 3, 8, INT8), (1, 48, 7, 2, INT32), (2, 64, 3, "ternary", INT32)],
         seed=6, sparse=True)


def test_sparse24_pair_fire_with_inline_scales():
    """The 2:4 pair fire (u280_llm512's weight path): two columns' scales per pair line out of the
    inline stripes; int2/ternary pair jobs (split K, INT8 with a bias: odd seed) beside an odd-N
    fallback and int4 2:4."""
    lay = _layout(rows=1, lanes=32, weight_ports=2, group_size=16, sparse24=True, sparse24_pairs=True,
                  max_k=32, weight_bits=[2, 4, "ternary"])
    _run(lay, [(1, 128, 6, 2, INT8), (2, 32, 4, "ternary", INT32), (1, 64, 5, 2, INT8), (1, 96, 4, 4, INT32)],
         seed=7, sparse=True)


def test_dense_pair_fire_with_inline_scales():
    """The dense pair fire on u280_llm512's weight path: two dense W2 / ternary columns and their
    scales per pair line out of the inline stripes, beside 2:4 pair jobs, odd N and int4."""
    lay = _layout(rows=1, lanes=32, weight_ports=2, group_size=16, sparse24=True, sparse24_pairs=True,
                  dense_pairs=True, max_k=32, weight_bits=[2, 4, "ternary"])
    _run(lay, [(1, 128, 6, 2, INT8), (2, 32, 4, "ternary", INT32), (1, 64, 5, 2, INT8), (1, 96, 4, 4, INT32)],
         seed=9)
    _run(lay, [(1, 64, 4, 2, INT32), (2, 32, 6, "ternary", INT8)], seed=8, sparse=True)


@pytest.mark.parametrize("seed", range(3))
def test_random_configs_and_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    P = int(rng.choice([1, 2, 4]))
    W = int(rng.choice([64, 128]))
    lanes = int(rng.choice([16, 32]))
    G = int(rng.choice([16, 32, 64]))
    lay = _layout(data_width=W, rows=int(rng.integers(1, 4)), lanes=lanes, weight_ports=P, group_size=G,
                  max_k=256, weight_bits=[2, 4, 8, "ternary"])
    shapes = []
    for _ in range(3):
        k = int(rng.integers(1, 9)) * lay.matmul.k_align
        shapes.append((int(rng.integers(1, 6)), min(k, 512), int(rng.integers(1, 12)),
                       [2, 4, 8, "ternary"][int(rng.integers(0, 4))], [INT32, INT8][int(rng.integers(0, 2))]))
    _run(lay, shapes, seed=seed, stall=0.4, backpressure=0.4, max_cycles=80_000)


def test_gemv_streams_at_the_port_rate_without_stalls():
    """A W2 GEMV with 2 chunks per combined word: the weight side never waits behind a scale word,
    so the job takes about weight words + scale words cycles (not a bubble per scale word)."""
    lay = _layout(rows=1, lanes=16, weight_ports=2, group_size=64, weight_bits=[2, 4])
    bench = _run(lay, [(1, 256, 32, 2, INT32)], seed=7, stall=0.0, backpressure=0.0)
    ww, sw = lay.matmul.slice_stream_words(32, 256, 2)
    fires = 32 * 256 // 16
    assert bench.stats[0]["fires"] == fires
    # fires are paced by the unpacker (one chunk per cycle) and the combined words (ww + sw);
    # a bubble per scale word would add sw cycles on top of the fire span
    assert bench.stats[0]["fire_span"] <= max(fires, ww + sw) + 4, (bench.stats[0], ww, sw)


# -- config refusals ----------------------------------------------------------------------

def test_inline_refuses_five_trit_ternary():
    cfg = tiny_config_dict(scale_stream="inline", weight_bits=[4, "ternary"], ternary_packing="5trit")
    with pytest.raises(ConfigError, match="scale_stream: inline.*5trit"):
        parse_config(cfg)
    cfg = tiny_config_dict(scale_stream="inline", weight_bits=[4], ternary_packing="5trit")
    parse_config(cfg)                         # 5trit without ternary: nothing to refuse


def test_scale_stream_names_its_allowed_values():
    with pytest.raises(ConfigError, match="scale_stream"):
        parse_config(tiny_config_dict(scale_stream="weights"))


def test_inline_s_addr_is_ignored_by_the_descriptor_checks():
    lay = _layout(rows=2, lanes=16, weight_ports=2, group_size=16)
    f = dict(m=1, k=16, n=1, wbits=4, out_mode=INT32, out_shift=0, x_addr=64, s_addr=3, q_addr=0, y_addr=128,
             w_addr0=192, w_addr1=256)
    code, why = lay.validate_descriptor({"op": 1, **f})
    assert int(code) == 0, why
    data = DesignLayout(parse_config(tiny_config_dict()))
    code, why = data.validate_descriptor({"op": 1, **f})
    assert "s_addr" in why
