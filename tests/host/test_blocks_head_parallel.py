"""Block programs with the head-parallel KV layout (host/blocks.py ``kv_layout``): one VECTOR KV
append per side writes every port group's heads on the group's port (``kv_groups``), attention runs kv_layout 1
descriptors (one per query position). On the golden device the program equals the CPU golden
program bit for bit and tracks float LLaMA math; the KV cache round-trips through save/load."""
from __future__ import annotations

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from golden_kernel import GoldenDevice
from hbmforge.config import parse_config
from hbmforge.host.blocks import BlockConfig, BlockProgramError
from hbmforge.layout import DesignLayout

from test_blocks import _cos, _rms, build_llama, float_forward

MHA = BlockConfig(arch="llama", hidden=32, heads=4, kv_heads=4, head_dim=16, intermediate=48, norm_eps=1e-5,
                  rope_theta=10000.0)


def hp_vector_config(name="tiny_vec_hp", rows=2):
    cfg = tiny_vector_config_dict(name)
    att = next(e for e in cfg["engines"] if e["kind"] == "attention")
    att.update(rows=rows, kv_ports=2 * rows, head_parallel=True)
    return cfg


@pytest.fixture
def dev():
    with GoldenDevice(DesignLayout(parse_config(hp_vector_config()))) as d:
        yield d


def build(dev, rng, cfg=MHA, layers=2, **options):
    return build_llama(dev, rng, layers=layers, cfg=cfg, **options)


def decode_tracks_golden_and_float(prog, seq, cfg, tensors, final, head_f, xs, prefill_last, first=5):
    """After a prefill of ``xs[:first]`` (``prefill_last``: its logits row), decode ``xs[first:]``
    one step at a time: every step equals the golden program bit for bit, and the logits of
    positions ``first - 1 ..`` track float LLaMA math (cosine > 0.99)."""
    outs = [prefill_last]
    for t in range(first, len(xs)):
        golden = prog.golden_decode_step(xs[t], seq)
        got = prog.decode_step(xs[t], seq)
        assert np.array_equal(got, golden)
        outs.append(got)
    h = float_forward(cfg, tensors, xs)
    ref = _rms(h, final, cfg.norm_eps) @ head_f.T
    for i, out in zip(range(first - 1, len(xs)), outs):
        assert _cos(out, ref[i]) > 0.99, (i, _cos(out, ref[i]))


def test_head_parallel_decoder_equals_the_golden_program_and_tracks_float(dev):
    rng = np.random.default_rng(0)
    prog, tensors, final, head_f = build(dev, rng)
    assert prog.kv_layout == "head_parallel"
    L = prog.layers[0]
    assert [b.port for b in L.k_pools] == ["w0", "w2"] and [b.port for b in L.v_pools] == ["w1", "w3"]
    seq = prog.sequence()
    xs = rng.normal(0, 1, (8, MHA.hidden))
    golden = prog.golden_prefill(xs[:5], seq)
    got = prog.prefill(xs[:5], seq)
    assert np.array_equal(got, golden)
    decode_tracks_golden_and_float(prog, seq, MHA, tensors, final, head_f, xs, got[0])
    # the KV cache in the group pools reads back as the shared layout's and loads again
    state = seq.save_kv()
    seq2 = prog.sequence()
    seq2.load_kv(state=state)
    again = seq2.save_kv()
    for name in ("k", "v", "k_mant", "v_mant"):
        assert np.array_equal(state[name], again[name])
    assert np.array_equal(prog.decode_step(xs[7], seq2), prog.golden_decode_step(xs[7], seq))


def test_decode_logits_equal_the_shared_layout_after_the_same_cache(dev):
    # same weights, same loaded cache: a decode step's attention is per head the same arithmetic
    rng = np.random.default_rng(1)
    hp, *_ = build(dev, np.random.default_rng(5))
    sh, *_ = build(dev, np.random.default_rng(5), kv_layout="shared")
    assert sh.kv_layout == "shared"
    a, b = hp.sequence(), sh.sequence()
    hp.prefill(rng.normal(0, 1, (4, MHA.hidden)), a)
    state = a.save_kv()
    b.load_kv(state=state)
    x = rng.normal(0, 1, MHA.hidden)
    assert np.array_equal(hp.decode_step(x, a), sh.decode_step(x, b))


def test_head_parallel_is_refused_where_it_cannot_run(dev):
    rng = np.random.default_rng(2)
    gqa = BlockConfig(arch="llama", hidden=32, heads=2, kv_heads=1, head_dim=16, intermediate=48, norm_eps=1e-5,
                      rope_theta=10000.0)
    prog, *_ = build(dev, rng, cfg=gqa)                    # auto: GQA falls back to the shared layout
    assert prog.kv_layout == "shared"
    with pytest.raises(BlockProgramError, match="heads == kv_heads"):
        build(dev, rng, cfg=gqa, kv_layout="head_parallel")
    with pytest.raises(ValueError, match="kv_layout must be one of"):
        build(dev, rng, kv_layout="parallel")


MHA8 = BlockConfig(arch="llama", hidden=128, heads=8, kv_heads=8, head_dim=16, intermediate=96, norm_eps=1e-5,
                   rope_theta=10000.0)


def test_eight_row_program_appends_each_group_on_its_own_ports():
    # rows 8 / kv_ports 16: eight port groups of one head, K pools on w0, w2, .., w14 and V pools on
    # w1, .., w15; two KV appends per layer (kv_groups 8), each group on its own port; bit-exact with
    # the golden program
    with GoldenDevice(DesignLayout(parse_config(hp_vector_config("tiny_vec_hp8", rows=8)))) as dev:
        rng = np.random.default_rng(8)
        prog, tensors, final, head_f = build(dev, rng, cfg=MHA8)
        assert prog.kv_layout == "head_parallel"
        L = prog.layers[1]
        assert [b.port for b in L.k_pools] == [f"w{2 * r}" for r in range(8)]
        assert [b.port for b in L.v_pools] == [f"w{2 * r + 1}" for r in range(8)]
        seq = prog.sequence()
        xs = rng.normal(0, 1, (7, MHA8.hidden))
        golden = prog.golden_prefill(xs[:5], seq)
        assert np.array_equal(prog.prefill(xs[:5], seq), golden)
        decode_tracks_golden_and_float(prog, seq, MHA8, tensors, final, head_f, xs, golden[0])
        # a decode step: 14 descriptors per layer as in the shared layout (2 KV appends), + norm and head
        assert prog.last_step.descriptors == 14 * 2 + 2
        ports = prog.last_step.counters.get("ports")
        if ports:                                  # the golden device counts per port too
            assert all(ports[f"w{i}"]["bytes_written"] > 0 for i in range(16)), ports
