"""The aggregation switch in amaranth.sim against the golden switch and golden endpoints.

* Packet by packet: random traffic (every packet type, small field ranges so rounds, slots,
  members and epochs collide often, plus corrupted headers and wrong lengths) goes in one
  packet at a time; each packet's outputs must equal :class:`GoldenSwitch`'s bit for bit,
  on the same ports, and the counters must agree.
* Whole all-reduces: golden endpoints on every port, random gaps and back-pressure, and
  packets lost, duplicated and reordered between the endpoints and the switch; every
  result must be bit-exact (the exactly-once property on the RTL).
"""
from __future__ import annotations

import heapq
import random

import numpy as np
import pytest

from hbmforge.encodings import NetMode
from hbmforge.engines.network import EndpointGeometry, Header, PacketType, SwitchGeometry, TO_SWITCH
from hbmforge.generators.network.switch import AggregationSwitch
from hbmforge.generators.network.testing import SwitchBench
from hbmforge.numerics.network import (AllreduceJob, GoldenEndpoint, GoldenSwitch, MultimemEndpoint, Packet,
                                       reduce_reference)


class Traffic:
    """Random packets around a few shared contexts (job, slot, round, offset, count, members, op),
    so that contributions meet and complete, mixed with every other type, stale and future
    rounds, other epochs and member sets, and now and then a malformed packet."""

    def __init__(self, rng: random.Random, g: SwitchGeometry):
        self.rng, self.g = rng, g
        full = (1 << g.ports) - 1
        self.contexts = [dict(job=rng.randrange(g.jobs), slot=rng.choice([0, 1, g.units % g.slots]),
                              round=rng.choice([0, 1, 2]), offset=rng.choice([0, 1]),
                              count=rng.randint(1, g.packet_words), members=rng.choice([full, full, 0b011]),
                              op=rng.choice([0, 0, 1])) for _ in range(3)]

    def packet(self) -> tuple[int, Packet]:
        rng, g = self.rng, self.g
        ctx = dict(rng.choice(self.contexts))
        if rng.random() < 0.15:                                  # move a context on a round
            ctx["round"] = (ctx["round"] + rng.choice([1, 2, -2, 0])) % 256
            self.contexts[rng.randrange(3)]["round"] = ctx["round"]
        if rng.random() < 0.1:
            ctx["members"] = rng.choice([0b110, 0b101, (1 << g.ports) - 1])
        port = rng.choice([p for p in range(g.ports) if ctx["members"] >> p & 1])
        t = rng.choice([PacketType.DATA] * 6 + list(TO_SWITCH) + [PacketType.LD_DATA, PacketType.ST_ACK])
        payload_t = t in (PacketType.DATA, PacketType.LD_DATA, PacketType.ST)
        count = ctx["count"] if payload_t or t == PacketType.LD_REQ else 0
        epoch = 1 if rng.random() < 0.05 else 0
        h = Header(type=int(t), job=ctx["job"], worker=port, epoch=epoch, slot=ctx["slot"], round=ctx["round"],
                   count=count, offset=ctx["offset"], members=ctx["members"], op=ctx["op"])
        payload = None
        if payload_t:
            payload = np.array([rng.randrange(-2**31, 2**31) for _ in range(count * g.lanes)], dtype=np.int32)
        pkt = Packet(h, payload)
        r = rng.random()
        if r < 0.03:
            pkt.raw ^= 1 << rng.randrange(128)                  # a corrupted header
        elif r < 0.05:
            pkt.extra_words = 1                                 # one word too many
        elif r < 0.07 and payload is not None and count > 1:
            pkt.payload = pkt.payload[:-g.lanes]                # one word too few
        elif r < 0.09:
            pkt = Packet(pkt.header.with_(worker=(port + 1) % g.ports, check=None), payload)  # another port's id
        elif r < 0.1:
            pkt = Packet(pkt.header.with_(slot=g.slots, check=None), payload)             # no such slot
        return port, pkt


async def quiet(ctx, bench, expect: list[int], base: list[int], settle: int = 40, limit: int = 4000) -> None:
    """Wait until every port got its expected packets, then ``settle`` more cycles."""
    for _ in range(limit):
        if bench.idle and all(len(o) - b >= e for o, b, e in zip(bench.out, base, expect)):
            break
        await ctx.tick()
    for _ in range(settle):
        await ctx.tick()


@pytest.mark.parametrize("width,ports,words", [(64, 4, 4), (128, 3, 2)])
def test_switch_matches_the_golden_switch_packet_by_packet(width, ports, words):
    g = SwitchGeometry(ports=ports, data_width=width, packet_words=words, slots=8, jobs=2)
    bench = SwitchBench(g, seed=width + ports, busy=0.3, stall=0.3)
    gold = GoldenSwitch(g)
    traffic = Traffic(random.Random(7 + width), g)

    async def tb(ctx, b):
        for i in range(200):
            port, pkt = traffic.packet()
            want = gold.receive(port, pkt)
            expect = [0] * g.ports
            for d in want:
                for q in d.ports:
                    expect[q] += 1
            base = [len(o) for o in b.out]
            b.send(port, pkt.words(width))
            await quiet(ctx, b, expect, base)
            got = [o[n:] for o, n in zip(b.out, base)]
            for q in range(g.ports):
                want_q = [d.packet.words(width) for d in want if q in d.ports]
                assert got[q] == want_q, (f"packet {i} {pkt!r} from port {port}: port {q} got "
                                          f"{[Packet.from_words(w, width) for w in got[q]]}, golden "
                                          f"{[Packet.from_words(w, width) for w in want_q]}")
        c = b.counters(ctx)
        gc = gold.counters
        for p in range(g.ports):
            assert (c[f"stat_rx_p{p}"], c[f"stat_drop_p{p}"], c[f"stat_tx_p{p}"]) == \
                (gc.rx[p], gc.dropped[p], gc.tx[p]), f"port {p} counters"
        for name in ("reduced", "completed", "resent", "status", "nacks", "duplicates"):
            assert c[f"stat_{name}"] == getattr(gc, name), name
        assert gc.reduced and gc.completed and gc.nacks and sum(gc.dropped), "the traffic missed a path"

    bench.run(tb)


@pytest.mark.parametrize("width,ports,words", [(64, 3, 4), (128, 4, 2)])
def test_back_to_back_packets_of_one_unit_match_the_golden_switch(width, ports, words):
    """Bursts of packets queued on one port, every one for the same unit (slots 0 and ``units``):
    the unit decides each packet during the last read of the one before it (its slot copy and
    claim forwarded), so back-to-back contributions to one round, completions, next rounds,
    duplicates and collisions must still give the golden switch's outputs, in order, bit for
    bit. Slow receivers keep the port queue full, so the unit rarely waits for a packet."""
    g = SwitchGeometry(ports=ports, data_width=width, packet_words=words, slots=8, jobs=2, units=4)
    bench = SwitchBench(g, seed=11 + width, busy=0.0, stall=0.6)
    gold = GoldenSwitch(g)
    traffic = Traffic(random.Random(3 + width), g)
    for c in traffic.contexts:
        c["slot"] = traffic.rng.choice([0, g.units])
    rng = random.Random(5 + width)
    rounds = {}                                   # (job, slot) -> the round members contribute to

    def data(port: int) -> Packet:
        job, slot = rng.randrange(g.jobs), rng.choice([0, g.units])
        pair = port < 2 and rng.random() < 0.8
        members = 0b011 if pair else (1 << g.ports) - 1
        if rng.random() < 0.1:                    # another member set: a collision or a mismatch
            members ^= 0b100
        r = rounds.get((job, slot), 0)
        if rng.random() < 0.1:
            r = (r + rng.choice([1, 2, -1])) % 256
        payload = np.array([rng.randrange(-2**31, 2**31) for _ in range(words * g.lanes)], dtype=np.int32)
        return Packet(Header(type=int(PacketType.DATA), job=job, worker=port, epoch=0, slot=slot, round=r,
                             count=words, offset=slot, members=members | (1 << port), op=0), payload)

    async def tb(ctx, b):
        for burst in range(40):
            port = rng.randrange(g.ports)
            pkts = []
            while len(pkts) < 6:
                if rng.random() < 0.7:
                    pkts.append(data(port))
                    continue
                p, pkt = traffic.packet()
                if p == port and pkt.header.slot in (0, g.units):
                    pkts.append(pkt)
            want = []
            for pkt in pkts:
                out = gold.receive(port, pkt)
                want += out
                h = pkt.header
                if any(d.packet.header.type == PacketType.RESULT and len(d.ports) > 1 for d in out):
                    rounds[(h.job, h.slot)] = (h.round + 1) % 256
            expect = [sum(q in d.ports for d in want) for q in range(g.ports)]
            base = [len(o) for o in b.out]
            for pkt in pkts:
                b.send(port, pkt.words(width))
            await quiet(ctx, b, expect, base, limit=20_000)
            got = [o[n:] for o, n in zip(b.out, base)]
            for q in range(g.ports):
                want_q = [d.packet.words(width) for d in want if q in d.ports]
                assert got[q] == want_q, (f"burst {burst} from port {port}: port {q} got "
                                          f"{[Packet.from_words(w, width) for w in got[q]]}, golden "
                                          f"{[Packet.from_words(w, width) for w in want_q]}")
        c = b.counters(ctx)
        gc = gold.counters
        for name in ("reduced", "completed", "resent", "status", "nacks", "duplicates"):
            assert c[f"stat_{name}"] == getattr(gc, name), name
        assert gc.reduced >= 10 and gc.completed >= 2 and gc.nacks and gc.status, f"the traffic missed a path: {gc}"

    bench.run(tb)


def test_members_arriving_together_are_reduced_back_to_back_bit_exact():
    """Both members' packets of each round arrive at once on two ports, for one unit: the second
    is decided during the first's last read (the slot copy forwarded) and completes the round.
    The rounds come in batches while the receivers are held not ready, so the ports' output
    FIFOs fill and the completing packet waits in BUS for the output bus for many cycles (the
    bug of 605151c: a unit that decided during a last read left stage 2 valid in BUS, so from
    the second BUS cycle on it wrote a word into the waiting packet's slot copy at the last
    word of the packet before; the round's result then had a wrong word). Every result must be
    the golden switch's, bit for bit, in order."""
    g = SwitchGeometry(ports=3, data_width=64, packet_words=4, slots=8, jobs=2, units=4)
    bench = SwitchBench(g, seed=2, busy=0.0, stall=0.7)
    gold = GoldenSwitch(g)
    rng = random.Random(8)

    async def tb(ctx, b):
        rounds = {}                               # (job, slot) -> its next round
        for batch in range(6):
            pkts, want = [], []
            for k in range(6):                    # more results than a port's output FIFO holds (4)
                job, slot = rng.randrange(g.jobs), rng.choice([0, g.units])   # all unit 0's
                round_ = rounds.get((job, slot), 0)
                rounds[(job, slot)] = (round_ + 1) % 256
                count = rng.choice([g.packet_words, g.packet_words, 2, 3])      # >= 2: decided at a last read
                op = int(NetMode.MAX) if rng.random() < 0.25 else int(NetMode.SUM)
                pair = []
                for port in (0, 1):
                    payload = np.array([rng.randrange(-2**31, 2**31) for _ in range(count * g.lanes)],
                                       dtype=np.int32)
                    pair.append(Packet(Header(type=int(PacketType.DATA), job=job, worker=port, epoch=0, slot=slot,
                                              round=round_, count=count, offset=batch * 6 + k, members=0b011,
                                              op=op), payload))
                out = gold.receive(0, pair[0]) + gold.receive(1, pair[1])
                assert [d.packet.header.type for d in out] == [PacketType.RESULT], out
                want += out
                pkts.append(pair)
            base = [len(o) for o in b.out]
            b.stall = 1.0                         # receivers not ready: the output FIFOs fill up
            for pair in pkts:
                for port in (0, 1):
                    b.send(port, pair[port].words(g.data_width))
            for _ in range(150):
                await ctx.tick()
            b.stall = 0.7
            await quiet(ctx, b, [len(want), len(want), 0], base)
            for q in (0, 1):
                got = b.out[q][base[q]:]
                want_q = [d.packet.words(g.data_width) for d in want]
                assert got == want_q, (f"batch {batch}: port {q} got "
                                       f"{[Packet.from_words(w, g.data_width) for w in got]}, golden "
                                       f"{[Packet.from_words(w, g.data_width) for w in want_q]}")
            assert b.out[2][base[2]:] == []

    bench.run(tb)


@pytest.mark.parametrize("buses", [1, 2])
def test_two_member_sets_stream_results_on_both_output_buses_bit_exact(buses):
    """Two jobs of two members each ({0, 1} on unit 0, {2, 3} on unit 1) complete rounds at once
    while the receivers are held, so both units wait for the output with whole results. With two
    buses both results stream at the same time (each bus one packet); every port must get its
    job's results, the golden switch's, bit for bit and in order, and with ``buses`` 2 the second
    bus must have carried packets while the first did."""
    g = SwitchGeometry(ports=4, data_width=64, packet_words=4, slots=8, jobs=2, units=4, out_buses=buses)
    bench = SwitchBench(g, seed=3, busy=0.0, stall=0.5)
    gold = GoldenSwitch(g)
    rng = random.Random(9)
    both = []

    async def watch(ctx):
        async for _, _, *owned in ctx.tick().sample(*bench.dut.bus_owned):
            both.append(sum(owned) >= 2)
    bench.sim.add_testbench(watch, background=True)

    async def tb(ctx, b):
        rounds = {0: 0, 1: 0}
        for batch in range(4):
            want = {0: [], 1: []}
            sends = []
            for k in range(5):
                for job, ports, slot in ((0, (0, 1), 0), (1, (2, 3), 1)):
                    count = rng.choice([g.packet_words, 3])
                    for port in ports:
                        payload = np.array([rng.randrange(-2**31, 2**31) for _ in range(count * g.lanes)],
                                           dtype=np.int32)
                        pkt = Packet(Header(type=int(PacketType.DATA), job=job, worker=port, epoch=0, slot=slot,
                                            round=rounds[job], count=count, offset=batch * 5 + k,
                                            members=sum(1 << p for p in ports), op=int(NetMode.SUM)), payload)
                        want[job] += gold.receive(port, pkt)
                        sends.append((port, pkt))
                    rounds[job] = (rounds[job] + 1) % 256
            base = [len(o) for o in b.out]
            b.stall = 1.0
            for port, pkt in sends:
                b.send(port, pkt.words(g.data_width))
            for _ in range(120):
                await ctx.tick()
            b.stall = 0.3
            await quiet(ctx, b, [5] * 4, base)
            for job, ports in ((0, (0, 1)), (1, (2, 3))):
                assert [d.packet.header.type for d in want[job]] == [PacketType.RESULT] * 5
                for q in ports:
                    assert b.out[q][base[q]:] == [d.packet.words(g.data_width) for d in want[job]], \
                        f"batch {batch}: port {q}"
        assert any(both) == (buses == 2)

    bench.run(tb)


class Lossy:
    """Golden endpoints on every port of a SwitchBench; packets between them and the switch are
    lost, duplicated or held back (reordered) at random, per direction."""

    def __init__(self, bench: SwitchBench, endpoints, *, loss: float, dup: float, reorder: float, seed: int):
        self.b, self.eps = bench, endpoints
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.later: list = []                 # (cycle, seq, kind, port, packet) held back
        self.seq = 0
        self.seen = [0] * len(endpoints)

    def _fault(self, kind: str, port: int, pkt: Packet) -> None:
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.rng.randint(1, 300) if self.rng.random() < self.reorder else 0
            self.seq += 1
            heapq.heappush(self.later, (self.b.cycle + delay, self.seq, kind, port, pkt))

    def flush(self, port: int) -> None:
        for pkt in self.eps[port].take_outbox():
            self._fault("up", port, pkt)

    def step(self) -> None:
        now = self.b.cycle
        while self.later and self.later[0][0] <= now:
            _, _, kind, port, pkt = heapq.heappop(self.later)
            if kind == "up":
                self.b.send(port, pkt.words(self.b.geom.data_width))
            else:
                self.eps[port].on_packet(pkt, now)
                self.flush(port)
        for port, ep in enumerate(self.eps):
            out = self.b.out[port]
            while self.seen[port] < len(out):
                self._fault("down", port, Packet.from_words(out[self.seen[port]], self.b.geom.data_width))
                self.seen[port] += 1
            if ep.next_deadline() <= now:
                ep.on_timer(now)
                self.flush(port)


@pytest.mark.parametrize("multimem", [False, True], ids=["switchml", "multimem"])
def test_allreduces_through_the_switch_are_bit_exact_under_loss_duplicates_and_reordering(multimem):
    g = SwitchGeometry(ports=3, data_width=64, packet_words=2, slots=8, jobs=2)
    eg = EndpointGeometry(g.word_bytes, g.packet_words, g.slots, g.jobs)
    cls = MultimemEndpoint if multimem else GoldenEndpoint
    eps = [cls(i, eg, g.data_width) for i in range(g.ports)]
    bench = SwitchBench(g, seed=5, busy=0.2, stall=0.2)
    net = Lossy(bench, eps, loss=0.1, dup=0.05, reorder=0.05, seed=9)
    rng = np.random.default_rng(4)

    async def tb(ctx, b):
        for r in range(6 if multimem else 8):
            size = int(rng.integers(1, 7)) * g.lanes * 2
            bufs = [rng.integers(-2**31, 2**31, size).astype(np.int32) for _ in range(g.ports)]
            mode = NetMode.MAX if r == 3 else NetMode.SUM
            want = reduce_reference(bufs, mode)
            window = 8 if multimem else int(rng.integers(1, 5))
            for i, ep in enumerate(eps):
                ep.start(AllreduceJob(mode, r % 2, i, (1 << g.ports) - 1, 0, window, 250, 60), bufs[i], b.cycle)
                net.flush(i)
            for _ in range(60_000):
                net.step()
                if all(ep.done for ep in eps):
                    break
                await ctx.tick()
            assert all(ep.done and not ep.error for ep in eps), (r, [ep.error for ep in eps])
            for i in range(g.ports):
                assert np.array_equal(bufs[i], want), f"round {r}: worker {i} differs"
        c = b.counters(ctx)
        assert c["stat_resent"] + c["stat_status"] > 0, "no loss was recovered"

    bench.run(tb)


def test_switch_geometry_and_ports_are_checked():
    with pytest.raises(ValueError, match="ports"):
        SwitchGeometry(ports=17)
    with pytest.raises(ValueError, match="data_width"):
        SwitchGeometry(ports=4, data_width=96)
    with pytest.raises(ValueError, match="units"):
        SwitchGeometry(ports=4, slots=4, units=8)
    with pytest.raises(TypeError, match="SwitchGeometry"):
        AggregationSwitch({"ports": 4})
    g = SwitchGeometry(ports=4, data_width=256)
    sw = AggregationSwitch(g)
    assert g.units == 8 and g.header_beats == 1
    assert sw.signature.members["s_axis_p3"].signature.members["tdata"].shape == 256
