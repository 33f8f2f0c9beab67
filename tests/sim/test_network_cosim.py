"""The multi-device co-simulation from Python: three co-simulated kernels with the ALLREDUCE engine
and the co-simulated switch, joined by lossy links (hbmforge.host.open_cluster).

One cluster serves every test (a tiny design: one kernel build, one switch build). Results are
compared with hbmforge.numerics (the reduction, the float scheme, one device's matmul); bad
inputs must fail before anything is written, and failed all-reduces must name the cause and
leave the inputs intact.
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.encodings import ErrorCode, NetMode
from hbmforge.engines.network import Header, PacketType
from hbmforge.host import ClusterError, Linear, open_cluster
from hbmforge.host.cluster import ClusterProgram
from hbmforge.host.tp import ColumnParallelLinear, RowParallelLinear
from hbmforge.numerics import matmul_int32
from hbmforge.numerics.network import Packet, float_allreduce_reference, reduce_reference
from hbmforge.sim.network import Link

from designs import tiny_network_config_dict

pytestmark = pytest.mark.rtl

LOSSY = Link(bytes_per_cycle=8, latency=60, loss=0.1, duplicate=0.05, reorder=0.05, reorder_cycles=150)


@pytest.fixture(scope="module")
def cluster():
    with open_cluster(tiny_network_config_dict(), devices=3, link=LOSSY, seed=7, progress=False) as cl:
        yield cl


def snapshot(cl, bufs):
    return [cl[i].read(b) for i, b in enumerate(bufs)]


def test_allreduce_from_python_is_bit_exact_over_lossy_links(cluster):
    rng = np.random.default_rng(1)
    for r in range(6):
        n = int(rng.integers(1, 150))
        xs = [rng.integers(-2**31, 2**31, n).astype(np.int32) for _ in range(3)]
        op = "max" if r == 2 else "sum"
        out = cluster.allreduce(xs, op=op, job=r % 2)
        want = reduce_reference(xs, NetMode.MAX if op == "max" else NetMode.SUM)
        assert all(np.array_equal(o, want) for o in out), f"round {r}"
    run = cluster.last_run
    assert run.counters["NET_RESULTS"] > 0 and run.network_cycles > 0
    links = cluster.sim.link_stats()
    assert sum(l["up"]["lost"] + l["down"]["lost"] for l in links) > 0, "the faults did hit"
    fs = [rng.standard_normal((5, 7)).astype(np.float32) * 100 for _ in range(3)]
    block = cluster.layout.config.engine("network").packet_words * cluster.word_bytes // 4
    got = cluster.allreduce(fs)
    want = float_allreduce_reference(fs, block).reshape(5, 7)
    assert all(np.array_equal(g, want) for g in got)


def test_allreduce_of_device_buffers_in_place(cluster):
    rng = np.random.default_rng(2)
    bufs = [d.alloc(96) for d in cluster.devices]
    xs = [rng.integers(-2**31, 2**31, 24).astype(np.int32) for _ in range(3)]
    for d, b, x in zip(cluster.devices, bufs, xs):
        d.write(b, x)
    assert cluster.allreduce(bufs) is None
    want = reduce_reference(xs)
    for d, b in zip(cluster.devices, bufs):
        assert np.array_equal(np.frombuffer(d.read(b), np.int32), want)
        d.free(b)


def test_tensor_parallel_linear_matches_one_device(cluster):
    rng = np.random.default_rng(3)
    n, k = 12, 96
    q = rng.integers(-8, 8, (n, k)).astype(np.int8)
    mant = rng.integers(1, 16, (n, k // 16))                  # small mantissas: the accumulator fits int32
    xq = rng.integers(-128, 128, (3, k)).astype(np.int8)
    single = Linear.from_quantized(q, mant, np.ones(n), bits=4, device=cluster[0])
    try:
        want = single.forward_int(xq)
        for cls in (ColumnParallelLinear, RowParallelLinear):
            with cls(cluster, q, mant, np.ones(n), bits=4, in_features=k) as layer:
                got = layer.forward_int(xq)
                assert layer.last_run.out_shift == 0 and layer.last_run.exact
                assert np.array_equal(got, want), cls.__name__
        w = rng.standard_normal((n, k))
        x = rng.standard_normal((2, k))
        with Linear.from_float(w, bits=4, device=cluster[0]) as one, \
                ColumnParallelLinear.from_float(w, bits=4, cluster=cluster) as col, \
                RowParallelLinear.from_float(w, bits=4, cluster=cluster) as row:
            y1 = one(x)
            assert np.array_equal(col(x), y1), "column split must give the single-device float32 bits"
            yr = row(x)                                         # full mantissas: a shift, so within the bound
            xq2 = row._int_input(__import__("hbmforge.numerics", fromlist=["x"]).quantize_activations_per_token(x).q)
            assert np.array_equal(row.forward_int(xq2), row.golden_int(xq2))
            np.testing.assert_allclose(yr, y1, rtol=1e-3, atol=1e-3 * float(np.abs(y1).max()))
    finally:
        single.close()


def test_bad_inputs_fail_before_any_device_write(cluster):
    rng = np.random.default_rng(4)
    xs = [rng.integers(-9, 9, 8).astype(np.int32) for _ in range(3)]
    with pytest.raises(ValueError, match="shapes differ"):
        cluster.allreduce([xs[0], xs[1], xs[2][:4]])
    with pytest.raises(TypeError, match="dtypes differ"):
        cluster.allreduce([xs[0], xs[1], xs[2].astype(np.int64)])
    with pytest.raises(ValueError, match="one buffer per device"):
        cluster.allreduce(xs[:2])
    with pytest.raises(ValueError, match="non-finite"):
        cluster.allreduce([np.full(4, np.nan, np.float32)] * 3)
    bufs = [d.alloc(64) for d in cluster.devices]
    small = cluster[2].alloc(32)
    try:
        with pytest.raises(ValueError, match="sizes differ"):
            cluster.allreduce([bufs[0], bufs[1], small])
        with pytest.raises(ValueError, match="another device"):
            cluster.allreduce([bufs[1], bufs[0], bufs[2]])
        with pytest.raises(ValueError, match="job id collision"):
            cluster.run_allreduce({0: bufs[0]}, job=1, members=[0], groups=[{"buffers": {1: bufs[1]}, "job": 1}])
        with pytest.raises(ValueError, match="op must be"):
            cluster.allreduce(xs, op="mean")
    finally:
        for d, b in zip(cluster.devices, bufs + [small]):
            pass
        for i, b in enumerate(bufs):
            cluster[i].free(b)
        cluster[2].free(small)


def test_a_device_that_never_joins_is_named_and_inputs_stay_intact(cluster):
    bufs = [d.alloc(64) for d in cluster.devices]
    try:
        for i, (d, b) in enumerate(zip(cluster.devices, bufs)):
            d.write(b, np.arange(16, dtype=np.int32) * (i + 1))
        before = snapshot(cluster, bufs)
        old = cluster.timeout_cycles, cluster.retries
        cluster.timeout_cycles, cluster.retries = 400, 3
        try:
            with pytest.raises(ClusterError, match=r"device\(s\) \[2\] never joined") as err:
                cluster.run_allreduce({0: bufs[0], 1: bufs[1]}, members=[0, 1, 2], job=1)
        finally:
            cluster.timeout_cycles, cluster.retries = old
        assert err.value.code == ErrorCode.NET_TIMEOUT and err.value.missing == (2,)
        assert snapshot(cluster, bufs) == before, "a failed all-reduce changed an input"
        assert cluster.epoch(1) == 1, "the job was reset to a new epoch"
        out = cluster.allreduce([np.arange(4, dtype=np.int32)] * 3, job=1)   # usable again
        assert np.array_equal(out[0], np.arange(4) * 3)
    finally:
        for i, b in enumerate(bufs):
            cluster[i].free(b)


def test_a_second_member_set_on_a_held_job_is_refused_by_the_switch(cluster):
    """Two groups on job 0 at once (the host check bypassed): the switch NACKs one with COLLISION."""
    bufs = [d.alloc(4 * cluster.word_bytes * 8) for d in cluster.devices]
    try:
        programs = {}
        for i, dev in enumerate(cluster.devices):
            members = 0b011 if i < 2 else 0b100
            prog = ClusterProgram(dev)
            prog.allreduce(bufs[i], mode=NetMode.SUM, job=0, worker=i, members=members, epoch=cluster.epoch(0),
                           window=4, inflight=4, timeout=cluster.timeout_cycles, retries=cluster.retries)
            programs[i] = prog
        with pytest.raises(ClusterError) as err:
            cluster.run_programs(programs, timeout=120)
        assert err.value.code == ErrorCode.NET_COLLISION
        cluster.reset_job(0)
        out = cluster.allreduce([np.ones(8, np.int32)] * 3)
        assert np.array_equal(out[2], np.full(8, 3))
    finally:
        for i, b in enumerate(bufs):
            cluster[i].free(b)


def test_a_packet_with_a_bad_header_is_dropped_and_counted(cluster):
    before = cluster.sim.switch_counters()
    pkt = Packet(Header(type=PacketType.DATA, worker=1, count=1, members=0b111), np.ones(2, np.int32))
    words = pkt.words(cluster.layout.config.data_width)
    cluster.sim.inject(1, [words[0] ^ 1 << 9] + words[1:])       # the job bits of a good header flipped
    cluster.sim.inject(1, words + [0])                             # one word too many
    cluster.sim.run(2000, wait=[])
    after = cluster.sim.switch_counters()
    assert after["drop_p1"] - before["drop_p1"] == 2
    assert after["reduced"] == before["reduced"], "a bad packet was reduced"
    out = cluster.allreduce([np.full(6, i, np.int32) for i in range(3)])
    assert np.array_equal(out[0], np.full(6, 3))


@pytest.mark.slow
def test_tensor_parallel_decoder_block_on_two_devices_matches_one_device():
    """A LLaMA block (GQA) split across two co-simulated devices over lossy links: prefill and a
    decode step bit-exact with the same block on one device and with the golden devices."""
    import math

    from hbmforge.host.blocks import BlockConfig, BlockWeights, TransformerBlock
    from hbmforge.host.tp_block import TensorParallelBlock

    from designs import tiny_vector_config_dict

    cfg = tiny_vector_config_dict("tiny_tp")
    cfg["engines"].append({"kind": "network", "packet_words": 4, "window": 8, "jobs": 2})
    rng = np.random.default_rng(5)
    bc = BlockConfig(arch="llama", hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128)
    t = {n: rng.normal(0, 1 / math.sqrt(bc.projection_shape(n)[1]), bc.projection_shape(n)) for n in bc.projections}
    t.update(attn_norm=rng.uniform(0.7, 1.3, 64), mlp_norm=rng.uniform(0.7, 1.3, 64))
    with open_cluster(cfg, devices=2, link=LOSSY, seed=11, progress=False) as cl:
        w = BlockWeights.from_float(bc, t, bits=8, group_size=cl.layout.mm.group_size)
        with TransformerBlock(cl[0], bc, w) as one, TensorParallelBlock(cl, bc, w) as tp:
            s1, s = one.sequence(), tp.sequence()
            x = rng.normal(0, 1, (5, 64))
            golden = tp.golden_prefill(x, s)
            got = tp.prefill(x, s)
            assert np.array_equal(got, golden), "the co-simulated devices differ from their golden models"
            assert np.array_equal(got, one.prefill(x, s1)), "two devices differ from one"
            assert tp.last_step.allreduces == 4 and tp.last_step.counters["NET_RESULTS"] > 0
            x1 = rng.normal(0, 1, 64)
            assert np.array_equal(tp.decode_step(x1, s), one.decode_step(x1, s1))
            assert s.length == 6
