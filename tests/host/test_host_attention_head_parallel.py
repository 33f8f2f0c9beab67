"""Head-parallel decode from the host: ``KVCache(layout="head_parallel")`` places KV head h in
port group ``h // (kv_heads / rows)`` (K pool on ``w<2r>``, V pool on ``w<2r+1>``), and
``Attention`` decode runs one ``kv_layout`` 1 descriptor over all groups. Bit-exact with the
golden model on the golden device and, marked rtl, on the Verilator co-simulation of a small
kernel (uneven per-port memory timing); clear errors for what the layout cannot run."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.host import Attention, KVCache, open_device
from hbmforge.layout import DesignLayout

from designs import tiny_attention_config_dict
from golden_kernel import GoldenDevice

HD = 16


def hp_config(name="tiny_attn_hp"):
    return tiny_attention_config_dict(name, rows=2, kv_ports=4, head_parallel=True)


@pytest.fixture(scope="module")
def hdev():
    with GoldenDevice(DesignLayout(parse_config(hp_config()))) as dev:
        yield dev


def decode_steps(dev, *, kv_bits, heads, prefill=9, steps=3, window=0, sink=0, seed=0):
    """Prefill the cache by appends, then decode steps on a head-parallel cache: every device
    integer equals the golden model's, every KV port of a group carries its heads' bytes."""
    rng = np.random.default_rng(seed)
    with KVCache(dev, kv_heads=heads, kv_bits=kv_bits, pages=12, k_range=4.0, v_range=4.0,
                 layout="head_parallel") as cache, \
            Attention(dev, q_heads=heads, kv_heads=heads, head_dim=HD, window=window, sink=sink,
                      cache=cache) as att:
        seq = cache.sequence()
        cache.append(seq, rng.standard_normal((prefill, heads, HD)), rng.standard_normal((prefill, heads, HD)))
        for _ in range(steps):
            q = rng.standard_normal((heads, HD))
            o = att.decode_step(q, rng.standard_normal((heads, HD)), rng.standard_normal((heads, HD)), seq)
            r = att.last_run
            assert o.shape == (heads, HD)
            assert np.array_equal(r.output_int, att.golden_int(r.q_int, r.mult, r.shift, seq))
            rel = np.linalg.norm(o - att.reference(q[None], seq=seq)[0]) / np.linalg.norm(o)
            assert rel < (0.05 if kv_bits == 8 else 0.3)
        ports = {f"w{i}" for i in range(dev.layout.config.attention.kv_ports)}
        if r.port_bytes_read:                 # the golden device counts per port too
            assert all(r.port_bytes_read.get(p, 0) > 0 for p in ports), r.port_bytes_read
        return cache.descriptor_fields()


@pytest.mark.parametrize("kv_bits, heads, window, sink", [(8, 4, 0, 0), (4, 6, 5, 2)])
def test_head_parallel_decode_matches_the_golden_model(hdev, kv_bits, heads, window, sink):
    f = decode_steps(hdev, kv_bits=kv_bits, heads=heads, window=window, sink=sink, seed=kv_bits)
    assert f["kv_layout"] == 1 and f["v_pool"] == 0


@pytest.fixture(scope="module")
def hdev8():
    cfg = tiny_attention_config_dict("tiny_attn_hp8", rows=8, kv_ports=16, head_parallel=True)
    with GoldenDevice(DesignLayout(parse_config(cfg))) as dev:
        yield dev


@pytest.mark.parametrize("kv_bits, heads, window, sink", [(8, 8, 0, 0), (4, 16, 5, 2)])
def test_eight_row_head_parallel_decode_matches_the_golden_model(hdev8, kv_bits, heads, window, sink):
    f = decode_steps(hdev8, kv_bits=kv_bits, heads=heads, window=window, sink=sink, seed=20 + kv_bits)
    assert f["kv_layout"] == 1 and f["v_pool"] == 0


def test_eight_row_cache_places_its_groups_on_w0_to_w15(hdev8):
    with KVCache(hdev8, kv_heads=16, kv_bits=4, pages=4, layout="head_parallel") as cache:
        assert [b.port for b in cache.k_pools] == [f"w{2 * r}" for r in range(8)]
        assert [b.port for b in cache.v_pools] == [f"w{2 * r + 1}" for r in range(8)]
        assert cache.head_location(15) == (7, 1) and cache.head_location(2) == (1, 0)
        table = hdev8.read(cache.k_pool, 128)
        addrs = [int.from_bytes(table[8 * i:8 * i + 8], "little") for i in range(16)]
        assert addrs == [b.address for b in cache.k_pools + cache.v_pools]
    with pytest.raises(ValueError, match="kv_heads 12 must be a multiple of the engine's rows 8"):
        KVCache(hdev8, kv_heads=12, layout="head_parallel")


def test_head_parallel_cache_places_each_group_on_its_ports(hdev):
    with KVCache(hdev, kv_heads=4, kv_bits=8, pages=4, layout="head_parallel") as cache:
        assert [b.port for b in cache.k_pools] == ["w0", "w2"]
        assert [b.port for b in cache.v_pools] == ["w1", "w3"]
        assert cache.head_location(3) == (1, 1) and cache.head_location(1) == (0, 1)
        table = hdev.read(cache.k_pool, 32)
        addrs = [int.from_bytes(table[8 * i:8 * i + 8], "little") for i in range(4)]
        assert addrs == [b.address for b in cache.k_pools + cache.v_pools]


def test_head_parallel_bad_uses_fail_with_clear_errors(hdev, golden_dev):
    with pytest.raises(ValueError, match="kv_heads 3 must be a multiple of the engine's rows 2"):
        KVCache(hdev, kv_heads=3, layout="head_parallel")
    with pytest.raises(ValueError, match="layout must be one of"):
        KVCache(hdev, kv_heads=2, layout="heads")
    with KVCache(hdev, kv_heads=2, kv_bits=8, pages=4, layout="head_parallel") as cache:
        att = Attention(hdev, q_heads=2, kv_heads=2, head_dim=HD, cache=cache)
        seq = cache.sequence()
        rng = np.random.default_rng(0)
        cache.append(seq, rng.standard_normal((3, 2, HD)), rng.standard_normal((3, 2, HD)))
        with pytest.raises(ValueError, match="n_q must be 1"):
            att.attend(rng.standard_normal((2, 2, HD)), seq)
        att.close()


def test_head_parallel_needs_an_engine_with_head_parallel():
    with GoldenDevice(DesignLayout(parse_config(tiny_attention_config_dict()))) as dev:
        with pytest.raises(ValueError, match="head_parallel: true"):
            KVCache(dev, kv_heads=4, layout="head_parallel")


@pytest.fixture(scope="module")
def sim_hp(tmp_path_factory):
    with open_device(parse_config(hp_config("tiny_attn_hp_host")), build_dir=tmp_path_factory.mktemp("tiny_attn_hp"),
                     progress=False) as dev:
        yield dev


@pytest.mark.rtl
def test_rtl_head_parallel_decode_matches_the_golden_model(sim_hp):
    # uneven port timing: each port group's stream stalls differently, the rows must stay in lockstep
    for i, p in enumerate(("w0", "w1", "w2", "w3")):
        sim_hp.sim.set_port_timing(p, read_latency=20 + 17 * i, bytes_per_cycle=8.0 / (1 + i % 3))
    decode_steps(sim_hp, kv_bits=8, heads=4, prefill=11, steps=2, seed=3)
    decode_steps(sim_hp, kv_bits=4, heads=6, prefill=6, steps=2, window=4, sink=1, seed=4)


@pytest.mark.rtl
def test_rtl_shared_and_head_parallel_jobs_on_one_engine(sim_hp):
    from hbmforge.flows.attention_runner import run_attention as run_layer

    rep = run_layer(sim_hp.layout.config, ctx=21, n_q=3, q_heads=4, kv_heads=2, kv_bits=8, seed=2, device=sim_hp)
    assert rep["golden_mismatches"] == 0
    decode_steps(sim_hp, kv_bits=8, heads=2, prefill=5, steps=1, seed=5)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_eight_row_head_parallel_decode_matches_the_golden_model(tmp_path):
    # rows 8 / kv_ports 16 on the Verilator co-simulation, each of the 16 KV ports with its own timing
    with open_device(parse_config(tiny_attention_config_dict("tiny_attn_hp8_host", rows=8, kv_ports=16,
                                                             head_parallel=True)),
                     build_dir=tmp_path, progress=False) as dev:
        for i in range(16):
            dev.sim.set_port_timing(f"w{i}", read_latency=20 + 7 * i, bytes_per_cycle=8.0 / (1 + i % 3))
        decode_steps(dev, kv_bits=8, heads=8, prefill=7, steps=2, seed=6)
        decode_steps(dev, kv_bits=4, heads=16, prefill=5, steps=1, window=3, sink=1, seed=7)
