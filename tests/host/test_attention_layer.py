"""Attention + KVCache on the golden device (numerics.program.execute) and, marked rtl, on the
Verilator co-simulation of a small kernel with an attention engine: bit-exact device integers,
host-owned page allocation that keeps sequences apart, measured clipping, clear input errors.

Quantization error measured here (Gaussian Q/K/V, head_dim 16, groups of 8, relative
Frobenius error vs float64 attention on the unquantized tensors): KV8 ~0.5-1 %, KV4 ~7-11 %.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hbmforge.engines.attention import attention_geometry
from hbmforge.config import parse_config
from hbmforge.host import Attention, KVCache, KVCacheError, KVCacheFullError, open_device
from hbmforge.host.attention import attention_peak_macs
from hbmforge.host.kvcache import KVClipError, KVClipWarning, SequenceStateError
from hbmforge.layout import DesignLayout
from hbmforge.numerics.attention import kv_token_addresses, pack_q_records, run_attention, write_kv_token
from hbmforge.numerics.program import SparseMemory

from designs import tiny_attention_config_dict, tiny_config_dict
from golden_kernel import GoldenDevice

HD = 16


attn_config = tiny_attention_config_dict


@pytest.fixture(scope="module")
def adev():
    with GoldenDevice(DesignLayout(parse_config(attn_config()))) as dev:
        yield dev


def rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def tokens(rng, n, heads, scale=1.0):
    return rng.standard_normal((n, heads, HD)) * scale


# -- scenarios shared by the golden and the RTL tests -------------------------------------------

def prefill_then_decode(dev, *, kv_bits, q_heads, kv_heads, window=0, sink=0, prefill=9, steps=4, seed=0):
    """Prefill then decode steps; every device integer equals the golden model's. Returns the layer
    (closed) and the float outputs/references for error checks."""
    rng = np.random.default_rng(seed)
    errs = []
    with Attention(dev, q_heads=q_heads, kv_heads=kv_heads, head_dim=HD, window=window, sink=sink,
                   kv_bits=kv_bits, pages=20) as att:
        q = tokens(rng, prefill, q_heads)
        k, v = tokens(rng, prefill, kv_heads), tokens(rng, prefill, kv_heads)
        o = att.prefill(q, k, v)
        r = att.last_run
        assert o.shape == (prefill, q_heads, HD) and o.dtype == np.float32
        assert np.array_equal(r.output_int, att.golden_int(r.q_int, r.mult, r.shift))
        assert np.array_equal(o, att.golden(q))
        errs.append(rel_err(o, att.reference(q, k, v)))
        for _ in range(steps):
            q1, k1, v1 = tokens(rng, 1, q_heads)[0], tokens(rng, 1, kv_heads)[0], tokens(rng, 1, kv_heads)[0]
            o1 = att.decode_step(q1, k1, v1)
            r = att.last_run
            assert o1.shape == (q_heads, HD)
            assert r.n_q == 1 and r.ctx_len == att.sequence.length
            assert np.array_equal(r.output_int, att.golden_int(r.q_int, r.mult, r.shift))
            k, v = np.concatenate([k, k1[None]]), np.concatenate([v, v1[None]])
            errs.append(rel_err(o1, att.reference(q1[None], k, v)[0]))
        assert att.sequence.length == prefill + steps
    return max(errs)


def two_sequences_interleaved(dev, *, kv_bits=8, seed=1):
    """Two sequences share one pool, appends interleaved; each equals its golden and a run alone."""
    rng = np.random.default_rng(seed)
    with KVCache(dev, kv_heads=2, kv_bits=kv_bits, pages=12, k_range=3.0, v_range=3.0) as cache:
        att = Attention(dev, q_heads=4, kv_heads=2, head_dim=HD, cache=cache)
        a, b = cache.sequence(), cache.sequence()
        ka, va, kb, vb = [], [], [], []
        for step, (na, nb) in enumerate([(3, 5), (1, 1), (6, 2), (1, 1), (1, 4)]):
            xa, ya, xb, yb = (tokens(rng, n, 2) for n in (na, na, nb, nb))
            qa, qb = tokens(rng, na, 4), tokens(rng, nb, 4)
            att.prefill(qa, xa, ya, a)
            ra = att.last_run
            ob = att.prefill(qb, xb, yb, b)
            rb = att.last_run
            ka.append(xa); va.append(ya); kb.append(xb); vb.append(yb)
            assert np.array_equal(ra.output_int, att.golden_int(ra.q_int, ra.mult, ra.shift, a))
            assert np.array_equal(rb.output_int, att.golden_int(rb.q_int, rb.mult, rb.shift, b))
            assert set(a.pages).isdisjoint(b.pages)
            assert all(cache.page_owner(p) == a.id for p in a.pages)
            assert all(cache.page_owner(p) == b.id for p in b.pages)
        # the same tokens in a fresh sequence of their own give the same answer
        alone = cache.sequence()
        att2 = Attention(dev, q_heads=4, kv_heads=2, head_dim=HD, cache=cache)
        kb_all, vb_all = np.concatenate(kb), np.concatenate(vb)
        b_free_before = cache.free_pages
        nb = len(qb)
        cache.append(alone, kb_all[:-nb], vb_all[:-nb])
        ob2 = att2.prefill(qb, kb_all[-nb:], vb_all[-nb:], alone)
        assert cache.free_pages == b_free_before - len(b.pages)
        assert np.array_equal(att2.last_run.output_int[-len(qb):], rb.output_int)
        assert np.array_equal(ob2, ob)
        att.close()
        att2.close()


def encoder_pass(dev, *, kv_bits=8, heads=2, tokens_=11, valid=7, seed=7):
    """A bidirectional (encoder) layer over ``tokens_`` positions of which ``valid`` are real: device
    integers equal the golden model's; the padded keys change nothing (the valid rows equal a run
    over the valid tokens alone, bit for bit); padded query rows attend to the valid keys."""
    rng = np.random.default_rng(seed)
    q, k, v = tokens(rng, tokens_, heads), tokens(rng, tokens_, heads), tokens(rng, tokens_, heads)
    k[valid:] *= 50.0                                    # padding that would dominate if it were read
    with KVCache(dev, kv_heads=heads, kv_bits=kv_bits, pages=8, k_range=4.0, v_range=4.0,
                 on_clip="count") as cache:
        att = Attention(dev, q_heads=heads, kv_heads=heads, head_dim=HD, cache=cache, mode="bidirectional")
        o = att.prefill(q, k, v, valid_len=valid)
        r = att.last_run
        assert np.array_equal(r.output_int, att.golden_int(r.q_int, r.mult, r.shift, valid_len=valid))
        assert np.array_equal(o, att.golden(q, valid_len=valid))
        ref = att.reference(q, k, v, valid_len=valid)
        err = rel_err(o, ref)
        alone = cache.sequence()
        cache.append(alone, k[:valid], v[:valid])
        o2 = att.attend(q[:valid], alone)
        assert np.array_equal(o2, o[:valid])
        causal = Attention(dev, q_heads=heads, kv_heads=heads, head_dim=HD, cache=cache)
        assert not np.allclose(causal.attend(q[:valid], alone), o2)        # the mask really differs
        att.close()
        causal.close()
    return err


# -- golden device -------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_bits, bound", [(8, 0.03), (4, 0.2)])
def test_bidirectional_encoder_pass_matches_the_golden_model(adev, kv_bits, bound):
    assert encoder_pass(adev, kv_bits=kv_bits) < bound
    assert adev.live_buffers() == []


def test_bidirectional_bad_inputs_fail_before_touching_the_device(adev):
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="takes no window or sink"):
        Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, mode="bidirectional", window=4)
    with pytest.raises(ValueError, match=r"mode must be one of \['causal', 'bidirectional'\]"):
        Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, mode="encoder")
    with Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, pages=4, mode="bidirectional") as enc, \
            Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, pages=4) as dec:
        q, k, v = tokens(rng, 5, 2), tokens(rng, 5, 2), tokens(rng, 5, 2)
        with pytest.raises(ValueError, match=r"valid_len must be in \[1, 5\], got 6"):
            enc.prefill(q, k, v, valid_len=6)
        with pytest.raises(ValueError, match=r"valid_len must be in \[1, 5\], got 0"):
            enc.prefill(q, k, v, valid_len=0)
        with pytest.raises(ValueError, match="valid_len applies to bidirectional layers"):
            dec.prefill(q, k, v, valid_len=3)
        with pytest.raises(ValueError, match="has no decode step"):
            enc.decode_step(q[0], k[0], v[0])
        assert enc.sequence.length == 0 and dec.sequence.length == 0
        assert enc.cache.free_pages == 4 and dec.cache.free_pages == 4
        enc.prefill(q, k, v, valid_len=3)
        assert enc.last_run.n_q == 5 and enc.descriptor(enc.sequence, 5, valid_len=3)["mode"] == 1
    assert adev.live_buffers() == []


@pytest.mark.parametrize("kv_bits, q_heads, kv_heads, window, sink, bound", [
    (8, 4, 2, 0, 0, 0.03),          # GQA, causal
    (4, 4, 2, 0, 0, 0.2),
    (8, 2, 2, 5, 0, 0.03),          # MHA, sliding window
    (4, 6, 3, 4, 2, 0.2),           # GQA, sink + window
    (8, 8, 1, 6, 1, 0.03),          # MQA
])
def test_prefill_and_decode_match_the_golden_model(adev, kv_bits, q_heads, kv_heads, window, sink, bound):
    worst = prefill_then_decode(adev, kv_bits=kv_bits, q_heads=q_heads, kv_heads=kv_heads, window=window,
                                sink=sink)
    assert worst < bound


def test_two_sequences_share_the_pool_without_touching_each_other(adev):
    two_sequences_interleaved(adev)


def test_append_writes_only_the_new_tokens_bytes_in_the_engine_layout(adev):
    rng = np.random.default_rng(2)
    geom = attention_geometry(adev.layout)
    for bits in (8, 4):
        with KVCache(adev, kv_heads=3, kv_bits=bits, pages=6) as cache:
            a, b = cache.sequence(), cache.sequence()
            cache.append(a, tokens(rng, 5, 3), tokens(rng, 5, 3))
            cache.append(b, tokens(rng, 3, 3), tokens(rng, 3, 3))
            before = [adev.read(p) for p in (cache.k_pool, cache.v_pool)]
            rep = a.append(tokens(rng, 1, 3), tokens(rng, 1, 3))        # token 5: slot 1 of a's 2nd page
            assert rep.new_pages == 0 and rep.tokens == 1
            after = [adev.read(p) for p in (cache.k_pool, cache.v_pool)]
            # allowed ranges: the new token's mantissas and value record in every KV head
            page = a.pages[1]
            for pool, old, new in zip((cache.k_pool, cache.v_pool), before, after):
                allowed = np.zeros(len(old), bool)
                for h in range(3):
                    ma, va = (x - pool.address for x in
                              kv_token_addresses(geom, pool.address, page, 3, h, 1, bits))
                    allowed[ma:ma + geom.groups * 2] = True
                    allowed[va:va + geom.value_bytes(bits)] = True
                diff = np.frombuffer(old, np.uint8) != np.frombuffer(new, np.uint8)
                assert diff.any() and not (diff & ~allowed).any()
            assert rep.bytes_written == 2 * 3 * (geom.groups * 2 + geom.value_bytes(bits))
            # every byte of both sequences equals numerics.write_kv_token of the host mirror
            for seq in (a, b):
                k, km, v, vm = seq.quantized()
                for pool, vals, mants in ((cache.k_pool, k, km), (cache.v_pool, v, vm)):
                    mem = SparseMemory()
                    for t in range(seq.length):
                        write_kv_token(mem, geom, pool.address, seq.pages[t // 4], t % 4, vals[t], mants[t], bits)
                    for t in range(seq.length):             # (unwritten slots keep stale bytes)
                        for h in range(3):
                            for addr, n in zip(kv_token_addresses(geom, pool.address, seq.pages[t // 4], 3, h,
                                                                  t % 4, bits),
                                               (geom.groups * 2, geom.value_bytes(bits))):
                                assert adev.read(pool, n, offset=addr - pool.address) == mem.read(addr, n)


def test_free_returns_pages_and_a_new_sequence_reuses_them_without_disturbing_others(adev):
    rng = np.random.default_rng(3)
    with KVCache(adev, kv_heads=2, pages=5) as cache:
        att = Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, cache=cache)
        a, b = cache.sequence(), cache.sequence()
        cache.append(a, tokens(rng, 6, 2), tokens(rng, 6, 2))         # pages 0, 1
        qb = tokens(rng, 5, 2)
        ob = att.prefill(qb, tokens(rng, 5, 2), tokens(rng, 5, 2), b)   # pages 2, 3
        b_bytes = [adev.read(pool, cache.page_bytes, offset=p * cache.page_bytes)
                   for pool in (cache.k_pool, cache.v_pool) for p in b.pages]
        assert a.pages == (0, 1) and b.pages == (2, 3) and cache.free_pages == 1
        a.free()
        assert cache.free_pages == 3 and a.freed and cache.page_owner(0) is None
        c = cache.sequence()
        cache.append(c, tokens(rng, 12, 2, 5.0) * 0.3, tokens(rng, 12, 2))   # lowest free pages first
        assert c.pages == (0, 1, 4)
        assert b_bytes == [adev.read(pool, cache.page_bytes, offset=p * cache.page_bytes)
                           for pool in (cache.k_pool, cache.v_pool) for p in b.pages]
        assert np.array_equal(att.attend(qb, b), ob)                    # b still answers the same
        with pytest.raises(SequenceStateError, match="was freed"):
            att.decode_step(tokens(rng, 1, 2)[0], tokens(rng, 1, 2)[0], tokens(rng, 1, 2)[0], a)
        with pytest.raises(SequenceStateError, match="was freed"):
            cache.append(a, tokens(rng, 1, 2), tokens(rng, 1, 2))
        a.free()                                                          # idempotent
        att.close()


def test_scales_are_fixed_at_the_first_append_and_clipping_is_counted(adev):
    rng = np.random.default_rng(4)
    with KVCache(adev, kv_heads=2, kv_bits=8, pages=4, on_clip="count") as cache:
        s = cache.sequence()
        assert not cache.k_head_scale.any()                               # not calibrated yet
        cache.append(s, tokens(rng, 2, 2), tokens(rng, 2, 2))
        ks = cache.k_head_scale
        assert (ks > 0).all() and cache.last_append.calibrated_heads["k"] == [0, 1]
        rep = cache.append(s, tokens(rng, 1, 2, 2.0), tokens(rng, 1, 2))  # within the 2x headroom: exact
        assert np.array_equal(cache.k_head_scale, ks) and rep.clipped_groups == {"k": 0, "v": 0}
        big = tokens(rng, 1, 2, 1.0)
        big[0, 1, :8] *= 100.0                                            # far beyond the range
        rep = cache.append(s, big, tokens(rng, 1, 2))
        assert rep.clipped_groups["k"] == 1 and rep.clipped_values["k"] >= 1 and rep.max_overrange["k"] > 5
        assert cache.stats["clipped_groups"]["k"] == 1
        assert np.array_equal(cache.k_head_scale, ks)
    with KVCache(adev, kv_heads=2, pages=4, k_range=1.0, v_range=[1.0, 2.0]) as cache:
        s = cache.sequence()
        with pytest.warns(KVClipWarning, match=r"K: 1 group\(s\)"):
            cache.append(s, np.full((1, 2, HD), 0.1) + np.eye(1, HD * 2, 3).reshape(1, 2, HD) * 9, np.zeros((1, 2, HD)))
    with KVCache(adev, kv_heads=2, pages=4, k_range=1.0, v_range=1.0, on_clip="raise") as cache:
        s = cache.sequence()
        with pytest.raises(KVClipError, match="beyond the calibrated range"):
            cache.append(s, np.full((2, 2, HD), 5.0), np.zeros((2, 2, HD)))
        assert s.length == 0 and cache.free_pages == 4 and cache.stats["appends"] == 0   # nothing happened


def test_counters_report_kv_bytes_and_macs(adev):
    rng = np.random.default_rng(5)
    with Attention(adev, q_heads=4, kv_heads=2, head_dim=HD, window=6, pages=8) as att:
        att.prefill(tokens(rng, 11, 4), tokens(rng, 11, 2), tokens(rng, 11, 2))
        att.decode_step(tokens(rng, 1, 4)[0], tokens(rng, 1, 2)[0], tokens(rng, 1, 2)[0])
        r = att.last_run
        mem = SparseMemory()
        # the golden engine's own read accounting for the same descriptor
        d = att.descriptor(att.sequence, 1)
        for buf in (att.sequence.block_table, att.cache.k_pool, att.cache.v_pool):
            mem.write(buf.address, adev.read(buf))
        geom = att.geometry
        qbuf = 1 << 40
        mem.write(qbuf, pack_q_records(geom, r.q_int, r.mult, r.shift))
        stats = run_attention(mem, dict(d, q_addr=qbuf, o_addr=qbuf + (1 << 20)), adev.layout)
        assert r.port_bytes_read["w0"] == stats["kv_bytes_read"][0]
        assert r.port_bytes_read["w1"] == stats["kv_bytes_read"][1]
        assert r.kv_bytes_read == sum(stats["kv_bytes_read"]) and r.mac_ops == stats["mac_ops"]
        assert r.cycles > 0 and 0 < r.kv_efficiency and 0 < r.mac_utilization
        assert attention_peak_macs(geom, 8) == 2 * 4 * 8 and attention_peak_macs(geom, 4) == 2 * 4 * 16


def test_runner_report_on_a_given_device(adev):
    from hbmforge.flows.attention_runner import run_attention as run_layer

    rep = run_layer(adev.layout.config, ctx=24, n_q=3, q_heads=4, kv_heads=2, kv_bits=4, window=8, sink=2,
                    seed=0, device=adev)
    assert rep["golden_mismatches"] == 0 and rep["rel_err_vs_float"] < 0.2
    assert rep["kv_bytes_read"] > 0 and rep["cycles"] > 0 and rep["mac_utilization"] is not None
    assert rep["layer"] == "attention" and rep["ctx"] == 24 and rep["n_q"] == 3
    assert adev.live_buffers() == []


def test_runner_report_of_an_encoder_call(adev):
    from hbmforge.flows.attention_runner import run_attention as run_layer

    rep = run_layer(adev.layout.config, ctx=20, n_q=20, q_heads=2, kv_heads=2, kv_bits=8, mode="bidirectional",
                    valid_len=13, seed=3, device=adev)
    assert rep["golden_mismatches"] == 0 and rep["rel_err_vs_float"] < 0.03
    assert rep["mode"] == "bidirectional" and rep["valid_len"] == 13
    assert rep["kv_bytes_read"] == rep["kv_bytes_expected"] > 0
    assert adev.live_buffers() == []


# -- errors ----------------------------------------------------------------------------------------

def test_bad_layer_parameters_fail_before_touching_the_device(adev, golden_dev):
    with pytest.raises(ValueError, match="no attention engine"):
        Attention(golden_dev, q_heads=2, kv_heads=2, head_dim=HD)
    with pytest.raises(ValueError, match="engine's head_dim 16, got 32"):
        Attention(adev, q_heads=2, kv_heads=2, head_dim=32)
    with pytest.raises(ValueError, match=r"q_heads \(6\) must be a multiple of kv_heads \(4\)"):
        Attention(adev, q_heads=6, kv_heads=4, head_dim=HD)
    with pytest.raises(ValueError, match=r"window must be in \[0, 64\], got 65"):
        Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, window=65)
    with pytest.raises(ValueError, match="sink=2 needs a sliding window"):
        Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, sink=2)
    with pytest.raises(ValueError, match=r"kv_bits must be one of the engine's kv_bits \[4, 8\], got 2"):
        Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, kv_bits=2)
    with KVCache(adev, kv_heads=1) as cache:
        with pytest.raises(ValueError, match="cache has kv_heads=1"):
            Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, cache=cache)
    assert adev.live_buffers() == []


def test_bad_inputs_raise_clear_errors_and_change_nothing(adev):
    rng = np.random.default_rng(6)
    with Attention(adev, q_heads=4, kv_heads=2, head_dim=HD, pages=3) as att:
        seq = att.sequence
        q, k, v = tokens(rng, 2, 4), tokens(rng, 2, 2), tokens(rng, 2, 2)
        with pytest.raises(ValueError, match=r"q must be \[n_q >= 1, q_heads=4, head_dim=16\], got shape \(2, 2, 16\)"):
            att.prefill(q[:, :2], k, v)
        with pytest.raises(ValueError, match=r"k must be \[n_tokens >= 1, kv_heads=2, head_dim=16\]"):
            att.prefill(q, k[:, :, :8], v)
        with pytest.raises(ValueError, match="one token per query"):
            att.prefill(q, k[:1], v[:1])
        with pytest.raises(ValueError, match="k and v must have the same shape"):
            att.cache.append(seq, k, v[:1])
        with pytest.raises(TypeError, match="real float array"):
            att.prefill(q, k.astype(np.complex128), v)
        bad = k.copy()
        bad[1, 0, 3] = np.nan
        with pytest.raises(ValueError, match=r"k contains 1 NaN/Inf value\(s\) \(first at token 1, kv head 0, dim 3\)"):
            att.prefill(q, bad, v)
        qbad = q.copy()
        qbad[0, 0, 0] = np.inf
        with pytest.raises(ValueError, match="q contains 1 NaN/Inf"):
            att.prefill(qbad, k, v)
        with pytest.raises(ValueError, match=r"q must be \[4, 16\]"):
            att.decode_step(q, k[:1], v[:1])
        assert seq.length == 0 and att.cache.free_pages == 3
        att.prefill(tokens(rng, 10, 4), tokens(rng, 10, 2), tokens(rng, 10, 2))       # 3 pages used
        with pytest.raises(KVCacheFullError, match=r"KV pool has 0 free pages, needs 1"):
            att.prefill(tokens(rng, 3, 4), tokens(rng, 3, 2), tokens(rng, 3, 2))
        assert seq.length == 10
    with Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, pages=20) as att:
        att.prefill(tokens(rng, 60, 2), tokens(rng, 60, 2), tokens(rng, 60, 2))
        with pytest.raises(KVCacheError, match=r"would hold 65 tokens \(60 \+ 5\); the attention engine's max_context is 64"):
            att.prefill(tokens(rng, 5, 2), tokens(rng, 5, 2), tokens(rng, 5, 2))
        with pytest.raises(KVCacheError, match="3 queries need at least 3 tokens"):
            att.forward_int(np.zeros((3, 2, HD), np.int8), np.ones((3, 2), int), np.zeros((3, 2), int),
                            att.cache.sequence())
    with KVCache(adev, kv_heads=2, pages=2) as c1, KVCache(adev, kv_heads=2, pages=2) as c2:
        att = Attention(adev, q_heads=2, kv_heads=2, head_dim=HD, cache=c1)
        with pytest.raises(SequenceStateError, match="belongs to another KV cache"):
            att.decode_step(tokens(rng, 1, 2)[0], tokens(rng, 1, 2)[0], tokens(rng, 1, 2)[0], c2.sequence())
        att.close()
    assert adev.live_buffers() == []


# -- the RTL engine on the co-simulation ----------------------------------------------------------

def _rtl_available() -> bool:
    return importlib.util.find_spec("hbmforge.generators.attention.engine") is not None


@pytest.fixture(scope="module")
def sim_dev(tmp_path_factory):
    if not _rtl_available():
        pytest.skip("generators/attention/engine.py has not landed")
    with open_device(parse_config(attn_config("tiny_attn_host")), build_dir=tmp_path_factory.mktemp("tiny_attn"),
                     progress=False) as dev:
        yield dev


@pytest.mark.rtl
@pytest.mark.parametrize("kv_bits, q_heads, kv_heads, window, sink", [
    (8, 4, 2, 0, 0), (4, 4, 2, 5, 0), (8, 6, 3, 4, 2)])
def test_rtl_prefill_and_decode_match_the_golden_model(sim_dev, kv_bits, q_heads, kv_heads, window, sink):
    prefill_then_decode(sim_dev, kv_bits=kv_bits, q_heads=q_heads, kv_heads=kv_heads, window=window, sink=sink,
                        prefill=7, steps=3, seed=kv_bits + window)


@pytest.mark.rtl
def test_rtl_bidirectional_encoder_pass_matches_the_golden_model(sim_dev):
    assert encoder_pass(sim_dev, kv_bits=4, heads=3, tokens_=9, valid=6, seed=9) < 0.2


@pytest.mark.rtl
def test_rtl_two_sequences_share_the_pool(sim_dev):
    two_sequences_interleaved(sim_dev, kv_bits=4)


@pytest.mark.rtl
def test_rtl_counters_and_runner(sim_dev):
    from hbmforge.flows.attention_runner import run_attention as run_layer

    rep = run_layer(sim_dev.layout.config, ctx=40, n_q=1, q_heads=4, kv_heads=2, kv_bits=8, window=0, sink=0,
                    seed=1, device=sim_dev)
    assert rep["golden_mismatches"] == 0 and rep["rel_err_vs_float"] < 0.03
    assert rep["kv_bytes_read"] == rep["kv_bytes_expected"] > 0
    assert 0 < rep["kv_efficiency"] <= 1 and 0 < rep["mac_utilization"] <= 1
