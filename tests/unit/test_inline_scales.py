"""``scale_stream: inline``: the layout rule (MatmulGeometry), the host packer, the bench packer and
the descriptor-level golden model agree; data-mode sizes are unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import OutMode
from hbmforge.engines.matmul import SPARSE24
from hbmforge.generators.matmul.testing import pack_inline
from hbmforge.host.packing import (pack_activations, pack_requant, pack_scales, pack_weights, unpack_output,
                                   unpack_weights)
from hbmforge.host.program import ProgramBuilder
from hbmforge.layout import DesignLayout
from hbmforge.numerics import matmul_int8, matmul_int32
from hbmforge.numerics.program import SparseMemory, execute
from hbmforge.numerics.sparse import prune_2_4


def layout(data_width=64, **engine) -> DesignLayout:
    eng = {"kind": "matmul", "name": "mm0", "rows": 2, "lanes": 16, "weight_ports": 2,
           "weight_bits": [2, 4, 8, "ternary"], "group_size": 16, "scale_bits": 16, "max_k": 256,
           "scale_stream": "inline"}
    eng.update(engine)
    return DesignLayout(parse_config({"version": 1, "name": "tiny", "board": "u280", "clock_mhz": 300,
                                      "axi": {"data_width": data_width}, "engines": [eng]}))


def _weights(rng, fmt, n, k, sparse=False):
    lo, hi = (-1, 1) if fmt == "ternary" else (-(1 << (fmt - 1)), (1 << (fmt - 1)) - 1)
    w = rng.integers(lo, hi + 1, (n, k))
    return prune_2_4(w) if sparse else w


def test_ratio_is_group_size_times_bits_over_16_whatever_ports_width_and_lanes():
    for P, W, L in ((1, 64, 16), (4, 128, 32), (32, 512, 64)):
        geom = layout(data_width=W, weight_ports=P, lanes=L, group_size=128, sparse24=True, max_k=1024).matmul
        assert [geom.inline_ratio(c) for c in (2, 3, 4, 8)] == [16, 16, 32, 64]
        assert [geom.inline_ratio(c | SPARSE24) for c in (2, 3, 4, 8)] == [16, 16, 24, 40]


def test_positions_interleave_one_scale_word_before_r_weight_words():
    geom = layout(weight_ports=1, group_size=16).matmul          # int4: r = 4
    spos, wpos = geom.inline_positions(n=3, ks=48, wbits=4)       # 72 B of weights, 18 B of scales
    assert geom.slice_stream_words(3, 48, 4) == (9, 3)
    assert list(spos) == [0, 5, 10] and wpos == [1, 2, 3, 4, 6, 7, 8, 9, 11]
    assert geom.slice_weight_port_bytes(3, 48, 4) == 12 * 8
    assert geom.scale_bytes(3, 48) == 0


def test_data_mode_sizes_are_unchanged():
    lay = layout(scale_stream="data", weight_ports=1)
    geom = lay.matmul
    assert not geom.inline_scales
    assert geom.slice_weight_port_bytes(3, 48, 4) == 9 * 8
    assert geom.scale_bytes(3, 48) == 8 * 3


@pytest.mark.parametrize("seed", range(4))
def test_host_packer_matches_the_bench_packer_and_round_trips(seed):
    rng = np.random.default_rng(seed)
    lay = layout(data_width=int(rng.choice([64, 128])), weight_ports=int(rng.choice([1, 2, 4])),
                 group_size=int(rng.choice([16, 32, 64])), max_k=128, sparse24=True)
    g = lay.mm.group_size
    for fmt in (2, 4, 8, "ternary"):
        for sparse in (False, True):
            n = int(rng.integers(1, 9))
            k = lay.matmul.k_align * int(rng.integers(1, 5))
            w = _weights(rng, fmt, n, k, sparse)
            s = rng.integers(0, 1 << 16, (n, k // g))
            host = pack_weights(w, fmt, lay, sparse24=sparse, scales=s)
            code = (3 if fmt == "ternary" else fmt) | (SPARSE24 if sparse else 0)
            bench = pack_inline(w, s, code, lay)
            assert [h.tobytes() for h in host] == bench, (fmt, sparse)
            assert host[0].nbytes == lay.matmul.weight_port_bytes(n, k, code)
            assert np.array_equal(unpack_weights(host, n, k, fmt, lay, sparse24=sparse), w)


def test_packer_refuses_missing_or_misshapen_scales():
    lay = layout()
    w = np.zeros((3, 32), dtype=int)
    with pytest.raises(ValueError, match="scale_stream 'inline'.*scales="):
        pack_weights(w, 4, lay)
    with pytest.raises(ValueError, match=r"scales must be \[N, K/G\] = \[3, 2\]"):
        pack_weights(w, 4, lay, scales=np.zeros((3, 1), dtype=int))
    with pytest.raises(ValueError, match="no s_addr buffer"):
        pack_scales(np.zeros((3, 2), dtype=int), lay)


@pytest.mark.parametrize("seed", range(3))
def test_descriptor_golden_model_reads_inline_scales(seed):
    rng = np.random.default_rng(50 + seed)
    lay = layout(rows=int(rng.choice([1, 2])), weight_ports=int(rng.choice([1, 2, 4])), max_k=64)
    g = lay.mm.group_size
    X, Y, Q, P = 0x10_000, 0x40_000, 0x30_000, 0x80_000
    W = [0x100_000 * (i + 1) for i in range(lay.mm.weight_ports)]
    for fmt in (2, 4, 8, "ternary"):
        m, n, k = int(rng.integers(1, 6)), int(rng.integers(1, 12)), 16 * int(rng.integers(1, 9))
        x = rng.integers(-128, 128, (m, k))
        w = _weights(rng, fmt, n, k)
        s = rng.integers(0, 1 << 16, (n, k // g))
        mode = [OutMode.INT32, OutMode.INT8][int(rng.integers(0, 2))]
        mult, shift = rng.integers(1, 1 << 20, n), rng.integers(20, 40, n)
        mem = SparseMemory()
        mem.write(X, pack_activations(x, lay).tobytes())
        mem.write(Q, pack_requant(mult, shift, lay).tobytes())
        for i, stripe in enumerate(pack_weights(w, fmt, lay, scales=s)):
            mem.write(W[i], stripe.tobytes())
        prog = ProgramBuilder(lay)
        prog.matmul(m=m, k=k, n=n, wbits=fmt, x=X, y=Y, w=W, out_mode=mode, out_shift=8, q=Q,
                    p=P if k > lay.matmul.k_slice else None)
        assert prog.descriptors[0]["s_addr"] == 0
        mem.write(0, prog.to_bytes())
        res = execute(mem, 0, 1, lay)
        assert res.ok, res.detail
        got = unpack_output(mem.read(Y, lay.matmul.out_bytes(m, n, mode)), m, n, mode, lay)
        want = (matmul_int32(x, w, s, g, 8) if mode == OutMode.INT32 else matmul_int8(x, w, s, g, mult, shift))
        assert np.array_equal(got, want), fmt
