"""The memory family's host objects refuse bad input with a named error and change nothing:
TileCache (ranges outside the window, a second cache on one device, use after close, no
default window on xrt),
ObliviousMap (keys, values, ops, batches; a bulk load the directory cannot hold) and MoE
(routing, expert weights outside the cache's window, use after close). On the golden device:
what is checked is the host side, before any device run."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.engines.memory import OmapGeometry, plan_omap
from hbmforge.host import DeviceError
from hbmforge.host.memory import TileCache
from hbmforge.host.moe import MoE
from hbmforge.host.omap import ObliviousMap, ObliviousMapFullError
from hbmforge.layout import DesignLayout
from hbmforge.numerics.omap import prf_words

from designs import tiny_memory_config_dict
from golden_kernel import GoldenDevice


@pytest.fixture
def dev():
    with GoldenDevice(DesignLayout(parse_config(tiny_memory_config_dict()))) as d:
        yield d


def test_tile_cache_calls_with_bad_input_raise_named_errors_and_leave_the_cache_as_it_was(dev):
    cache = TileCache(dev)
    inside = dev.alloc(4096, "w0", memory="host")
    hbm = dev.alloc(4096, "w0")
    base, size = cache.window
    cache.prefetch(inside)
    before, buffers = cache.stats()["raw"], len(dev.live_buffers())
    for call, error, match in [
        (lambda: cache.prefetch("abc"), TypeError, "address must be an integer"),
        (lambda: cache.prefetch(0x1000, 4096), ValueError, "not inside the cache's window"),
        (lambda: cache.prefetch(hbm), ValueError, "not inside the cache's window"),
        (lambda: cache.prefetch(base, size + 4096), ValueError, "not inside the cache's window"),
        (lambda: cache.prefetch(inside, 1 << 20), ValueError, r"nbytes must be in \[1, 4096\]"),
        (lambda: cache.prefetch(base), ValueError, "nbytes is required"),
        (lambda: cache.flush(None, 4096), ValueError, "nbytes needs a target"),
        (lambda: cache.invalidate(object()), TypeError, "address must be an integer"),
        (lambda: cache.run("CONFIGURE"), TypeError, "descriptors must be a list of CACHE descriptors"),
        (lambda: cache.run([{"op": 1}]), ValueError, r"descriptors\[0\] is not a CACHE descriptor"),
        (lambda: cache.descriptor(99), ValueError, "not a valid CacheAction"),
        (lambda: TileCache(dev), DeviceError, "already set up by another TileCache"),
    ]:
        with pytest.raises(error, match=match):
            call()
        assert len(dev.live_buffers()) == buffers
    assert cache.stats()["raw"] == before                       # tags, ages and counters untouched
    cache.close()
    for call in (lambda: cache.prefetch(inside), cache.stats, cache.flush):
        with pytest.raises(DeviceError, match="TileCache was closed"):
            call()
    cache.close()                                               # closing twice is harmless
    with pytest.raises(ValueError, match="window is a buffer in hbm memory"):
        TileCache(dev, window=hbm)
    assert len(dev.live_buffers()) == buffers - 1               # the store went with close()
    TileCache(dev, window=inside).close()                       # and a new cache may be made
    dev.backend = "xrt"                                         # XRT picks host-only buffers' device addresses
    with pytest.raises(ValueError, match="pass the cacheable range"):
        TileCache(dev)
    TileCache(dev, window=inside).close()


def _state(dev, om) -> dict:
    return {name: dev.read(buf) for name, buf in om.buffers.items()}


def test_oblivious_map_calls_with_bad_input_raise_named_errors_before_any_device_run(dev):
    om = ObliviousMap(dev, capacity=8, key_bytes=8, value_bytes=8, seed=3, items={b"present!": b"value!!!"})
    om.get(b"present!")                                         # the batch buffers exist
    before = _state(dev, om)
    for call, error, match in [
        (lambda: om.get(None), TypeError, "key must be bytes of length 8"),
        (lambda: om.put(b"12345678", None), TypeError, "value must be bytes of length 8"),
        (lambda: om.put_many(5), TypeError, "put_many takes a mapping or"),
        (lambda: om.put_many([(b"12345678", b"12345678"), (b"1", b"12345678")]), ValueError,
         "key must be exactly 8 bytes"),
        (lambda: om.query([(True, b"12345678", None)]), ValueError, "op must be an OmapOp"),
        (lambda: om.query([(2, b"12345678", None)]), TypeError, "value must be bytes"),
        (lambda: om.delete_many(7), TypeError, "keys must be a list"),
        (lambda: om.dummy(0), ValueError, "count must be in"),
    ]:
        with pytest.raises(error, match=match):
            call()
        assert _state(dev, om) == before
    assert om.get(b"present!") == b"value!!!"
    om.close()
    with pytest.raises(DeviceError, match="ObliviousMap was closed"):
        om.get(b"present!")


def test_a_bulk_load_whose_keys_overflow_a_directory_bucket_makes_no_map(dev):
    """Nine keys whose two buckets are both bucket 0 (8 ways): the ninth cannot be placed; the
    map is refused with that key named and its buffers freed (no item silently dropped)."""
    seed, capacity = 21, 24
    probe = ObliviousMap(dev, capacity=capacity, key_bytes=8, value_bytes=8, seed=seed)
    k_hash, plan = probe.control_block().k_hash, probe.plan
    probe.close()
    geom = OmapGeometry(dev.layout.word_bytes, 4, 8, 8, 1 << 20)
    assert plan_omap(geom, capacity).dir_log2 == plan.dir_log2 == 4
    keys, i = [], 0
    while len(keys) < 9:
        key = i.to_bytes(8, "little")
        words = prf_words(k_hash, key + bytes(8))
        if words[0] & 15 == words[1] & 15 == 0:
            keys.append(key)
        i += 1
    buffers = len(dev.live_buffers())
    with pytest.raises(ObliviousMapFullError, match="1 of 9 key.s. found both of their directory buckets full") as err:
        ObliviousMap(dev, capacity=capacity, key_bytes=8, value_bytes=8, seed=seed,
                     items={k: b"v" * 8 for k in keys})
    assert err.value.keys == [keys[-1]]
    assert len(dev.live_buffers()) == buffers
    with ObliviousMap(dev, capacity=capacity, key_bytes=8, value_bytes=8, seed=seed,
                      items={k: b"v" * 8 for k in keys[:8]}) as om:
        assert om.get_many(keys) == [b"v" * 8] * 8 + [None]


def test_moe_refuses_bad_routing_weights_the_cache_cannot_see_and_use_after_close(dev):
    rng = np.random.default_rng(0)
    router = rng.standard_normal((4, 64)).astype(np.float32)
    mats = [(rng.standard_normal((64, 64)) * 0.2, rng.standard_normal((64, 64)) * 0.2) for _ in range(4)]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    cache = TileCache(dev)
    buffers = len(dev.live_buffers())
    with pytest.raises(ValueError, match="outside the cache's window"):
        MoE(dev, router, mats, weight_memory="ddr", cache=cache)
    assert len(dev.live_buffers()) == buffers                   # the experts made so far were freed
    moe = MoE(dev, router, mats, cache=cache)
    y = moe(x)
    for call, error, match in [
        (lambda: moe(x, routing=(np.zeros((3, 2), int), np.full((3, 2), np.nan))), ValueError,
         "gates must be finite"),
        (lambda: moe(x, routing=(np.zeros((3, 2)), np.ones((3, 2)))), ValueError, "routing must be"),
        (lambda: moe(x, timeout=-1), ValueError, "timeout"),
        (lambda: moe(np.zeros(64, np.float32)), ValueError, "x must be"),
    ]:
        with pytest.raises(error, match=match):
            call()
    assert np.array_equal(moe(x), y)
    moe.close()
    for call in (lambda: moe(x), lambda: moe.reference(x), lambda: moe.expert_linears(0)):
        with pytest.raises(DeviceError, match="MoE was closed"):
            call()
    cache.close()
