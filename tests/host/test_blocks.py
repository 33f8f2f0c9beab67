"""Whole blocks as one descriptor program (host/blocks.py) on the golden device: the program's result
equals the CPU golden program bit for bit, stays close to float LLaMA/BERT math, needs one start per
step, and refuses bad input before it changes anything."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from designs import tiny_vector_config_dict
from golden_kernel import GoldenDevice
from hbmforge.config import parse_config
from hbmforge.host.blocks import BlockConfig, BlockProgramError, BlockWeights, ModelProgram, TransformerBlock
from hbmforge.layout import DesignLayout
from hbmforge.numerics.encoded import quantize_weights_encoded

LLAMA = BlockConfig(arch="llama", hidden=32, heads=2, kv_heads=1, head_dim=16, intermediate=48, norm_eps=1e-5,
                    rope_theta=10000.0)
BERT = BlockConfig(arch="bert", hidden=32, heads=2, kv_heads=2, head_dim=16, intermediate=64, norm_eps=1e-12,
                   qkv_bias=True)
VOCAB = 40


@pytest.fixture(scope="module")
def layout():
    return DesignLayout(parse_config(tiny_vector_config_dict()))


@pytest.fixture
def dev(layout):
    with GoldenDevice(layout) as d:
        yield d


def float_layer(cfg: BlockConfig, rng) -> dict:
    t = {}
    for name in cfg.projections:
        n, k = cfg.projection_shape(name)
        t[name] = rng.normal(0, 1 / math.sqrt(k), (n, k))
        if cfg.arch == "bert" or (cfg.qkv_bias and name in ("q_proj", "k_proj", "v_proj")):
            t[f"{name}_bias"] = rng.normal(0, 0.05, n)
    for name in ("attn_norm", "mlp_norm"):
        t[name] = rng.uniform(0.7, 1.3, cfg.hidden)
        if cfg.arch == "bert":
            t[f"{name}_bias"] = rng.normal(0, 0.05, cfg.hidden)
    return t


def _rms(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _rope(x, pos, theta):          # HF rotate-half on [T, heads, hd]
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * c + rot * s


def _attend(q, k, v, mask):
    qh, kvh = q.shape[1], k.shape[1]
    out = np.zeros_like(q)
    for h in range(qh):
        s = q[:, h] @ k[:, h // (qh // kvh)].T / math.sqrt(q.shape[-1])
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, h] = (p / p.sum(1, keepdims=True)) @ v[:, h // (qh // kvh)]
    return out


def float_forward(cfg, layers, x, *, valid=None):
    """Float model over all tokens so far: LLaMA causal, BERT bidirectional over ``valid`` keys."""
    T = x.shape[0]
    pos = np.arange(T, dtype=np.float64)
    mask = np.tril(np.ones((T, T), bool)) if cfg.arch == "llama" else np.arange(T)[None, :] < (valid or T)
    h = x.copy()
    hd = cfg.head_dim

    def lin(t, name, a):
        return a @ t[name].T + t.get(f"{name}_bias", 0)

    for t in layers:
        a = _rms(h, t["attn_norm"], cfg.norm_eps) if cfg.arch == "llama" else h
        q = lin(t, "q_proj", a).reshape(T, cfg.heads, hd)
        k = lin(t, "k_proj", a).reshape(T, cfg.kv_heads, hd)
        v = lin(t, "v_proj", a).reshape(T, cfg.kv_heads, hd)
        if cfg.arch == "llama":
            q, k = _rope(q, pos, cfg.rope_theta), _rope(k, pos, cfg.rope_theta)
        o = lin(t, "o_proj", _attend(q, k, v, mask).reshape(T, -1))
        if cfg.arch == "llama":
            h = h + o
            m = _rms(h, t["mlp_norm"], cfg.norm_eps)
            g, u = lin(t, "gate_proj", m), lin(t, "up_proj", m)
            h = h + lin(t, "down_proj", g / (1 + np.exp(-g)) * u)
        else:
            h = _ln(h + o, t["attn_norm"], t["attn_norm_bias"], cfg.norm_eps)
            f = lin(t, "fc_in", h)
            f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))
            h = _ln(h + lin(t, "fc_out", f), t["mlp_norm"], t["mlp_norm_bias"], cfg.norm_eps)
    return h


def _cos(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def build_llama(dev, rng, layers=2, cfg=LLAMA, **options):
    lay = dev.layout
    tensors = [float_layer(cfg, rng) for _ in range(layers)]
    blocks = [BlockWeights.from_float(cfg, t, bits=8, group_size=lay.mm.group_size, k_align=lay.matmul.k_align)
              for t in tensors]
    final = rng.uniform(0.8, 1.2, cfg.hidden)
    head_f = rng.normal(0, 1 / math.sqrt(cfg.hidden), (VOCAB, cfg.hidden))
    head = quantize_weights_encoded(head_f, 8, lay.mm.group_size, lay.mm.scale_bits)
    prog = ModelProgram(dev, cfg, blocks, final_norm=(final, None), lm_head=head, kv_bits=8, **options)
    return prog, tensors, final, head_f


def assert_steps_equal_golden(prog, xs, prefill):
    """Prefill ``xs[:prefill]``, then decode the rest one token per step: every result equals
    the golden program's (golden first: a step advances the sequence)."""
    seq = prog.sequence()
    golden = prog.golden_prefill(xs[:prefill], seq)
    assert np.array_equal(prog.prefill(xs[:prefill], seq), golden)
    for t in range(prefill, len(xs)):
        golden = prog.golden_decode_step(xs[t], seq)
        assert np.array_equal(prog.decode_step(xs[t], seq), golden)


def test_decoder_steps_equal_the_golden_program_and_track_float(dev):
    rng = np.random.default_rng(0)
    prog, tensors, final, head_f = build_llama(dev, rng)
    seq = prog.sequence()
    xs = rng.normal(0, 1, (9, LLAMA.hidden))
    golden = prog.golden_prefill(xs[:6], seq)
    got = prog.prefill(xs[:6], seq)
    assert got.shape == (1, VOCAB)
    assert np.array_equal(got, golden)
    assert seq.length == 6 and prog.last_step.host_round_trips == 1
    outs = [got[0]]
    for t in range(6, 9):
        golden = prog.golden_decode_step(xs[t], seq)
        got = prog.decode_step(xs[t], seq)
        assert got.shape == (VOCAB,) and np.array_equal(got, golden)
        outs.append(got)
    assert seq.length == 9
    h = float_forward(LLAMA, tensors, xs)
    ref = _rms(h, final, LLAMA.norm_eps) @ head_f.T
    for i, out in zip(range(5, 9), outs):
        assert _cos(out, ref[i]) > 0.99, (i, _cos(out, ref[i]))


def test_one_start_and_one_wait_per_step(dev, monkeypatch):
    rng = np.random.default_rng(1)
    prog, *_ = build_llama(dev, rng, layers=2)
    seq = prog.sequence()
    runs = []
    orig = dev.run
    monkeypatch.setattr(dev, "run", lambda *a, **k: runs.append(a) or orig(*a, **k))
    prog.prefill(rng.normal(0, 1, (3, LLAMA.hidden)), seq)
    prog.decode_step(rng.normal(0, 1, LLAMA.hidden), seq)
    assert len(runs) == 2                                # every layer, the norm and the head: one run each step
    assert prog.last_step.descriptors == 14 * 2 + 2


def test_encoder_block_with_padding_tracks_float_bert(dev):
    rng = np.random.default_rng(2)
    lay = dev.layout
    tensors = float_layer(BERT, rng)
    blk = TransformerBlock(dev, BERT, BlockWeights.from_float(BERT, tensors, bits=8, group_size=lay.mm.group_size))
    x = _ln(rng.normal(0, 1, (7, BERT.hidden)), 1.0, 0.0, 1e-12)
    seq = blk.sequence()
    golden = blk.golden_prefill(x, seq, valid_len=5)
    h = blk.prefill(x, seq, valid_len=5)
    assert np.array_equal(h, golden)
    ref = float_forward(BERT, [tensors], x, valid=5)
    for i in range(5):
        assert _cos(h[i], ref[i]) > 0.99, (i, _cos(h[i], ref[i]))


def test_sequences_get_and_return_pages(dev):
    rng = np.random.default_rng(3)
    prog, *_ = build_llama(dev, rng, layers=1, max_context=16, kv_pages=6)
    a, b = prog.sequence(), prog.sequence()
    prog.prefill(rng.normal(0, 1, (5, LLAMA.hidden)), a)       # 2 pages of 4 tokens
    prog.prefill(rng.normal(0, 1, (4, LLAMA.hidden)), b)       # 1 page
    assert prog.free_pages == 3 and not set(a.pages) & set(b.pages)
    a.truncate(4)
    assert a.length == 4 and len(a.pages) == 1 and prog.free_pages == 4
    a.free()
    assert prog.free_pages == 5 and a.freed


def test_bad_steps_change_nothing(dev):
    rng = np.random.default_rng(4)
    prog, *_ = build_llama(dev, rng, layers=1, max_context=8, kv_pages=2)
    seq = prog.sequence()
    prog.prefill(rng.normal(0, 1, (3, LLAMA.hidden)), seq)
    state = (seq.length, seq.pages, prog.free_pages)
    with pytest.raises(ValueError, match=r"x must be \[T >= 1, 32\]"):
        prog.prefill(rng.normal(0, 1, (2, 31)), seq)
    with pytest.raises(ValueError, match="NaN|finite"):
        prog.decode_step(np.full(LLAMA.hidden, np.nan), seq)
    with pytest.raises(BlockProgramError, match="max_context is 8"):
        prog.prefill(rng.normal(0, 1, (6, LLAMA.hidden)), seq)
    with pytest.raises(BlockProgramError, match="beyond int32"):
        prog.decode_step(np.full(LLAMA.hidden, 1e6), seq)
    with pytest.raises(ValueError, match="valid_len applies to encoders"):
        prog.prefill(rng.normal(0, 1, (1, LLAMA.hidden)), seq, valid_len=1)
    other, *_ = build_llama(dev, rng, layers=1, max_context=8, kv_pages=2)
    with pytest.raises(ValueError, match="belongs to another program"):
        other.decode_step(rng.normal(0, 1, LLAMA.hidden), seq)
    with pytest.raises(TypeError, match="ModelSequence"):
        prog.decode_step(rng.normal(0, 1, LLAMA.hidden), "seq")
    assert (seq.length, seq.pages, prog.free_pages) == state


def test_models_the_design_cannot_run_are_refused_before_any_upload(dev, layout):
    rng = np.random.default_rng(5)
    lay = dev.layout
    t = float_layer(LLAMA, rng)
    w = BlockWeights.from_float(LLAMA, t, bits=8, group_size=lay.mm.group_size)
    before = len(dev.live_buffers())
    with pytest.raises(BlockProgramError, match="head_dim 32 differs"):
        ModelProgram(dev, BlockConfig(**{**LLAMA.__dict__, "head_dim": 32, "heads": 1}), [w])
    with pytest.raises(BlockProgramError, match="hidden = 40 must be a multiple of the matmul.s k_align"):
        ModelProgram(dev, BlockConfig(**{**LLAMA.__dict__, "hidden": 40}), [w])
    with pytest.raises(BlockProgramError, match=r"intermediate \(padded to k_align\) = 1024 exceeds the vector"):
        ModelProgram(dev, BlockConfig(**{**LLAMA.__dict__, "intermediate": 1016}), [w])
    with pytest.raises(ValueError, match=r"blocks\[0\].gate_proj must be"):
        ModelProgram(dev, BlockConfig(**{**LLAMA.__dict__, "intermediate": 64}), [w])
    with pytest.raises(ValueError, match="heads .* multiple of kv_heads"):
        ModelProgram(dev, BlockConfig(**{**LLAMA.__dict__, "kv_heads": 3}), [w])
    with pytest.raises(ValueError, match="kv_bits"):
        ModelProgram(dev, LLAMA, [w], kv_bits=2)
    with pytest.raises(BlockProgramError, match="sparse24: design 'tiny_vec'.s matmul engine has sparse24 false"):
        ModelProgram(dev, LLAMA, [w], sparse24=True)
    with pytest.raises(TypeError, match="sparse24"):
        ModelProgram(dev, LLAMA, [w], sparse24="yes")
    assert len(dev.live_buffers()) == before


def test_sparse24_programs_pack_2_4_weights_and_refuse_dense_ones():
    """sparse24=True: 2:4 packed weights (the golden program decodes them like the engine); weights
    that are not 2:4 are refused, naming the projection, before any upload."""
    from hbmforge.numerics.sparse import prune_2_4

    cfg_dict = tiny_vector_config_dict("tiny_vec_s24")
    cfg_dict["engines"][0].update(weight_bits=[2, 4, "ternary"], max_k=16, sparse24=True, sparse24_pairs=True)
    with GoldenDevice(DesignLayout(parse_config(cfg_dict))) as dev:
        rng = np.random.default_rng(7)
        t = float_layer(LLAMA, rng)
        dense = BlockWeights.from_float(LLAMA, t, bits=4, group_size=dev.layout.mm.group_size)
        before = len(dev.live_buffers())
        with pytest.raises(BlockProgramError, match=r"blocks\[0\].projections\['q_proj'\] is not 2:4 sparse"):
            ModelProgram(dev, LLAMA, [dense], sparse24=True)
        assert len(dev.live_buffers()) == before
        t.update({name: prune_2_4(t[name]) for name in LLAMA.projections})
        sparse = BlockWeights.from_float(LLAMA, t, bits=4, group_size=dev.layout.mm.group_size)
        prog = ModelProgram(dev, LLAMA, [sparse], sparse24=True)
        x = rng.normal(0, 1, (3, LLAMA.hidden))
        h = prog.prefill(x, prog.sequence())
        ref = float_forward(LLAMA, [t], x)
        assert min(_cos(h[i], ref[i]) for i in range(3)) > 0.98
        prog.close()


def test_an_mlp_wider_than_max_k_splits_k_in_the_program():
    cfg_dict = tiny_vector_config_dict("tiny_vec_split")
    cfg_dict["engines"][0]["max_k"] = 64                    # intermediate 96 = two K slices
    with GoldenDevice(DesignLayout(parse_config(cfg_dict))) as dev:
        cfg = BlockConfig(**{**LLAMA.__dict__, "intermediate": 96})
        rng = np.random.default_rng(6)
        t = float_layer(cfg, rng)
        blk = TransformerBlock(dev, cfg, BlockWeights.from_float(cfg, t, bits=8, group_size=dev.layout.mm.group_size))
        x = rng.normal(0, 1, (3, cfg.hidden))
        seq = blk.sequence()
        h = blk.prefill(x, seq)
        ref = float_forward(cfg, [t], x)
        assert min(_cos(h[i], ref[i]) for i in range(3)) > 0.99


def test_decoder_blocks_with_inline_scales_equal_the_golden_program():
    """scale_stream inline: host/blocks packs every projection's scales into its weight stripes;
    the golden device reads them from there (the co-sim twin of this test is marked slow)."""
    cfg_dict = tiny_vector_config_dict("tiny_vec_inline")
    cfg_dict["engines"][0]["scale_stream"] = "inline"
    with GoldenDevice(DesignLayout(parse_config(cfg_dict))) as d:
        assert d.layout.matmul.inline_scales
        rng = np.random.default_rng(12)
        prog, *_ = build_llama(d, rng, layers=2)
        assert_steps_equal_golden(prog, rng.normal(0, 1, (7, LLAMA.hidden)), prefill=5)
        prog.close()


def test_a_residual_add_carries_the_next_norm_on_one_row_designs():
    """On a design of one row per block (the decode designs' matmul) each residual add of a LLaMA block
    also writes the next RMSNorm's int8 rows (res_out): two descriptors fewer per layer, and every
    logit the same as the separate passes give (a two-row design, where the passes stay apart)."""
    def run(rows):
        cfg = tiny_vector_config_dict()
        cfg["engines"][0]["rows"] = rows
        with GoldenDevice(DesignLayout(parse_config(cfg))) as d:
            prog, *_ = build_llama(d, np.random.default_rng(21), layers=3)
            xs = np.random.default_rng(22).normal(0, 1, (6, LLAMA.hidden))
            seq = prog.sequence()
            out = [prog.prefill(xs[:3], seq)] + [prog.decode_step(x, seq) for x in xs[3:]]
            return out, prog.last_step.descriptors

    fused, n_fused = run(1)
    apart, n_apart = run(2)
    for a, b in zip(fused, apart):
        assert np.array_equal(a, b)
    assert n_fused == n_apart - 2 * 3             # norm2 of each layer, norm1 of layers 1, 2 and the final norm


def test_a_decode_step_activates_only_the_ffns_own_columns_and_keeps_the_padding_zero():
    """intermediate 40 on a 16-aligned design: gate/up compute 40 columns, down's K is padded to 48. A
    decode step's SwiGLU covers the 40 (into xg, whose 8 padded bytes the host zeroes each step: stale
    bytes there are not read as activations); its logits equal the prefill's for the same position."""
    cfg = dataclasses.replace(LLAMA, intermediate=40)
    with GoldenDevice(DesignLayout(parse_config(tiny_vector_config_dict()))) as d:
        prog, *_ = build_llama(d, np.random.default_rng(3), layers=2, cfg=cfg)
        assert (prog._ip, prog._in) == (48, 40)
        xs = np.random.default_rng(4).normal(0, 1, (5, cfg.hidden))
        whole = prog.prefill(xs, prog.sequence(), all_logits=True)
        seq = prog.sequence()
        prog.prefill(xs[:4], seq)
        xg = prog._work.get("xg", 48)
        d.write(xg, np.full(48, 0x5A, np.uint8))              # stale bytes where the padding is read
        assert np.array_equal(prog.decode_step(xs[4], seq), whole[-1])
        assert prog._work.get("xg", 48) is xg
        assert bytes(d.read(xg))[40:48] == bytes(8)                  # the padding: zero again
