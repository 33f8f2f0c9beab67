"""The ALLREDUCE engine alone in amaranth.sim: one worker of a job whose switch and other workers
are the golden models (hbmforge.numerics.network), with random DMA stalls, stream gaps and
back-pressure, and packets lost, duplicated and reordered in both directions.

Every result must be bit-exact in the engine's memory and in every golden peer; bad packets
are dropped and counted; a member that never joins, a colliding job and a stale epoch end
the run with their codes and leave the buffer as it was.
"""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, NetMode, Opcode
from hbmforge.engines import first_error
from hbmforge.engines.network import Header, PacketType, network_checks
from hbmforge.generators.network.endpoint import NetworkEngine
from hbmforge.generators.network.testing import EndpointBench
from hbmforge.layout import DesignLayout
from hbmforge.numerics.network import Packet, reduce_reference

from designs import tiny_config_dict


def net_layout(*, data_width=64, packet_words=4, window=4, jobs=2, **extra) -> DesignLayout:
    cfg = tiny_config_dict()
    cfg["name"] = "tiny_net"
    cfg["axi"]["data_width"] = data_width
    cfg["engines"].append({"kind": "network", "packet_words": packet_words, "window": window, "jobs": jobs, **extra})
    return DesignLayout(parse_config(cfg))


def descriptor(**fields) -> dict:
    d = dict(op=Opcode.ALLREDUCE, mode=NetMode.SUM, job=0, worker=1, members=0b111, epoch=0, addr=0x400, bytes=64,
             window=4, inflight=4, timeout=300, retries=40)
    d.update(fields)
    return d


def counters(ctx, dut) -> dict:
    return {n: ctx.get(getattr(dut, n)) for n in ("net_packets", "net_retransmits", "net_results", "net_duplicates",
                                                  "net_bad_packets", "net_heard")}


def buffer(bench, addr, nbytes) -> np.ndarray:
    return np.frombuffer(bytes(bench.mem[addr:addr + nbytes]), dtype=np.int32).copy()


@pytest.mark.parametrize("data_width,faults", [(64, 0.0), (64, 0.12), (128, 0.12)], ids=["clean", "faulty", "w128"])
def test_allreduce_results_are_bit_exact_under_backpressure_and_faults(data_width, faults):
    lay = net_layout(data_width=data_width)
    bench = EndpointBench(lay, NetworkEngine(lay), worker=2, workers=4, seed=int(faults * 100) + data_width,
                          loss=faults, dup=faults / 2, reorder=faults / 2)
    rng = np.random.default_rng(1)
    word = lay.word_bytes

    async def tb(ctx, b):
        for r in range(5):
            nbytes = int(rng.integers(1, 40)) * word          # often a short last block
            addr = 0x200 + r * 0x400
            mine = buffer(b, addr, nbytes)
            peers = {i: rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32) for i in (0, 1, 3)}
            mode = NetMode.MAX if r == 2 else NetMode.SUM
            want = reduce_reference([peers[0], peers[1], mine, peers[3]], mode)
            before = counters(ctx, b.dut)
            window = int(rng.integers(1, 5))
            d = descriptor(mode=mode, job=r % 2, worker=2, members=0b1111, addr=addr, bytes=nbytes,
                           window=window, inflight=int(rng.integers(1, window + 1)), timeout=250)
            assert first_error(network_checks(lay), d)[0] == ErrorCode.NONE
            fault = await b.allreduce(ctx, d, peers)
            assert fault == ErrorCode.NONE, f"round {r}: fault {fault}"
            assert np.array_equal(buffer(b, addr, nbytes), want), f"round {r}: the engine's buffer differs"
            for i, p in peers.items():
                assert np.array_equal(p, want), f"round {r}: peer {i} differs"
            after = counters(ctx, b.dut)
            blocks = -(-nbytes // (lay.config.engine("network").packet_words * word))
            assert after["net_results"] - before["net_results"] == blocks
            assert after["net_packets"] - before["net_packets"] >= blocks
            assert after["net_bad_packets"] == before["net_bad_packets"]
            if not faults:
                assert after["net_retransmits"] == before["net_retransmits"]
        c = counters(ctx, b.dut)
        if faults:
            assert c["net_retransmits"] > 0 and c["net_duplicates"] > 0, "no fault reached the engine"
        reads = b.commands["src"]
        assert all(n <= lay.config.engine("network").packet_words * word for _, n in reads)

    bench.run(tb)


@pytest.mark.parametrize("lost", ["data", "result"])
def test_a_lost_last_packet_is_recovered_in_a_few_answer_times_not_the_timeout(lost):
    """The job's last block lost (the engine's DATA on the way up, or its RESULT on the way down):
    no later packet reveals it, so the tail timer (the measured answer time + margin) sends it
    again long before the timeout; the same job without the loss gives the reference time."""
    lay = net_layout()
    P, word, blocks, timeout = 4, lay.word_bytes, 24, 20_000
    nbytes = blocks * P * word
    rng = np.random.default_rng(9)
    want_type = PacketType.DATA if lost == "data" else PacketType.RESULT

    def run(lose: bool) -> int:
        dropped = []

        def drop(where, port, pkt):
            h = pkt.header
            hit = (lose and not dropped and port == 1 and where == ("up" if lost == "data" else "down")
                   and h.type == want_type and h.offset == blocks - 1)
            if hit:
                dropped.append(h)
            return hit

        bench = EndpointBench(lay, NetworkEngine(lay), worker=1, workers=3, seed=10, drop=drop)
        took = []

        async def tb(ctx, b):
            mine = buffer(b, 0x400, nbytes)
            peers = {i: rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32) for i in (0, 2)}
            want = reduce_reference([peers[0], mine, peers[2]])
            start = b.cycle
            fault = await b.allreduce(ctx, descriptor(worker=1, members=0b111, bytes=nbytes, timeout=timeout), peers)
            took.append(b.cycle - start)
            assert fault == ErrorCode.NONE and np.array_equal(buffer(b, 0x400, nbytes), want)
            assert bool(dropped) == lose, "the chosen packet was never sent"
            if lose:
                assert counters(ctx, b.dut)["net_retransmits"] >= 1

        bench.run(tb)
        return took[0]

    clean, lossy = run(False), run(True)
    assert lossy - clean < timeout // 20, (clean, lossy)


def test_a_suspect_slot_whose_probe_is_lost_is_probed_again_not_sent_again():
    """Block 8's RESULT to the engine is lost, and so is the engine's PROBE for it (the slot was
    overtaken by later answers). The slot is probed again one answer time after that probe, and
    the stored result comes back: the block's DATA goes up once. Before, a probed slot was sent
    again by the tail timer (a whole packet on the link)."""
    lay = net_layout(window=16)
    P, word, blocks = 4, lay.word_bytes, 48
    nbytes = blocks * P * word
    rng = np.random.default_rng(12)
    b_lost = 8
    seen = {"data": 0, "probe": 0}
    lost = []

    def drop(where, port, pkt):
        h = pkt.header
        if port != 1 or h.offset != b_lost:
            return False
        if where == "up" and h.type == PacketType.DATA:
            seen["data"] += 1
        if where == "up" and h.type == PacketType.PROBE:
            seen["probe"] += 1
        hit = ((where == "down" and h.type == PacketType.RESULT and not lost)
               or (where == "up" and h.type == PacketType.PROBE and len(lost) == 1))
        if hit:
            lost.append(h)
        return hit

    bench = EndpointBench(lay, NetworkEngine(lay), worker=1, workers=3, seed=10, drop=drop)

    async def tb(ctx, b):
        mine = buffer(b, 0x400, nbytes)
        peers = {i: rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32) for i in (0, 2)}
        want = reduce_reference([peers[0], mine, peers[2]])
        fault = await b.allreduce(ctx, descriptor(worker=1, members=0b111, bytes=nbytes, window=16, inflight=4,
                                                  timeout=50_000), peers)
        assert fault == ErrorCode.NONE and np.array_equal(buffer(b, 0x400, nbytes), want)
        assert len(lost) == 2, lost
        assert seen["probe"] >= 2, seen
        assert seen["data"] == 1, f"block {b_lost} was sent again: {seen}"

    bench.run(tb)


def test_bad_packets_from_the_switch_are_dropped_and_counted_never_written():
    lay = net_layout()
    bench = EndpointBench(lay, NetworkEngine(lay), worker=1, workers=2, seed=4)
    rng = np.random.default_rng(2)

    async def tb(ctx, b):
        addr, nbytes = 0x800, 96
        mine = buffer(b, addr, nbytes)
        peer = rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32)
        want = reduce_reference([peer, mine])
        # forged results for block 0 of slot 0 round 0: a bad check, then one word too many
        forged = Packet(Header(type=PacketType.RESULT, worker=0, slot=0, round=0, count=4, offset=0, members=3),
                        np.full(8, 7, dtype=np.int32))
        bad = forged.words(64)
        bad[0] ^= 1 << 20
        long = forged.words(64) + [0]
        for words in (bad, long):
            b.to_dut.append(words)
        # ... and a stray result while no job runs
        b.to_dut.append(forged.words(64))
        for _ in range(300):
            await ctx.tick()
        assert buffer(b, addr, nbytes).tolist() == mine.tolist(), "a forged packet reached memory"
        c = counters(ctx, b.dut)
        assert c["net_bad_packets"] == 2 and c["net_duplicates"] == 1
        fault = await b.allreduce(ctx, descriptor(worker=1, members=0b11, addr=addr, bytes=nbytes), {0: peer})
        assert fault == ErrorCode.NONE and np.array_equal(buffer(b, addr, nbytes), want)

    bench.run(tb)


def test_a_member_that_never_joins_ends_with_net_timeout_and_names_it():
    lay = net_layout()
    bench = EndpointBench(lay, NetworkEngine(lay), worker=0, workers=4, seed=5, absent=(2,))
    rng = np.random.default_rng(3)

    async def tb(ctx, b):
        addr, nbytes = 0x400, 128
        mine = buffer(b, addr, nbytes)
        peers = {i: rng.integers(-9, 9, nbytes // 4).astype(np.int32) for i in (1, 3)}
        kept = {i: p.copy() for i, p in peers.items()}
        fault = await b.allreduce(ctx, descriptor(worker=0, members=0b1111, addr=addr, bytes=nbytes, timeout=100,
                                                  retries=3), peers, max_cycles=20_000)
        assert fault == ErrorCode.NET_TIMEOUT
        assert counters(ctx, b.dut)["net_heard"] == 0b1011, "the switch's STATUS names who it heard"
        assert np.array_equal(buffer(b, addr, nbytes), mine), "a failed all-reduce changed the buffer"
        for i in peers:
            assert b.peers[i].error == ErrorCode.NET_TIMEOUT and np.array_equal(peers[i], kept[i])

    bench.run(tb)


def test_collision_and_stale_epoch_end_the_run_with_their_codes():
    lay = net_layout()
    bench = EndpointBench(lay, NetworkEngine(lay), worker=1, workers=3, seed=6)

    async def tb(ctx, b):
        addr, nbytes = 0x400, 32
        mine = buffer(b, addr, nbytes)
        # worker 0 holds job 1 with member set {0, 2} in the switch's unit of slot 0
        b.switch.receive(0, Packet(Header(type=PacketType.DATA, job=1, worker=0, slot=0, count=4, members=0b101),
                                   np.zeros(8, np.int32)))
        fault = await b.allreduce(ctx, descriptor(job=1, worker=1, members=0b011, addr=addr, bytes=nbytes), {})
        assert fault == ErrorCode.NET_COLLISION
        fault = await b.allreduce(ctx, descriptor(job=0, epoch=9, worker=1, members=0b011, addr=addr,
                                                  bytes=nbytes), {})
        assert fault == ErrorCode.NET_STALE
        assert np.array_equal(buffer(b, addr, nbytes), mine)

    bench.run(tb)


def test_reset_sets_the_epoch_and_starts_the_rounds_again():
    lay = net_layout()
    bench = EndpointBench(lay, NetworkEngine(lay), worker=1, workers=2, seed=7)
    rng = np.random.default_rng(4)

    async def tb(ctx, b):
        async def reduce(epoch, nbytes):
            mine = buffer(b, 0x400, nbytes)
            peer = rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32)
            want = reduce_reference([peer, mine])
            fault = await b.allreduce(ctx, descriptor(worker=1, members=0b11, epoch=epoch, bytes=nbytes), {0: peer})
            assert fault == ErrorCode.NONE and np.array_equal(buffer(b, 0x400, nbytes), want)

        await reduce(0, 96)                                   # the slots' rounds move on
        reset = descriptor(mode=NetMode.RESET, worker=1, members=0b11, epoch=3)
        fault = await b.allreduce(ctx, reset, {0: None})
        assert fault == ErrorCode.NONE and b.switch.epochs[0] == 3
        assert b.peers[0].rounds == {} and b.peers[0].done
        await reduce(3, 160)                                  # both sides start at round 0 again

    bench.run(tb)


def test_engine_refuses_a_layout_without_a_network_engine():
    cfg = tiny_config_dict()
    with pytest.raises(ValueError, match="no network engine"):
        NetworkEngine(DesignLayout(parse_config(cfg)))
    with pytest.raises(TypeError, match="DesignLayout"):
        NetworkEngine(cfg)
