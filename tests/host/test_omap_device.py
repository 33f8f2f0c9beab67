"""ObliviousMap on the Verilator co-simulation: bit-exact with the golden model, the host-visible
trace the device emits (identical shape and timing across workloads, uniform addresses), tamper
and replay detection, and bad input refused before any traffic."""
from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from hbmforge.encodings import OmapAction, OmapOp, OmapStatus
from hbmforge.engines.memory import CB_BYTES, ControlBlock
from hbmforge.host import OutOfDeviceMemoryError, open_device
from hbmforge.host.omap import ObliviousMap, ObliviousMapFullError, TamperError
from hbmforge.numerics.omap import run_omap
from hbmforge.numerics.program import SparseMemory

from designs import tiny_memory_config_dict

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def dev():
    with open_device(tiny_memory_config_dict(), progress=False) as d:
        yield d


def _keys(n, seed=0):
    rng = random.Random(seed)
    return [rng.randbytes(8) for _ in range(n)]


def _snapshot(dev, om) -> SparseMemory:
    mem = SparseMemory()
    for buf in om.buffers.values():
        mem.write(buf.address, dev.read(buf))
    return mem


def _run_checked(dev, om, ops):
    """Run ``ops`` on the device and the golden model from the same state; both must agree."""
    before = _snapshot(dev, om)
    res = om.query(ops)
    src = om.buffers["src"]
    before.write(src.address, dev.read(src))
    d = {"action": OmapAction.QUERY, "ctrl_addr": om.control_address, "src_addr": src.address,
         "dst_addr": om.buffers["dst"].address, "count": len(ops)}
    run_omap(before, d, om._geom)
    for name, buf in om.buffers.items():
        got, want = dev.read(buf), before.read(buf.address, buf.nbytes)
        if name == "state":                         # the RTL's timing statistics aside
            a, b = ControlBlock.unpack(got[:CB_BYTES]), ControlBlock.unpack(want[:CB_BYTES])
            for f in ControlBlock.TIMING_FIELDS:
                setattr(a, f, 0)
                setattr(b, f, 0)
            assert a == b, f"control block: device {a} golden {b}"
            got, want = got[CB_BYTES:], want[CB_BYTES:]
        assert got == want, f"{name}: the device's bytes differ from the golden model's"
    return res


def test_queries_match_a_dict_and_the_golden_model_bit_for_bit(dev):
    om = ObliviousMap(dev, capacity=24, key_bytes=8, value_bytes=8, seed=11)
    rng = random.Random(3)
    keys = _keys(30, 3)
    ref = {}
    for _ in range(4):
        ops = []
        for _ in range(10):
            op = rng.choice([OmapOp.GET, OmapOp.PUT, OmapOp.PUT, OmapOp.DELETE, OmapOp.NOP])
            ops.append((op, rng.choice(keys), rng.randbytes(8) if op == OmapOp.PUT else None))
        res = _run_checked(dev, om, ops)
        for (op, k, v), r in zip(ops, res):
            if op == OmapOp.GET:
                assert r.value == ref.get(k)
            elif op == OmapOp.PUT and r.status != OmapStatus.FULL:
                ref[k] = v
            elif op == OmapOp.DELETE:
                assert (r.status == OmapStatus.DELETED) == (k in ref)
                ref.pop(k, None)
    assert len(om) == len(ref)
    s = om.stats()
    assert s["overruns"] == 0 and s["max_work"] < s["t_write"] and s["tampered"] == 0
    om.close()


def test_bulk_loaded_items_are_found_and_the_map_api_round_trips(dev):
    items = {k: bytes([i]) * 8 for i, k in enumerate(_keys(20, 4))}
    with ObliviousMap(dev, capacity=32, key_bytes=8, value_bytes=8, items=items, seed=4) as om:
        assert om.get_many(list(items)) == list(items.values())
        om.put(b"newkey01", b"12345678")
        assert om.get(b"newkey01") == b"12345678" and om.get(b"absent01") is None
        assert om.delete(b"newkey01") is True and om.delete(b"newkey01") is False
        assert len(om) == 20


def _trace(dev, om, ops):
    dev.trace_memory("host")
    dev.memory_trace()
    om.query(ops)
    t = dev.memory_trace()
    dev.trace_memory("host", False)
    return t


WORKLOADS = {
    "one key repeated": lambda keys, absent: [(OmapOp.GET, keys[0], None)] * 24,
    "all distinct keys": lambda keys, absent: [(OmapOp.GET, k, None) for k in keys[:24]],
    "misses": lambda keys, absent: [(OmapOp.GET, k, None) for k in absent[:24]],
    "puts": lambda keys, absent: [(OmapOp.PUT, k, b"\x01" * 8) for k in keys[:24]],
    "absent deletes": lambda keys, absent: [(OmapOp.DELETE, k, None) for k in absent[:24]],
}


def test_the_host_trace_is_the_same_shape_and_timing_for_every_workload(dev):
    """Equal-length query sequences (one key repeated vs all distinct, hits vs misses, get vs put,
    absent keys): the bursts the device makes into host memory have the same count, sizes,
    order, read/write mix, ports and cycle offsets; their addresses are bins of the map, as the
    golden model says, and the run's end is a fixed number of cycles after each query."""
    keys, absent = _keys(24, 5), _keys(24, 6)
    shapes = {}
    for name, make in WORKLOADS.items():
        with ObliviousMap(dev, capacity=32, key_bytes=8, value_bytes=8, seed=5,
                          items={k: b"\x07" * 8 for k in keys}) as om:
            t = _trace(dev, om, make(keys, absent))
            base, nbytes = om.bins_region
            assert ((t["addr"] >= base) & (t["addr"] < base + nbytes)).all()
            assert len(t) and len(t) % 24 == 0
            shapes[name] = (list(t["bytes"]), list(t["write"]), list(t["port"]),
                            list(t["cycle"].astype(np.int64) - int(t["cycle"][0])))
    first = next(iter(shapes.values()))
    for name, shape in shapes.items():
        assert shape == first, f"the trace of {name!r} differs from the others'"


def test_bins_read_are_uniform_and_the_same_for_hits_and_misses(dev):
    """Chi-square: the bins the device reads are uniform over the map's 4 bins (96 queries per
    workload), and a one-key workload's bins and an all-distinct one's come from one
    distribution (two-sample test). The golden model's long runs test the same at scale
    (tests/unit/test_numerics_memory.py)."""
    keys = _keys(8, 7)
    hist = {}
    for name, ops in (("repeat", [(OmapOp.GET, keys[0], None)] * 96),
                      ("distinct", [(OmapOp.GET, keys[i % 8], None) for i in range(96)])):
        with ObliviousMap(dev, capacity=8, key_bytes=8, value_bytes=8, seed=8, items={k: b"v" * 8 for k in keys}) as om:
            t = _trace(dev, om, ops)
            base, _ = om.bins_region
            reads = t[t["write"] == 0]
            first = reads[np.r_[True, np.diff(reads["cycle"].astype(np.int64)) > 50]]   # one per query
            bins = (first["addr"] - base) // om._geom.bin_stride
            assert len(bins) == 96 and om.plan.bins == 4
            hist[name] = np.bincount(bins.astype(np.int64), minlength=om.plan.bins)
    for h in hist.values():
        assert stats.chisquare(h).pvalue > 1e-3, hist
    assert stats.chi2_contingency(np.array([hist["repeat"], hist["distinct"]])).pvalue > 1e-3, hist


def test_a_tampered_host_page_fails_the_query_returning_nothing_and_nothing_is_lost(dev):
    with ObliviousMap(dev, capacity=16, key_bytes=8, value_bytes=8, seed=9,
                      items={b"k%07d" % i: b"v%07d" % i for i in range(10)}) as om:
        base, nbytes = om.bins_region
        bins = om.buffers["bins"]
        off = base - bins.address
        saved = dev.read(bins, nbytes, off)
        before = om.control_block()
        dev.write(bins, bytes([saved[5] ^ 0x40]), off + 5)             # one bit of bin 0
        with pytest.raises(TamperError, match="failed authentication"):
            for _ in range(64):                                      # until a query reads bin 0
                om.dummy(1)
        cb = om.control_block()
        assert cb.tampered == 1 and cb.count == before.count
        dev.write(bins, saved[5:6], off + 5)                         # the page as the device wrote it
        assert om.get_many([b"k%07d" % i for i in range(10)]) == [b"v%07d" % i for i in range(10)]


def test_a_replayed_host_page_is_detected(dev):
    with ObliviousMap(dev, capacity=16, key_bytes=8, value_bytes=8, seed=10) as om:
        base, nbytes = om.bins_region
        bins = om.buffers["bins"]
        old = dev.read(bins, nbytes, base - bins.address)
        om.dummy(40)                                                 # rewrites (re-versions) most bins
        now = dev.read(bins, nbytes, base - bins.address)
        stride = om._geom.bin_stride
        b = next(i for i in range(om.plan.bins) if old[i * stride:(i + 1) * stride] != now[i * stride:(i + 1) * stride])
        dev.write(bins, old[b * stride:(b + 1) * stride], base - bins.address + b * stride)
        with pytest.raises(TamperError):
            for _ in range(200):
                om.dummy(1)


def test_bad_input_is_refused_before_any_host_traffic(dev):
    with ObliviousMap(dev, capacity=4, key_bytes=8, value_bytes=8, seed=12) as om:
        dev.trace_memory("host")
        dev.memory_trace()
        for call, error, match in [
            (lambda: om.get(b"short"), ValueError, "key must be exactly 8 bytes"),
            (lambda: om.put(b"12345678", b"toolong!!"), ValueError, "value must be exactly 8 bytes"),
            (lambda: om.put("12345678", b"12345678"), TypeError, "key must be bytes"),
            (lambda: om.get_many(b"12345678"), TypeError, "keys must be a list"),
            (lambda: om.query([(9, b"12345678", None)]), ValueError, "op must be an OmapOp"),
            (lambda: om.query([(OmapOp.GET, b"12345678", b"x" * 8)]), ValueError, "GET takes no value"),
        ]:
            with pytest.raises(error, match=match):
                call()
        assert len(dev.memory_trace()) == 0
        om.put_many({b"a%07d" % i: b"x" * 8 for i in range(4)})
        with pytest.raises(ObliviousMapFullError, match="not stored") as err:
            om.put(b"overflow", b"y" * 8)
        assert err.value.keys == [b"overflow"] and len(om) == 4
        assert om.get(b"a0000001") == b"x" * 8
        dev.trace_memory("host", False)
    for kwargs, error, match in [
        (dict(capacity=0), ValueError, "capacity"), (dict(key_bytes=17), ValueError, "key_bytes"),
        (dict(value_bytes=9), ValueError, "value_bytes"), (dict(capacity=1 << 21), OutOfDeviceMemoryError, "HBM"),
        (dict(items={b"12": b"12345678"}), ValueError, "key must be exactly 8 bytes"),
    ]:
        args = dict(capacity=8, key_bytes=8, value_bytes=8) | kwargs
        before = len(dev.live_buffers())
        with pytest.raises(error, match=match):
            ObliviousMap(dev, **args)
        assert len(dev.live_buffers()) == before


#: ports far slower and less even than the board's: the state's HBM port at 1.5 bytes/cycle
#: with long latencies, one burst in flight everywhere (the slot budget must still hold)
SLOW_PORTS = dict(read_latency={"data": 97, "w0": 40}, write_latency={"data": 53}, bytes_per_cycle={"data": 1.5, "w0": 3},
                  max_outstanding=1)


def test_queries_stay_bit_exact_and_inside_their_slots_on_slow_uneven_ports():
    with open_device(tiny_memory_config_dict(), progress=False, **SLOW_PORTS) as slow:
        keys = _keys(8, 13)
        rng = random.Random(13)
        with ObliviousMap(slow, capacity=8, key_bytes=8, value_bytes=8, seed=13,
                          items={k: b"\x05" * 8 for k in keys[:4]}) as om:
            ref = {k: b"\x05" * 8 for k in keys[:4]}
            ops = []
            for _ in range(10):
                op = rng.choice([OmapOp.GET, OmapOp.PUT, OmapOp.DELETE, OmapOp.NOP])
                ops.append((op, rng.choice(keys), rng.randbytes(8) if op == OmapOp.PUT else None))
            for (op, k, v), r in zip(ops, _run_checked(slow, om, ops)):
                if op == OmapOp.GET:
                    assert r.value == ref.get(k)
                elif op == OmapOp.PUT:
                    ref[k] = v
                elif op == OmapOp.DELETE:
                    assert (r.status == OmapStatus.DELETED) == (k in ref)
                    ref.pop(k, None)
            s = om.stats()
            assert s["overruns"] == 0 and s["max_work"] < s["t_write"], s
