"""Starting a sequence at length L from a given KV cache (``ModelSequence.load_kv``/``save_kv``/
``read_kv``) and sink + window attention in block programs: a restored cache decodes exactly like
the original, a loaded float cache lands in the pages the engines read (device == golden program),
and bad input is refused before anything changes. Golden device, plus the tiny co-simulation."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.host.blocks import BlockProgramError

from test_blocks import LLAMA, build_llama, dev, layout  # noqa: F401 - the golden device fixtures of test_blocks


def _random_kv(prog, rng, length, spread=0.5):
    shape = (prog.num_layers, length, LLAMA.kv_heads, LLAMA.head_dim)
    return rng.normal(0, spread, shape), rng.normal(0, spread, shape)


@pytest.mark.parametrize("kv_bits", [8, 4])
def test_a_saved_cache_restored_in_a_new_sequence_decodes_bit_for_bit_like_the_original(dev, kv_bits):
    rng = np.random.default_rng(40 + kv_bits)
    prog, *_ = build_llama(dev, rng) if kv_bits == 8 else _llama_kv4(dev, rng)
    a = prog.sequence()
    xs = rng.normal(0, 1, (9, LLAMA.hidden))
    prog.prefill(xs[:7], a)
    state = a.save_kv()
    assert state["k"].shape == (2, 7, LLAMA.kv_heads, LLAMA.head_dim) and state["kv_bits"] == kv_bits
    b = prog.sequence()
    b.load_kv(state=state)
    assert b.length == 7 and len(b.pages) == len(a.pages)
    for name in ("k", "v", "k_mant", "v_mant"):
        assert np.array_equal(b.save_kv()[name], state[name])
    for t in (7, 8):
        ya = prog.decode_step(xs[t], a)
        assert np.array_equal(prog.golden_decode_step(xs[t], b), ya)
        assert np.array_equal(prog.decode_step(xs[t], b), ya)
    prog.close()


def _llama_kv4(dev, rng):
    # build_llama fixes kv_bits=8; the same model with a KV4 cache
    import test_blocks
    from hbmforge.host.blocks import BlockWeights, ModelProgram
    from hbmforge.numerics.encoded import quantize_weights_encoded

    lay = dev.layout
    blocks = [BlockWeights.from_float(LLAMA, test_blocks.float_layer(LLAMA, rng), bits=8, group_size=lay.mm.group_size)
              for _ in range(2)]
    head = quantize_weights_encoded(rng.normal(0, 0.2, (test_blocks.VOCAB, LLAMA.hidden)), 8, lay.mm.group_size,
                                    lay.mm.scale_bits)
    return (ModelProgram(dev, LLAMA, blocks, final_norm=(rng.uniform(0.8, 1.2, LLAMA.hidden), None), lm_head=head,
                         kv_bits=4),)


def test_a_float_cache_lands_where_the_engines_read_it(dev):
    """K/V read back from a prefilled sequence (rotate-half order, dequantized) and loaded into
    another sequence give the same cache within half a quantization step, and a step on it
    equals the golden program (which reads the device memory)."""
    rng = np.random.default_rng(41)
    prog, *_ = build_llama(dev, rng)
    a = prog.sequence()
    xs = rng.normal(0, 1, (8, LLAMA.hidden))
    prog.prefill(xs[:6], a)
    k, v = a.read_kv()
    assert k.shape == v.shape == (2, 6, LLAMA.kv_heads, LLAMA.head_dim)
    b = prog.sequence()
    b.load_kv(k, v)
    k2, v2 = b.read_kv()
    for x, x2, which in ((k, k2, "k"), (v, v2, "v")):
        tol = np.abs(x).max() / 127 * 1.01
        assert np.abs(x - x2).max() <= tol, which
    golden = prog.golden_decode_step(xs[6], b)
    assert np.array_equal(prog.decode_step(xs[6], b), golden)
    # the float cache's decode tracks the original sequence's (same cache up to rounding)
    ya = prog.decode_step(xs[6], a)
    assert np.corrcoef(ya, golden)[0, 1] > 0.98
    prog.close()


def test_a_random_cache_at_full_context_decodes_like_the_golden_program(dev):
    rng = np.random.default_rng(42)
    prog, *_ = build_llama(dev, rng)
    seq = prog.sequence()
    L = prog.max_context - 1
    seq.load_kv(*_random_kv(prog, rng, L))
    assert seq.length == L and prog.free_pages == prog.num_pages - len(seq.pages)
    x = rng.normal(0, 1, LLAMA.hidden)
    golden = prog.golden_decode_step(x, seq)
    assert np.array_equal(prog.decode_step(x, seq), golden)
    assert seq.length == L + 1
    seq2 = prog.sequence()
    with pytest.raises(BlockProgramError, match="free pages"):
        seq2.load_kv(*_random_kv(prog, rng, 8))
    prog.close()


def test_sink_and_window_attention_equals_golden_and_differs_from_full_attention(dev):
    rng = np.random.default_rng(43)
    state = np.random.default_rng(7)
    progs = []
    for opts in ({}, {"window": 8, "sink": 4}):
        prog, *_ = build_llama(dev, np.random.default_rng(43), **opts)
        progs.append(prog)
    k, v = _random_kv(progs[0], state, 40)
    x = rng.normal(0, 1, LLAMA.hidden)
    outs = []
    for prog in progs:
        seq = prog.sequence()
        seq.load_kv(k, v)
        golden = prog.golden_decode_step(x, seq)
        outs.append(prog.decode_step(x, seq))
        assert np.array_equal(outs[-1], golden)
    assert (progs[1].window, progs[1].sink) == (8, 4)
    assert not np.array_equal(outs[0], outs[1])
    for prog in progs:
        prog.close()


def test_bad_kv_loads_are_refused_before_anything_changes(dev):
    rng = np.random.default_rng(44)
    prog, *_ = build_llama(dev, rng)
    seq = prog.sequence()
    k, v = _random_kv(prog, rng, 10)
    free = prog.free_pages
    bad = [
        ((k[:1], v[:1]), {}, ValueError, "must both be"),
        ((k, v[:, :9]), {}, ValueError, "must both be"),
        ((k[..., :8], v[..., :8]), {}, ValueError, "must both be"),
        ((np.where(k > 1, np.nan, k), v), {}, ValueError, "k"),
        ((k * 1e6, v), {}, ValueError, "beyond the cache's range"),
        ((k, None), {}, ValueError, "needs k and v"),
        ((k, v), {"state": {}}, ValueError, "not both"),
        ((), {"state": [1, 2]}, TypeError, "save_kv"),
        ((), {"state": {"k": 1}}, ValueError, "lacks"),
        (("abc", v), {}, TypeError, "k"),
    ]
    for args, kw, err, msg in bad:
        with pytest.raises(err, match=msg):
            seq.load_kv(*args, **kw)
        assert seq.length == 0 and seq.pages == () and prog.free_pages == free
    long = prog.max_context + 1
    with pytest.raises(ValueError, match="length"):
        seq.load_kv(*_random_kv(prog, rng, long))
    good = prog.sequence()
    good.load_kv(k, v)
    st = good.save_kv()
    for change, msg in (({"kv_bits": 4}, "kv_bits"), ({"k": st["k"][..., :8]}, "state\\[.k.\\]"),
                        ({"k_mant": np.zeros_like(st["k_mant"])}, "mantissas"),
                        ({"k": st["k"].astype(np.int64) * 20}, "values must be in"),
                        ({"v": st["v"].astype(float)}, "integers"),
                        ({"v": st["v"][:, :3], "v_mant": st["v_mant"][:, :3]}, "differ")):
        with pytest.raises((ValueError, TypeError), match=msg):
            seq.load_kv(state={**st, **change})
        assert seq.length == 0 and seq.pages == ()
    with pytest.raises(ValueError, match="already holds"):
        good.load_kv(k, v)
    assert good.length == 10
    good.free()
    with pytest.raises(ValueError, match="freed"):
        good.load_kv(k, v)
    prog.close()


def test_bad_window_and_sink_are_refused(dev):
    rng = np.random.default_rng(45)
    for opts, msg in (({"sink": 4}, "needs a window"), ({"window": -1}, "window"), ({"window": 10 ** 6}, "window"),
                      ({"window": 2.5}, "window")):
        with pytest.raises((ValueError, TypeError), match=msg):
            build_llama(dev, rng, **opts)
