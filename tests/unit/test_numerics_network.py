"""Golden models of the in-switch reduction: the packet format, the switch's state machine, the
endpoint protocol over a lossy network, the memory-semantic mode and the ring for comparison."""
from __future__ import annotations

import numpy as np
import pytest

from hbmforge.config import parse_config
from hbmforge.encodings import ErrorCode, NetMode, Opcode
from hbmforge.engines.network import (DropReason, EndpointGeometry, Header, NackReason, PacketType, SwitchGeometry,
                                      switch_header_rules, first_drop)
from hbmforge.layout import DesignLayout
from hbmforge.numerics.network import (AllreduceJob, GoldenSwitch, LinkParams, NetworkSim, Packet, _Channel,
                                       block_exponents, float_allreduce_reference, reduce_reference, ring_allreduce)
from hbmforge.numerics.program import SparseMemory, execute

from designs import tiny_config_dict

GEOM = SwitchGeometry(ports=4, data_width=64, packet_words=4, slots=8, jobs=2)


def data(h: Header, words: int, seed: int = 0) -> Packet:
    rng = np.random.default_rng(seed)
    return Packet(h.with_(count=words), rng.integers(-2**31, 2**31, words * GEOM.lanes).astype(np.int32))


def hdr(worker, *, slot=0, round_=0, offset=0, members=0b1111, type_=PacketType.DATA, **kw) -> Header:
    return Header(type=int(type_), worker=worker, slot=slot, round=round_, offset=offset, members=members, **kw)


def only(out, type_):
    assert len(out) == 1, out
    assert out[0].packet.header.type == type_, out[0].packet
    return out[0]


# -- the packet format ------------------------------------------------------------------------
def test_header_round_trips_and_its_check_catches_every_single_bit_flip():
    h = Header(type=PacketType.DATA, job=3, worker=9, epoch=200, slot=1234, round=77, count=31, offset=123456,
               members=0xBEEF & 0xFFFF, op=NetMode.MAX)
    raw = h.to_int()
    back = Header.from_int(raw)
    assert back.check_ok and back.with_(check=None) == h
    for bit in range(128):
        assert not Header.from_int(raw ^ (1 << bit)).check_ok, f"bit {bit} flip not caught"
    assert not Header.from_int(0).check_ok, "an all-zero word must not be a valid header"
    words = Packet(h, np.arange(8, dtype=np.int32)).words(64)
    assert len(words) == 2 + 4 and Packet.from_words(words, 64).header == back


def test_switch_header_rules_name_each_bad_field():
    rules = switch_header_rules(GEOM)
    good = hdr(2, count=4)
    assert first_drop(rules, good.fields(port=2)) is None
    cases = {
        DropReason.BAD_CHECK: (Header.from_int(good.to_int() ^ 1 << 40), 2),
        DropReason.BAD_TYPE: (good.with_(type=int(PacketType.RESULT)), 2),
        DropReason.BAD_FIELD: (good.with_(reserved=1), 2),
        DropReason.BAD_WORKER: (good, 1),
        DropReason.BAD_JOB: (good.with_(job=2), 2),
        DropReason.BAD_SLOT: (good.with_(slot=8), 2),
        DropReason.BAD_COUNT: (good.with_(count=5), 2),
        DropReason.BAD_MEMBERS: (good.with_(members=0b10011), 2),
    }
    for reason, (h, port) in cases.items():
        assert first_drop(rules, h.fields(port=port)) == reason, reason
    assert first_drop(rules, good.with_(count=0).fields(port=2)) == DropReason.BAD_COUNT
    assert first_drop(rules, good.with_(members=0b0011).fields(port=2)) == DropReason.BAD_MEMBERS


def test_a_bad_header_or_length_is_dropped_and_counted_never_summed():
    sw = GoldenSwitch(GEOM)
    bad = data(hdr(0), 2)
    bad.raw ^= 1 << 70                                   # offset bit flipped, check no longer matches
    assert sw.receive(0, bad) == []
    short = data(hdr(1), 2)
    short.payload = short.payload[:2]                    # one word fewer than count says
    assert sw.receive(1, short) == []
    assert sw.counters.dropped[:2] == [1, 1] and sw.counters.reduced == 0
    assert sw.counters.reasons == {DropReason.BAD_CHECK: 1, DropReason.BAD_LENGTH: 1}


# -- the switch state machine ----------------------------------------------------------------
def test_duplicate_contribution_is_never_added_twice():
    sw = GoldenSwitch(GEOM)
    pk = [data(hdr(w), 3, seed=w) for w in range(4)]
    assert sw.receive(0, pk[0]) == []
    only(sw.receive(0, pk[0]), PacketType.STATUS)        # the slot waits: who was heard
    assert sw.receive(1, pk[1]) == [] and sw.receive(2, pk[2]) == []
    st = only(sw.receive(0, pk[0]), PacketType.STATUS)
    assert st.packet.header.members == 0b0111
    res = only(sw.receive(3, pk[3]), PacketType.RESULT)
    assert res.ports == (0, 1, 2, 3)
    assert np.array_equal(res.packet.payload, reduce_reference([p.payload for p in pk]))
    assert sw.counters.reduced == 4


def test_late_retransmission_gets_the_stored_result_while_the_slot_moves_on():
    sw = GoldenSwitch(GEOM)
    r0 = [data(hdr(w, offset=0), 2, seed=w) for w in range(4)]
    for w in range(4):
        out = sw.receive(w, r0[w])
    want0 = only(out, PacketType.RESULT).packet.payload
    # workers 0-2 got the result and start round 1 (copy 1); worker 3 lost it
    for w in range(3):
        assert sw.receive(w, data(hdr(w, round_=1, offset=8), 2, seed=10 + w)) == []
    again = only(sw.receive(3, r0[3]), PacketType.RESULT)    # its retransmission: the stored round 0
    assert again.ports == (3,) and np.array_equal(again.packet.payload, want0)
    only(sw.receive(3, data(hdr(3, round_=1, offset=8), 2, seed=13)), PacketType.RESULT)
    # round 2 reuses copy 0; a round-0 packet arriving now is stale and dropped
    for w in range(4):
        sw.receive(w, data(hdr(w, round_=2, offset=16), 2, seed=20 + w))
    before = sw.counters.duplicates
    assert sw.receive(1, r0[1]) == [] and sw.counters.duplicates == before + 1


def test_second_member_set_on_the_same_job_gets_a_collision_nack():
    sw = GoldenSwitch(GEOM)
    assert sw.receive(0, data(hdr(0, members=0b0011), 1)) == []
    nack = only(sw.receive(2, data(hdr(2, members=0b1100), 1)), PacketType.NACK)
    assert nack.packet.header.offset == NackReason.COLLISION and nack.packet.header.members == 0b0011
    other_job = sw.receive(2, data(hdr(2, members=0b1100, job=1), 1))     # another job id is fine
    assert other_job == []


def test_stale_epoch_gets_nack_and_reset_forgets_the_job():
    sw = GoldenSwitch(GEOM)
    assert sw.receive(0, data(hdr(0), 2)) == []
    ack = only(sw.receive(1, Packet(hdr(1, type_=PacketType.RESET, epoch=5))), PacketType.RESET_ACK)
    assert ack.ports == (1,)
    nack = only(sw.receive(0, data(hdr(0), 2)), PacketType.NACK)
    assert nack.packet.header.offset == NackReason.STALE
    # in epoch 5 the slot is empty again: worker 0's contribution counts afresh
    for w in range(3):
        assert sw.receive(w, data(hdr(w, epoch=5), 2)) == []
    only(sw.receive(3, data(hdr(3, epoch=5), 2)), PacketType.RESULT)
    # a retransmitted RESET with the same epoch forgets nothing
    only(sw.receive(2, Packet(hdr(2, type_=PacketType.RESET, epoch=5))), PacketType.RESET_ACK)
    only(sw.receive(0, data(hdr(0, epoch=5), 2)), PacketType.RESULT)


def test_members_disagreeing_on_a_block_get_a_mismatch_nack():
    sw = GoldenSwitch(GEOM)
    sw.receive(0, data(hdr(0, offset=0), 2))
    nack = only(sw.receive(1, data(hdr(1, offset=1), 2)), PacketType.NACK)
    assert nack.packet.header.offset == NackReason.MISMATCH
    nack = only(sw.receive(1, data(hdr(1, offset=0), 3)), PacketType.NACK)
    assert nack.packet.header.offset == NackReason.MISMATCH


def test_reduce_on_read_and_multicast_store():
    sw = GoldenSwitch(GEOM)
    req = hdr(1, type_=PacketType.LD_REQ, slot=2, offset=5, count=2)
    reads = only(sw.receive(1, Packet(req)), PacketType.LD_READ)
    assert reads.ports == (0, 1, 2, 3) and reads.packet.header.worker == 1
    parts = [data(hdr(w, type_=PacketType.LD_DATA, slot=2, offset=5), 2, seed=w) for w in range(4)]
    for w in (0, 2, 1):
        assert sw.receive(w, parts[w]) == []
    assert sw.receive(0, parts[0]) == []                              # a duplicate read answer
    again = only(sw.receive(1, Packet(req)), PacketType.LD_READ)      # requester retries: ask who is missing
    assert again.ports == (3,)
    res = only(sw.receive(3, parts[3]), PacketType.LD_RESULT)
    assert res.ports == (1,) and np.array_equal(res.packet.payload, reduce_reference([p.payload for p in parts]))
    # the multicast store of that result, round 1 of the slot
    st = Packet(hdr(1, type_=PacketType.ST, slot=2, round_=1, offset=5, count=2), res.packet.payload)
    fwd = only(sw.receive(1, st), PacketType.ST_DATA)
    assert fwd.ports == (0, 2, 3) and np.array_equal(fwd.packet.payload, res.packet.payload)
    acks = [Packet(hdr(w, type_=PacketType.ST_ACK, slot=2, round_=1, offset=5)) for w in (0, 2, 3)]
    assert sw.receive(0, acks[0]) == [] and sw.receive(2, acks[1]) == []
    assert only(sw.receive(1, st), PacketType.ST_DATA).ports == (3,)
    done = only(sw.receive(3, acks[2]), PacketType.ST_DONE)
    assert done.ports == (1,)
    assert only(sw.receive(1, st), PacketType.ST_DONE).ports == (1,)  # a late retry: already done


# -- the protocol over a lossy network ---------------------------------------------------------
FAULTY = LinkParams(bytes_per_cycle=8, latency=40, loss=0.1, duplicate=0.05, reorder=0.1, reorder_cycles=400)
BURSTY = LinkParams(bytes_per_cycle=8, latency=40, burst=(0.05, 0.4, 0.02, 0.5), duplicate=0.05, reorder=0.1,
                    reorder_cycles=400)


@pytest.mark.parametrize("link", [FAULTY, BURSTY], ids=["bernoulli", "gilbert-elliott"])
def test_allreduce_is_bit_exact_under_loss_duplicates_and_reordering(link):
    rng = np.random.default_rng(11)
    sim = NetworkSim(4, GEOM, link, seed=2)
    for r in range(60):
        size = int(rng.integers(1, 30)) * GEOM.lanes
        bufs = [rng.integers(-2**31, 2**31, size).astype(np.int32) for _ in range(4)]
        mode = NetMode.MAX if r % 5 == 4 else NetMode.SUM
        want = reduce_reference(bufs, mode)
        res = sim.allreduce([b.copy() for b in bufs], mode=mode, job=r % 2, window=int(rng.integers(1, 9)),
                            timeout=300, retries=80)
        assert res.ok, (r, res.errors)
        for i, got in enumerate(res.results):
            assert np.array_equal(got, want), f"round {r}: worker {i} differs"
    assert sim.switch.counters.resent and sim.switch.counters.status      # the faults did hit


def test_multimem_allreduce_is_bit_exact_and_interleaves_with_the_push_protocol():
    rng = np.random.default_rng(3)
    sim = NetworkSim(4, SwitchGeometry(ports=4, data_width=64, packet_words=4, slots=16, jobs=2), FAULTY, seed=4)
    for r in range(30):
        sim.use_multimem(r % 2 == 0)
        size = int(rng.integers(1, 30)) * 2
        bufs = [rng.integers(-2**31, 2**31, size).astype(np.int32) for _ in range(4)]
        want = reduce_reference(bufs)
        res = sim.allreduce([b.copy() for b in bufs], window=16, timeout=300, retries=80)
        assert res.ok and all(np.array_equal(g, want) for g in res.results), r


def test_a_member_that_never_joins_makes_the_others_time_out_naming_it():
    sim = NetworkSim(4, GEOM, LinkParams(latency=20), seed=0)
    bufs = [np.arange(8, dtype=np.int32) * (i + 1) for i in range(4)]
    js = [AllreduceJob(NetMode.SUM, 0, i, 0b1111, window=2, timeout=200, retries=3) if i != 2 else None
          for i in range(4)]
    before = [b.copy() for b in bufs]
    res = sim.run(bufs, js)
    assert [res.errors[i] for i in (0, 1, 3)] == [ErrorCode.NET_TIMEOUT] * 3
    for i in (0, 1, 3):
        heard = sim.endpoints[i].counters.heard
        assert heard == 0b1011, f"worker {i} heard {heard:#06b}: the missing member is not named"
        assert np.array_equal(bufs[i], before[i]), "a failed all-reduce changed the buffer"


class _LoseOnce(NetworkSim):
    """A clean network that loses the first packet ``pick(direction, device, header)`` selects."""

    def __init__(self, *args, pick, **kw):
        super().__init__(*args, **kw)
        self.pick, self.lost_headers = pick, []

    def _transmit(self, ch, pkt, t, kind, dest):
        direction = "up" if kind == "to_switch" else "down"
        if not self.lost_headers and self.pick(direction, dest, pkt.header):
            self.lost_headers.append(pkt.header)
            ch.busy_until = max(t, ch.busy_until) + pkt.nbytes(self.geom.data_width) / ch.p.bytes_per_cycle
            return
        super()._transmit(ch, pkt, t, kind, dest)


@pytest.mark.parametrize("lost", ["last data", "last result", "a late result"])
def test_a_loss_at_the_tail_of_a_job_is_recovered_in_a_few_answer_times_not_a_timeout(lost):
    """No later packet reveals a loss among a job's last blocks: once the feeder has nothing left
    to send, the tail timer (the measured answer time + margin, RFC 6298 style) sends it again.
    Before it, only the timeout recovered them."""
    geom = SwitchGeometry(ports=4, data_width=64, packet_words=4, slots=16, jobs=2)
    link = LinkParams(bytes_per_cycle=8, latency=50)
    blocks, timeout = 64, 20_000
    rng = np.random.default_rng(7)
    bufs = [rng.integers(-2**31, 2**31, blocks * 4 * geom.lanes).astype(np.int32) for _ in range(4)]
    want = reduce_reference(bufs)
    target = {"last data": ("up", PacketType.DATA, blocks - 1), "last result": ("down", PacketType.RESULT, blocks - 1),
              "a late result": ("down", PacketType.RESULT, blocks - 5)}[lost]

    def pick(direction, device, h):
        return device == 1 and (direction, h.type, h.offset) == target

    clean = NetworkSim(4, geom, link).allreduce([b.copy() for b in bufs], window=16, inflight=8, timeout=timeout)
    sim = _LoseOnce(4, geom, link, pick=pick)
    res = sim.allreduce([b.copy() for b in bufs], window=16, inflight=8, timeout=timeout)
    assert sim.lost_headers, "the chosen packet was never sent"
    assert res.ok and all(np.array_equal(r, want) for r in res.results)
    round_trip = 2 * link.latency + 2 * 5            # two links and two 5-word packets
    assert res.cycles - clean.cycles < 6 * round_trip, (res.cycles, clean.cycles)
    assert res.retransmits >= 1


def test_tail_resends_are_not_tries_a_member_that_falls_silent_fails_after_retries_timeouts():
    """Member 2 falls silent mid-job (every packet of it lost from its 10th on): the others' tail
    timer resends on the measured answer time, but only the timeout counts tries, so they stop
    with NET_TIMEOUT after ``retries`` timeouts, not ``retries`` answer times."""
    geom = SwitchGeometry(ports=3, data_width=64, packet_words=4, slots=8, jobs=2)
    link = LinkParams(bytes_per_cycle=8, latency=20)

    class Silent(NetworkSim):
        sent = 0

        def _transmit(self, ch, pkt, t, kind, dest):
            if kind == "to_switch" and dest == 2:
                self.sent += 1
                if self.sent >= 10:
                    ch.busy_until = max(t, ch.busy_until) + pkt.nbytes(self.geom.data_width) / ch.p.bytes_per_cycle
                    return
            super()._transmit(ch, pkt, t, kind, dest)

    sim = Silent(3, geom, link)
    bufs = [np.arange(64 * geom.lanes, dtype=np.int32) for _ in range(3)]
    timeout, retries = 3000, 3
    res = sim.allreduce(bufs, window=8, inflight=4, timeout=timeout, retries=retries)
    assert res.errors[0] == res.errors[1] == ErrorCode.NET_TIMEOUT
    assert sim.endpoints[0].srtt is not None, "answers came before the silence"
    assert res.retransmits > 2 * (retries + 1), "the tail timer resent in between"
    assert res.cycles >= (retries + 1) * timeout


def test_slots_probed_as_lost_leave_the_inflight_count():
    """A slot overtaken by FAST_RETRANSMIT_AFTER answered packets is probed and no longer counts in
    ``inflight``: the feeder goes on sending while it recovers (a lost block does not throttle)."""
    geom = SwitchGeometry(ports=2, data_width=64, packet_words=4, slots=64, jobs=2)
    link = LinkParams(bytes_per_cycle=8, latency=50)
    rng = np.random.default_rng(8)
    bufs = [rng.integers(-9, 9, 128 * 4 * geom.lanes).astype(np.int32) for _ in range(2)]
    sim = _LoseOnce(2, geom, link, pick=lambda d, dev, h: d == "up" and dev == 0 and h.offset == 20)
    ep = sim.endpoints[0]
    peak = []
    original = ep._feed

    def feed(now):
        original(now)
        if ep.pending[20 % ep.window] is not None and ep.suspect[20 % ep.window]:
            peak.append(sum(p is not None for p in ep.pending))
    ep._feed = feed
    res = sim.allreduce([b.copy() for b in bufs], window=64, inflight=8, timeout=20_000)
    assert res.ok and np.array_equal(res.results[0], reduce_reference(bufs))
    assert peak and max(peak) == 9, "the lost slot should wait beside a full inflight of others"


def test_simulation_is_deterministic_for_a_seed():
    def run(seed):
        rng = np.random.default_rng(0)
        sim = NetworkSim(4, GEOM, FAULTY, seed=seed)
        out = []
        for _ in range(5):
            bufs = [rng.integers(-9, 9, 40).astype(np.int32) for _ in range(4)]
            r = sim.allreduce(bufs, window=4, timeout=300, retries=80)
            out.append((r.cycles, r.packets, r.retransmits, r.lost))
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_gilbert_elliott_loss_comes_in_bursts_at_its_mean_rate():
    ch = _Channel(BURSTY, seed=1)
    lost = np.array([ch.fate()[0] for _ in range(100_000)])
    assert abs(lost.mean() - BURSTY.mean_loss) < 0.01
    after_loss = lost[1:][lost[:-1]].mean()              # P(loss | the previous packet was lost)
    assert after_loss > 2 * lost.mean(), "Gilbert-Elliott losses should cluster"
    bern = _Channel(LinkParams(loss=BURSTY.mean_loss), seed=1)
    blost = np.array([bern.fate()[0] for _ in range(100_000)])
    assert abs(blost[1:][blost[:-1]].mean() - blost.mean()) < 0.01, "Bernoulli losses are independent"


def test_ring_allreduce_gives_the_same_bits_and_is_slower_on_small_messages():
    rng = np.random.default_rng(1)
    geom = SwitchGeometry(ports=4, data_width=64, packet_words=16, slots=16, jobs=1)
    link = LinkParams(bytes_per_cycle=8, latency=100)
    bufs = [rng.integers(-2**31, 2**31, 1024).astype(np.int32) for _ in range(4)]
    ring = ring_allreduce(bufs, geom, link)
    want = reduce_reference(bufs)
    assert all(np.array_equal(r, want) for r in ring.results)
    sw = NetworkSim(4, geom, link).allreduce([b.copy() for b in bufs], window=16, timeout=5000)
    assert sw.ok and sw.cycles < ring.cycles


def test_float_allreduce_through_per_block_exponents_is_order_free_and_close():
    rng = np.random.default_rng(2)
    xs = [(rng.standard_normal(1000) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) for _ in range(4)]
    got = float_allreduce_reference(xs, 64)
    assert np.array_equal(got, float_allreduce_reference(xs[::-1], 64))
    exact = np.sum(np.stack(xs).astype(np.float64), axis=0)
    peak = np.repeat(np.ldexp(1.0, block_exponents(np.max(np.abs(np.stack(xs)), axis=0), 64)), 64)[:1000]
    assert np.all(np.abs(got - exact) <= peak * 2.0 ** -26 + np.abs(exact) * 2.0 ** -23)


def test_program_execute_alone_reports_net_timeout_and_leaves_the_buffer():
    cfg = tiny_config_dict()
    cfg["name"] = "tiny_net"
    cfg["engines"].append({"kind": "network", "packet_words": 4, "window": 4, "jobs": 2})
    lay = DesignLayout(parse_config(cfg))
    mem = SparseMemory()
    mem.write(0x1000, bytes(range(64)))
    prog = lay.encode_descriptor({"op": Opcode.ALLREDUCE, "mode": 0, "job": 0, "worker": 0, "members": 3,
                                  "epoch": 0, "addr": 0x1000, "bytes": 64, "window": 4, "inflight": 4, "timeout": 100,
                                  "retries": 2})
    mem.write(0, prog)
    res = execute(mem, 0, 1, lay)
    assert res.error == ErrorCode.NET_TIMEOUT and res.error_index == 0
    assert mem.read(0x1000, 64) == bytes(range(64))
    assert EndpointGeometry.of(lay).packet_bytes == 32


def _fabric_programs(lay, sizes, *, members=0b111, mode=NetMode.SUM, seed=0):
    """Per device: a memory holding a buffer of its size and one ALLREDUCE of it at address 0."""
    rng = np.random.default_rng(seed)
    runs, inputs = [], []
    for w, nbytes in enumerate(sizes):
        mem = SparseMemory()
        x = rng.integers(-2**31, 2**31, nbytes // 4).astype(np.int32)
        mem.write(0x1000, x.tobytes())
        mem.write(0, lay.encode_descriptor({"op": Opcode.ALLREDUCE, "mode": mode, "job": 1, "worker": w,
                                            "members": members, "epoch": 0, "addr": 0x1000, "bytes": nbytes,
                                            "window": 4, "inflight": 4, "timeout": 100, "retries": 2}))
        runs.append((mem, 0, 1))
        inputs.append(x)
    return runs, inputs


def _net_layout():
    cfg = tiny_config_dict()
    cfg["name"] = "tiny_net"
    cfg["engines"].append({"kind": "network", "packet_words": 4, "window": 4, "jobs": 2})
    return DesignLayout(parse_config(cfg))


@pytest.mark.parametrize("mode", [NetMode.SUM, NetMode.MAX])
def test_golden_fabric_runs_programs_together_and_reduces_in_place(mode):
    from hbmforge.numerics.network import GoldenFabric

    lay = _net_layout()
    runs, inputs = _fabric_programs(lay, [96, 96, 96], mode=mode)
    results = GoldenFabric(timeout=10).run(runs, lay)
    want = reduce_reference(inputs, mode)
    assert all(r.ok for r in results)
    for mem, _, _ in runs:
        assert np.array_equal(np.frombuffer(mem.read(0x1000, 96), np.int32), want)


def test_golden_fabric_names_a_member_that_never_comes_and_refuses_disagreeing_lengths():
    from hbmforge.numerics.network import GoldenFabric

    lay = _net_layout()
    runs, inputs = _fabric_programs(lay, [64, 64], members=0b111)        # worker 2 never runs
    results = GoldenFabric(timeout=0.5).run(runs, lay)
    assert [r.error for r in results] == [ErrorCode.NET_TIMEOUT] * 2
    assert "[2]" in results[0].detail
    assert np.array_equal(np.frombuffer(runs[0][0].read(0x1000, 64), np.int32), inputs[0])
    runs, _ = _fabric_programs(lay, [64, 96], members=0b11)
    results = GoldenFabric(timeout=10).run(runs, lay)
    assert [r.error for r in results] == [ErrorCode.NET_MISMATCH] * 2
    with pytest.raises(ValueError, match="timeout"):
        GoldenFabric(timeout=0)


class _LoseEach(NetworkSim):
    """A clean network that loses, for each of ``picks``, the first packet it selects."""

    def __init__(self, *args, picks, **kw):
        super().__init__(*args, **kw)
        self.picks, self.lost_headers = list(picks), []

    def _transmit(self, ch, pkt, t, kind, dest):
        direction = "up" if kind == "to_switch" else "down"
        for i, pick in enumerate(self.picks):
            if pick is not None and pick(direction, dest, pkt.header):
                self.picks[i] = None
                self.lost_headers.append(pkt.header)
                ch.busy_until = max(t, ch.busy_until) + pkt.nbytes(self.geom.data_width) / ch.p.bytes_per_cycle
                return
        super()._transmit(ch, pkt, t, kind, dest)


@pytest.mark.parametrize("lost", ["the probe", "the result after a STATUS"])
def test_a_suspect_slot_is_probed_again_after_one_answer_time(lost):
    """Mid-job (the feeder still sends), device 1 probes block 20. If its probe is lost, or the
    round's result is lost after the STATUS answered the probe, it probes again one answer time
    after its last probe or STATUS: the stored result comes back within a few answer times and
    its block is never sent again. Before, a probed slot waited 4 answer times from its block's
    send and then sent the block again (a whole packet on its link)."""
    geom = SwitchGeometry(ports=3, data_width=64, packet_words=4, slots=64, jobs=2)
    link = LinkParams(bytes_per_cycle=8, latency=50)
    rng = np.random.default_rng(9)
    bufs = [rng.integers(-2**31, 2**31, 160 * 4 * geom.lanes).astype(np.int32) for _ in range(3)]
    want = reduce_reference(bufs)
    b = 20
    if lost == "the probe":
        picks = [lambda d, dev, h: d == "down" and dev == 1 and h.type == PacketType.RESULT and h.offset == b,
                 lambda d, dev, h: d == "up" and dev == 1 and h.type == PacketType.PROBE and h.offset == b]
    else:
        picks = [lambda d, dev, h: d == "up" and dev == 0 and h.type == PacketType.DATA and h.offset == b,
                 lambda d, dev, h: d == "down" and dev == 1 and h.type == PacketType.RESULT and h.offset == b]
    probes = []

    class Sim(_LoseEach):
        def _transmit(self, ch, pkt, t, kind, dest):
            h = pkt.header
            if kind == "to_switch" and dest == 1 and h.type == PacketType.PROBE and h.offset == b:
                probes.append(t)
            super()._transmit(ch, pkt, t, kind, dest)

    sim = Sim(3, geom, link, picks=picks)
    ep = sim.endpoints[1]
    sent, got = [], []
    send, on_packet = ep._send_block, ep.on_packet

    def send_block(slot, block, now, **kw):
        if block == b:
            sent.append(now)
        send(slot, block, now, **kw)

    def packet(pkt, now):
        if pkt.header.type == PacketType.RESULT and pkt.header.offset == b:
            got.append(now)
        on_packet(pkt, now)
    ep._send_block, ep.on_packet = send_block, packet
    res = sim.allreduce([x.copy() for x in bufs], window=64, inflight=8, timeout=50_000)
    assert len(sim.lost_headers) == 2, sim.lost_headers
    assert res.ok and all(np.array_equal(r, want) for r in res.results)
    assert len(sent) == 1, f"device 1 sent block {b} again at {sent[1:]}: a probe was enough"
    assert len(probes) >= 2, probes
    assert got[0] - probes[0] < 4 * ep.srtt, (probes, got, ep.srtt)


def test_the_default_inflight_covers_the_switch_skew():
    """Each member's packet of a block waits for the others' in the unit of its slot
    ((devices - 1) x (packet_words + 2) cycles): the default ``inflight`` covers 1.5 round trips
    of the links plus that skew, so more devices keep more blocks in flight (at the benchmark's
    links: 26 at 4 devices, 30 at 8; it was 23 whatever the devices)."""
    from hbmforge.host.cluster import default_inflight

    got = {d: default_inflight(128, 200, 33, d, 32) for d in (2, 4, 8, 16)}
    assert got == {2: 24, 4: 26, 8: 30, 16: 38}
    assert default_inflight(16, 200, 33, 8, 32) == 16           # at most the window
    assert default_inflight(128, 0, 33, 1, 32) == 4             # no latency, no skew: the 4 spare
