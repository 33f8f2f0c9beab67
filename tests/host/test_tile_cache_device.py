"""The tile cache on the Verilator co-simulation: engines read weights in host memory through it
transparently; its counters, tags and store match the golden model fed the commands the matmul
engine makes; prefetch, flush, invalidate; a COPY writing through it; and the MoE layer on it,
bit-exact with the same layer on the golden device."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.engines.memory import CACHE_COUNTERS
from hbmforge.host import Linear, copy_buffer, open_device
from hbmforge.host.memory import TileCache, expected_matmul_reads
from hbmforge.host.moe import MoE, route
from hbmforge.layout import DesignLayout
from hbmforge.numerics.memory import TileCacheModel
from hbmforge.numerics.program import SparseMemory

from designs import tiny_config_dict, tiny_memory_config_dict
from golden_kernel import GoldenDevice

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def dev():
    with open_device(tiny_memory_config_dict(), progress=False) as d:
        yield d


def _model(cache: TileCache) -> TileCacheModel:
    m = TileCacheModel(cache.geometry, memory=SparseMemory())
    m.configure(*cache.window, cache.store.address)
    return m


def test_weights_in_host_memory_are_read_through_the_cache_bit_exactly(dev):
    cache = TileCache(dev)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 128)).astype(np.float32)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    hbm = Linear.from_float(w, bits=4, device=dev)
    host = Linear.from_float(w, bits=4, device=dev, weight_memory="host")
    assert [b.memory for b in host.weight_buffers] == ["host", "host"]
    model = _model(cache)
    for _ in range(2):
        assert np.array_equal(host(x), hbm(x))
        for a, n in expected_matmul_reads(dev.layout, 5, 40, 128, 4, host.weight_buffers[0].address):
            model.read(a, n)
    s = cache.stats()
    assert s["raw"][128:] == model.stats_bytes()[128:]          # every line's tag, LRU age, frequency
    for c in ("hits", "misses", "evictions", "writebacks", "store_bytes_read", "store_bytes_written"):
        assert s[c] == model.counters[c], c
    assert s["bypasses"] > 0                                      # the HBM Linear's reads passed by
    run = host.last_run.counters
    assert run["cache_hits"] + run["cache_misses"] > 0 and run["cache_misses"] == 0   # second call: all hits
    cache.close()


def test_prefetch_turns_the_next_run_into_hits_and_invalidate_drops_lines(dev):
    cache = TileCache(dev)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    lin = Linear.from_float(w, bits=4, device=dev, weight_memory="host")
    cache.prefetch(lin.weight_buffers[0])
    lin(rng.standard_normal((1, 256)).astype(np.float32))
    assert lin.last_run.counters["cache_misses"] == 0 and lin.last_run.counters["cache_hits"] > 0
    cache.invalidate(lin.weight_buffers[0])
    assert not any(line["valid"] for line in cache.stats()["lines"])
    lin(rng.standard_normal((1, 256)).astype(np.float32))
    assert lin.last_run.counters["cache_misses"] > 0
    cache.close()


def test_a_copy_writes_through_the_cache_and_a_flush_reaches_host_memory(dev):
    cache = TileCache(dev)
    line = cache.geometry.line_bytes
    src = dev.alloc(2 * line)
    dst = dev.alloc(2 * line, "w0", memory="host")
    data = np.random.default_rng(3).integers(0, 256, 2 * line, dtype=np.uint8)
    dev.write(src, data)
    dev.write(dst, bytes(2 * line))
    copy_buffer(dev, dst, src)                                   # whole lines, write-back: in the store
    s = cache.stats()
    assert sum(line_["dirty"] for line_ in s["lines"]) == 2
    assert dev.read(dst) == bytes(2 * line)                      # not yet in host memory
    back = dev.alloc(2 * line)
    copy_buffer(dev, back, dst)                                  # read back through the cache: the new data
    assert dev.read(back) == data.tobytes()
    cache.flush()
    assert dev.read(dst) == data.tobytes() and cache.stats()["writebacks"] == 2
    cache.close()


def test_cache_misuse_is_refused_with_named_errors(dev):
    cache = TileCache(dev)
    with pytest.raises(TypeError, match="window must be a Buffer"):
        TileCache(dev, window="host")
    with pytest.raises(ValueError, match="nbytes is required"):
        cache.prefetch(0x1000)
    cache.close()
    with GoldenDevice(DesignLayout(parse_config(tiny_config_dict()))) as plain:
        with pytest.raises(ValueError, match="has no tile cache"):
            TileCache(plain)
    big = tiny_memory_config_dict(cache={"ways": 16, "sets": 4096, "line_bytes": 65536})
    with pytest.raises(ValueError, match="does not fit"):
        parse_config(big)


def test_moe_on_the_device_matches_the_golden_device_and_counts_its_cache_traffic(dev):
    rng = np.random.default_rng(4)
    experts, d, f = 4, 64, 64
    router = rng.standard_normal((experts, d)).astype(np.float32)
    mats = [(rng.standard_normal((f, d)) * 0.2, rng.standard_normal((d, f)) * 0.2) for _ in range(experts)]
    x = rng.standard_normal((6, d)).astype(np.float32)
    cache = TileCache(dev)
    moe = MoE(dev, router, mats, top_k=2, cache=cache)
    y = moe(x)
    with GoldenDevice(dev.layout) as gold:
        ref = MoE(gold, router, mats, top_k=2, cache=TileCache(gold))
        assert np.array_equal(y, ref(x))                         # the same integers, the same floats
    chosen, gates = route(x @ router.T, 2)
    assert np.allclose(gates.sum(axis=1), 1.0) and chosen.shape == (6, 2)
    assert sorted(set(moe.last_run.expert_calls)) == sorted(set(chosen.ravel().tolist()))
    assert moe.last_run.cache["misses"] > 0
    assert np.abs(y - moe.reference(x)).max() < 0.2 * np.abs(moe.reference(x)).max()
    # a recorded routing replays exactly: the router's own choice gives the same output
    assert np.array_equal(moe(x, routing=(chosen, gates)), y)
    with pytest.raises(ValueError, match="routing must be"):
        moe(x, routing=(chosen + experts, gates))
    with pytest.raises(TypeError, match="routing must be a pair"):
        moe(x, routing=chosen)
    with pytest.raises(ValueError, match="experts must list one expert per router row"):
        MoE(dev, router, mats[:2])
    with pytest.raises(ValueError, match=r"x must be \[T >= 1, 64\]"):
        moe(np.zeros((2, 32), np.float32))
    moe.close()
    cache.close()


def test_reads_through_the_cache_stay_bit_exact_on_slow_uneven_ports():
    """The backing port slow with one burst in flight, the store port slower still: misses,
    evictions and hits keep their order; data, tags and counters as the golden model's."""
    slow = dict(read_latency={"w0": 150, "w2": 70}, write_latency={"w2": 90}, bytes_per_cycle={"w0": 2, "w2": 1.5},
                max_outstanding={"w0": 1, "w2": 2})
    with open_device(tiny_memory_config_dict(), progress=False, **slow) as sdev:
        cache = TileCache(sdev)
        rng = np.random.default_rng(5)
        model = _model(cache)
        layers = []
        for n, k in ((96, 256), (24, 128)):                 # 12 KiB per weight port (8 lines fit), then 1.5 KiB
            w = rng.standard_normal((n, k)).astype(np.float32)
            layers.append((Linear.from_float(w, bits=8, device=sdev),
                           Linear.from_float(w, bits=8, device=sdev, weight_memory="host"), n, k))
        for hbm, host, n, k in (layers[0], layers[1], layers[1]):
            x = rng.standard_normal((3, k)).astype(np.float32)
            assert np.array_equal(host(x), hbm(x))
            for a, nbytes in expected_matmul_reads(sdev.layout, 3, n, k, 8, host.weight_buffers[0].address):
                model.read(a, nbytes)
        s = cache.stats()
        assert s["raw"][128:] == model.stats_bytes()[128:]
        for c in ("hits", "misses", "evictions", "store_bytes_read", "store_bytes_written"):
            assert s[c] == model.counters[c], c
        assert s["misses"] > 0 and s["evictions"] > 0 and s["hits"] > 0, s
        cache.close()
