"""Golden models of the in-switch reduction: the switch and the endpoint protocol, packet by packet,
a lossy network with link rate and latency, and a ring all-reduce over the same links.

* :class:`GoldenSwitch` is the aggregation switch's reference: the state machine the RTL
  (``hbmforge.generators.network.switch``) implements, fed one whole packet at a time. For a
  given packet order its outputs are the RTL's, bit for bit (the amaranth.sim tests check it).
* :class:`GoldenEndpoint` is the device side of the protocol (the ALLREDUCE opcode): a window
  of slots, a retransmission timer per slot, in-place results, persistent slot rounds.
* :class:`NetworkSim` joins N endpoints and the switch through links with a rate (bytes per
  cycle), a latency (cycles) and seeded faults in both directions (Bernoulli or Gilbert-Elliott
  loss, duplicates, reordering). Its timing is a model of the RTL's (store and forward, one
  payload word per cycle per unit), not cycle-exact; the co-simulation measures the RTL.
* :func:`ring_allreduce` runs the bandwidth-optimal ring over the same links (each hop goes
  up to the switch and down to the neighbour) for comparison.

Why exactly once (docs/engines/network.md): each worker counts the rounds of each slot and
sends round ``r + 1`` only after it received the result of round ``r``; that result exists
only when every member contributed to round ``r``, and a member contributes to ``r`` only
after it received the result of ``r - 1``. Round ``r`` uses copy ``r % 2`` of the slot, so
when the switch reuses a copy for round ``r + 2`` every member has the result of ``r``,
while the other copy still holds round ``r + 1``'s result for a member whose RESULT was lost.
Per copy the switch keeps the round and the bitmap of who contributed: a duplicate finds its
bit set and is never added again (it gets the stored result, or a STATUS while the round
waits); a packet of an older round is dropped. Integer sums modulo 2**32 (and max) are
associative and commutative, so the arrival order never changes a bit of the result.
"""
from __future__ import annotations

import heapq
import math
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..encodings import ErrorCode, NetMode
from ..engines.network import (FAST_RETRANSMIT_AFTER, HEADER_BITS, MAX_WORKERS, PAYLOAD_TYPES, REQUEST_TYPES,
                               ROUND_MODULO, RTT_BITS, DropReason, EndpointGeometry, Header, NackReason, PacketType,
                               SwitchGeometry, endpoint_header_rules, first_drop, switch_header_rules)
from ..mathutil import ceil_div

__all__ = [
    "Packet", "combine", "reduce_reference", "GoldenSwitch", "Delivery", "GoldenEndpoint", "MultimemEndpoint",
    "AllreduceJob",
    "LinkParams", "NetworkSim", "RoundResult", "ring_allreduce", "RingResult", "block_exponents",
    "float_allreduce_reference", "run_allreduce_descriptor", "job_of", "REQUEST_TYPES", "GoldenFabric",
]

_U32 = 0xFFFF_FFFF
_PAYLOAD = frozenset(int(t) for t in PAYLOAD_TYPES)


# -- packets -----------------------------------------------------------------------------------
class Packet:
    """A header (the raw 128-bit value, so that a bad check survives) and an int32 payload."""

    __slots__ = ("raw", "payload", "_header", "extra_words")

    def __init__(self, header: Header | int, payload: np.ndarray | None = None, *, extra_words: int = 0):
        self.raw = header if isinstance(header, int) else header.to_int(keep_check=header.check is not None)
        self.payload = None if payload is None else np.ascontiguousarray(payload, dtype=np.int32).reshape(-1)
        self._header = None
        self.extra_words = extra_words          # words beyond the payload (a malformed length)

    @property
    def header(self) -> Header:
        if self._header is None:
            self._header = Header.from_int(self.raw)
        return self._header

    def payload_words(self, lanes: int) -> int:
        return 0 if self.payload is None else self.payload.size // lanes

    def beats(self, data_width: int) -> int:
        return ceil_div(HEADER_BITS, data_width) + self.payload_words(data_width // 32) + self.extra_words

    def nbytes(self, data_width: int) -> int:
        return self.beats(data_width) * data_width // 8

    def words(self, data_width: int) -> list[int]:
        """The stream words (ints of ``data_width`` bits), header first."""
        out = Header.from_int(self.raw).words(data_width)
        if self.payload is not None and self.payload.size:
            raw = self.payload.view(np.uint32).astype(object)
            lanes = data_width // 32
            for i in range(0, raw.size, lanes):
                word = 0
                for j, lane in enumerate(raw[i:i + lanes]):
                    word |= int(lane) << (32 * j)
                out.append(word)
        out += [0] * self.extra_words
        return out

    @classmethod
    def from_words(cls, words: Sequence[int], data_width: int) -> "Packet":
        """A packet from its stream words (the header's words, then whole payload words)."""
        hb = ceil_div(HEADER_BITS, data_width)
        raw = 0
        for i, w in enumerate(words[:hb]):
            raw |= int(w) << (data_width * i)
        raw &= (1 << HEADER_BITS) - 1
        lanes = data_width // 32
        body = words[hb:]
        payload = None
        if body:
            lanes_u = np.array([(int(w) >> (32 * j)) & _U32 for w in body for j in range(lanes)], dtype=np.uint32)
            payload = lanes_u.view(np.int32)
        p = cls(raw, payload)
        if len(words) < hb:
            p.extra_words = -1                     # not even a whole header
        return p

    def copy(self) -> "Packet":
        return Packet(self.raw, None if self.payload is None else self.payload.copy(), extra_words=self.extra_words)

    def __repr__(self) -> str:
        h = self.header
        try:
            t = PacketType(h.type).name
        except ValueError:
            t = str(h.type)
        return (f"Packet({t} job={h.job} w={h.worker} e={h.epoch} slot={h.slot} r={h.round} off={h.offset} "
                f"count={h.count} members={h.members:#x}{' BADCHECK' if not h.check_ok else ''})")


def combine(op: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One reduction step on int32 lanes: SUM modulo 2**32, or signed MAX."""
    if op == NetMode.MAX:
        return np.maximum(a, b)
    return (a.view(np.uint32) + b.view(np.uint32)).view(np.int32)


def reduce_reference(buffers: Sequence[np.ndarray], op: int = NetMode.SUM) -> np.ndarray:
    """The all-reduce result of int32 buffers: lane-wise sum modulo 2**32 (or max)."""
    arrs = [np.ascontiguousarray(b, dtype=np.int32).reshape(-1) for b in buffers]
    out = arrs[0].copy()
    for a in arrs[1:]:
        out = combine(op, out, a)
    return out


# -- the switch --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    """A packet the switch sends to the ports in ``ports`` (one for unicast, the members for multicast)."""

    ports: tuple[int, ...]
    packet: Packet


class _Kind:
    REDUCE, LOAD, STORE = 0, 1, 2


class _Rel:
    """How a packet's round relates to the round a slot copy holds."""

    SAME, NEW, STALE, CONFLICT = 0, 1, 2, 3


@dataclass
class _Copy:
    epoch: int = -1            # the job epoch this state belongs to (-1: never written)
    round: int = 0
    open: bool = False
    done: bool = False
    seen: int = 0
    offset: int = 0
    count: int = 0
    kind: int = _Kind.REDUCE
    requester: int = 0
    members: int = 0
    op: int = 0
    data: np.ndarray | None = None


@dataclass
class _Claim:
    epoch: int = -1
    members: int = 0
    op: int = 0
    open: int = 0


@dataclass
class SwitchCounters:
    rx: list = field(default_factory=list)           # packets received, per port
    dropped: list = field(default_factory=list)      # bad packets dropped, per port
    tx: list = field(default_factory=list)           # packets sent, per port
    reduced: int = 0         # contributions added into a slot
    completed: int = 0       # slot rounds completed (results multicast / returned)
    resent: int = 0          # stored results sent again to a late retransmitter
    status: int = 0          # STATUS answers
    nacks: int = 0           # NACKs
    duplicates: int = 0      # packets dropped as duplicates or stale rounds
    reasons: dict = field(default_factory=dict)      # DropReason -> count (golden only)


class GoldenSwitch:
    """The aggregation switch, one packet at a time (see the module docstring).

    State per job: its epoch. Per (job, slot, copy): epoch tag, round, open/done, the bitmap
    of contributors, offset, count, kind (reduce, load, store), requester, members, op and
    the payload words; round ``r`` uses copy ``r % 2``. Per (unit, job): the claim (members,
    op, open slot rounds) that catches a second member set using the same job id. State
    whose epoch tag is not the job's is empty: a RESET to a new epoch forgets the job
    without walking its slots.

    A packet of round ``r`` against a copy holding round ``q``: ``r == q`` is the same round
    (a contribution or a duplicate); ``r == q + 2`` opens a new round (``q`` must be done:
    every member has its result); ``r`` behind ``q`` (by up to half the round modulo) is a
    stale duplicate, dropped; anything else means the members disagree (NACK MISMATCH).
    """

    def __init__(self, geom: SwitchGeometry):
        if not isinstance(geom, SwitchGeometry):
            raise TypeError(f"geom must be a SwitchGeometry, got {type(geom).__name__}")
        self.geom = geom
        self.rules = switch_header_rules(geom)
        self.epochs = [0] * geom.jobs
        self.copies: dict[tuple[int, int, int], _Copy] = {}
        self.claims: dict[tuple[int, int], _Claim] = {}
        n = geom.ports
        self.counters = SwitchCounters(rx=[0] * n, dropped=[0] * n, tx=[0] * n)

    # -- state access --------------------------------------------------------------------------
    def copy_of(self, job: int, slot: int, round_: int) -> _Copy:
        key = (job, slot, round_ & 1)
        st = self.copies.get(key)
        if st is None or st.epoch != self.epochs[job]:
            st = self.copies[key] = _Copy(epoch=self.epochs[job])
            st.epoch = -2                      # empty: any round opens it
        return st

    def _claim(self, job: int, slot: int) -> _Claim:
        key = (self.geom.unit_of(slot), job)
        cl = self.claims.get(key)
        if cl is None or cl.epoch != self.epochs[job]:
            cl = self.claims[key] = _Claim(epoch=self.epochs[job])
        return cl

    @staticmethod
    def _relation(st: _Copy, r: int) -> int:
        if st.epoch == -2:
            return _Rel.NEW
        d = (r - st.round) % ROUND_MODULO
        if d == 0:
            return _Rel.SAME
        if d == 2:
            return _Rel.NEW if st.done else _Rel.CONFLICT
        if d >= ROUND_MODULO // 2:
            return _Rel.STALE
        return _Rel.CONFLICT

    # -- input ---------------------------------------------------------------------------------
    def receive_words(self, port: int, words: Sequence[int]) -> list[Delivery]:
        return self.receive(port, Packet.from_words(words, self.geom.data_width))

    def drop_reason(self, port: int, pkt: Packet) -> DropReason | None:
        """Why the switch drops ``pkt`` arriving on ``port`` before it looks at any state (None: it does not)."""
        if pkt.extra_words < 0:
            return DropReason.BAD_LENGTH
        h = pkt.header
        reason = first_drop(self.rules, h.fields(port=port))
        if reason is not None:
            return reason
        want = h.count if h.type in _PAYLOAD else 0
        if pkt.payload_words(self.geom.lanes) != want or pkt.extra_words:
            return DropReason.BAD_LENGTH
        return None

    def receive(self, port: int, pkt: Packet) -> list[Delivery]:
        """Process one whole packet from ``port``; the packets it sends, in order."""
        c = self.counters
        c.rx[port] += 1
        reason = self.drop_reason(port, pkt)
        if reason is not None:
            c.dropped[port] += 1
            c.reasons[reason] = c.reasons.get(reason, 0) + 1
            return []
        h = pkt.header
        t = h.type
        if t == PacketType.RESET:
            out = self._reset(h)
        elif h.epoch != self.epochs[h.job]:
            out = [self._nack(h, NackReason.STALE, self.epochs[h.job])]
        elif t == PacketType.DATA:
            out = self._data(h, pkt.payload)
        elif t == PacketType.LD_DATA:
            out = self._load_data(h, pkt.payload)
        elif t == PacketType.ST_ACK:
            out = self._store_ack(h)
        elif t == PacketType.PROBE:
            out = self._probe(h)
        else:                                   # LD_REQ, ST
            out = self._request(h, pkt.payload)
        for d in out:
            for p in d.ports:
                c.tx[p] += 1
        return out

    # -- replies -------------------------------------------------------------------------------
    def _reply(self, h: Header, type_: PacketType, dest: int, *, members: int, offset: int | None = None,
               count: int = 0, payload=None, worker: int | None = None, op: int | None = None,
               ports: tuple[int, ...] | None = None) -> Delivery:
        hdr = Header(type=int(type_), job=h.job, worker=dest if worker is None else worker, epoch=h.epoch,
                     slot=h.slot, round=h.round, count=count, offset=h.offset if offset is None else offset,
                     members=members, op=h.op if op is None else op)
        return Delivery((dest,) if ports is None else ports, Packet(hdr, payload))

    def _nack(self, h: Header, reason: NackReason, members: int) -> Delivery:
        self.counters.nacks += 1
        return self._reply(h, PacketType.NACK, h.worker, members=members & 0xFFFF, offset=int(reason))

    def _refuse(self, h: Header, st: _Copy) -> Delivery:
        """A packet that does not fit the slot copy's round: COLLISION when the round belongs to
        another member set (another group uses this job id), MISMATCH otherwise."""
        reason = NackReason.COLLISION if st.members != h.members else NackReason.MISMATCH
        return self._nack(h, reason, st.members)

    def _drop(self) -> list[Delivery]:
        self.counters.duplicates += 1
        return []

    def _reset(self, h: Header) -> list[Delivery]:
        self.epochs[h.job] = h.epoch           # same epoch: nothing forgotten (a retransmitted RESET)
        return [self._reply(h, PacketType.RESET_ACK, h.worker, members=h.members)]

    @staticmethod
    def _ports(mask: int) -> tuple[int, ...]:
        return tuple(i for i in range(MAX_WORKERS) if mask >> i & 1)

    def _collides(self, h: Header) -> _Claim | None:
        cl = self._claim(h.job, h.slot)
        if cl.open and (cl.members != h.members or cl.op != h.op):
            return cl
        return None

    def _open(self, h: Header, st: _Copy, kind: int, seen: int, payload) -> None:
        cl = self._claim(h.job, h.slot)
        if not cl.open:
            cl.members, cl.op = h.members, h.op
        cl.open += 1
        st.epoch, st.round = self.epochs[h.job], h.round
        st.open, st.done, st.seen, st.kind = True, False, seen, kind
        st.offset, st.count, st.members, st.op, st.requester = h.offset, h.count, h.members, h.op, h.worker
        st.data = None if payload is None else payload.copy()

    def _close(self, h: Header, st: _Copy) -> None:
        st.open, st.done = False, True
        self._claim(h.job, h.slot).open -= 1
        self.counters.completed += 1

    def _result(self, h: Header, st: _Copy) -> Delivery:
        """The completed copy: RESULT multicast to the members (reduce) or LD_RESULT to the requester."""
        if st.kind == _Kind.LOAD:
            return self._reply(h, PacketType.LD_RESULT, st.requester, members=st.members, count=st.count,
                               payload=st.data, op=st.op)
        return self._reply(h, PacketType.RESULT, h.worker, members=st.members, count=st.count, payload=st.data,
                           op=st.op, worker=h.worker, ports=self._ports(st.members))

    # -- reduce: DATA --------------------------------------------------------------------------
    def _data(self, h: Header, payload: np.ndarray) -> list[Delivery]:
        c = self.counters
        w, bit = h.worker, 1 << h.worker
        st = self.copy_of(h.job, h.slot, h.round)
        rel = self._relation(st, h.round)
        if rel == _Rel.STALE:
            return self._drop()
        if rel == _Rel.CONFLICT or (rel == _Rel.SAME and st.kind != _Kind.REDUCE):
            return [self._refuse(h, st)]
        if rel == _Rel.SAME and st.seen & bit:            # a duplicate: never added twice
            if st.done:
                c.resent += 1
                return [self._reply(h, PacketType.RESULT, w, members=st.members, offset=st.offset,
                                    count=st.count, payload=st.data, op=st.op)]
            c.status += 1
            return [self._reply(h, PacketType.STATUS, w, members=st.seen)]
        cl = self._collides(h)
        if cl is not None:
            return [self._nack(h, NackReason.COLLISION, cl.members)]
        if rel == _Rel.NEW:
            self._open(h, st, _Kind.REDUCE, bit, payload)
        else:
            if st.done or st.offset != h.offset or st.count != h.count:
                return [self._refuse(h, st)]
            st.data = combine(st.op, st.data, payload)
            st.seen |= bit
        c.reduced += 1
        if st.seen != st.members:
            return []
        self._close(h, st)
        return [self._result(h, st)]

    def _probe(self, h: Header) -> list[Delivery]:
        """A worker asks where its slot's round is: the stored RESULT if done (to it alone), else a
        STATUS (the workers heard) to it and to every member not heard, who send their block again."""
        st = self.copy_of(h.job, h.slot, h.round)
        rel = self._relation(st, h.round)
        if rel == _Rel.STALE:
            return self._drop()
        if rel == _Rel.SAME and st.kind == _Kind.REDUCE and st.offset == h.offset:
            if st.done:
                self.counters.resent += 1
                return [self._reply(h, PacketType.RESULT, h.worker, members=st.members, offset=st.offset,
                                    count=st.count, payload=st.data, op=st.op)]
            self.counters.status += 1
            missing = h.members & ~st.seen
            return [self._reply(h, PacketType.STATUS, h.worker, members=st.seen,
                                ports=self._ports((1 << h.worker) | missing))]
        self.counters.status += 1                 # nobody's block of that round is here yet
        return [self._reply(h, PacketType.STATUS, h.worker, members=0, ports=self._ports(h.members))]

    # -- memory semantics: reduce-on-read (LD_REQ, LD_DATA) and multicast store (ST, ST_ACK) ---
    def _request(self, h: Header, payload) -> list[Delivery]:
        """LD_REQ (a reduce-on-read) or ST (a multicast store) from the requester ``h.worker``."""
        load = h.type == PacketType.LD_REQ
        kind = _Kind.LOAD if load else _Kind.STORE
        st = self.copy_of(h.job, h.slot, h.round)
        rel = self._relation(st, h.round)
        if rel == _Rel.STALE:
            return self._drop()
        if rel == _Rel.SAME:
            if st.kind != kind or st.requester != h.worker or st.offset != h.offset:
                return [self._refuse(h, st)]
            if st.done:
                self.counters.resent += 1
                if load:
                    return [self._result(h, st)]
                return [self._reply(h, PacketType.ST_DONE, h.worker, members=st.members)]
            missing = st.members & ~st.seen                # ask the members not heard yet again
        elif rel == _Rel.CONFLICT:
            return [self._refuse(h, st)]
        else:
            cl = self._collides(h)
            if cl is not None:
                return [self._nack(h, NackReason.COLLISION, cl.members)]
            self._open(h, st, kind, 0 if load else 1 << h.worker, None)
            if st.seen == st.members:                      # a store to itself alone
                self._close(h, st)
                return [self._reply(h, PacketType.ST_DONE, h.worker, members=st.members)]
            missing = st.members & ~st.seen
        if load:
            return [self._reply(h, PacketType.LD_READ, h.worker, members=st.members, count=st.count,
                                worker=h.worker, ports=self._ports(missing))]
        return [self._reply(h, PacketType.ST_DATA, h.worker, members=st.members, count=h.count, payload=payload,
                            worker=h.worker, ports=self._ports(missing))]

    def _load_data(self, h: Header, payload: np.ndarray) -> list[Delivery]:
        bit = 1 << h.worker
        st = self.copy_of(h.job, h.slot, h.round)
        if self._relation(st, h.round) != _Rel.SAME or not st.open or st.kind != _Kind.LOAD \
                or st.offset != h.offset or st.seen & bit:
            return self._drop()                    # no request open for it, or already counted
        if st.count != h.count or st.members != h.members or st.op != h.op:
            return [self._refuse(h, st)]
        st.data = payload.copy() if st.data is None else combine(st.op, st.data, payload)
        st.seen |= bit
        self.counters.reduced += 1
        if st.seen != st.members:
            return []
        self._close(h, st)
        return [self._result(h, st)]

    def _store_ack(self, h: Header) -> list[Delivery]:
        bit = 1 << h.worker
        st = self.copy_of(h.job, h.slot, h.round)
        if self._relation(st, h.round) != _Rel.SAME or not st.open or st.kind != _Kind.STORE \
                or st.offset != h.offset or st.seen & bit:
            return self._drop()
        st.seen |= bit
        if st.seen != st.members:
            return []
        self._close(h, st)
        return [self._reply(h, PacketType.ST_DONE, st.requester, members=st.members, worker=st.requester)]


# -- the endpoint ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AllreduceJob:
    """One ALLREDUCE descriptor's run-time fields (hbmforge.engines.network.NETWORK_FIELDS)."""

    mode: int
    job: int
    worker: int
    members: int
    epoch: int = 0
    window: int = 1
    timeout: int = 1000
    retries: int = 8
    inflight: int | None = None       # slots with a packet in flight at most (None: the window)


@dataclass
class EndpointCounters:
    packets: int = 0
    retransmits: int = 0
    results: int = 0
    duplicates: int = 0
    bad_packets: int = 0
    heard: int = 0

    def as_registers(self) -> dict:
        return {"NET_PACKETS": self.packets & _U32, "NET_RETRANSMITS": self.retransmits & _U32,
                "NET_RESULTS": self.results & _U32, "NET_DUPLICATES": self.duplicates & _U32,
                "NET_BAD_PACKETS": self.bad_packets & _U32, "NET_HEARD": self.heard & _U32}


class GoldenEndpoint:
    """The device side of the protocol for one worker (the ALLREDUCE opcode's reference).

    ``start`` takes a job and its buffer (int32 lanes, reduced in place); ``on_packet`` and
    ``on_timer`` advance it; ``outbox`` holds the packets to send, in order. The round of
    each slot persists across jobs (per job id), as in the RTL; RESET clears those of its job.
    """

    def __init__(self, worker: int, geom: EndpointGeometry, data_width: int):
        self.worker = worker
        self.geom = geom
        self.data_width = data_width
        self.lanes = data_width // 32
        self.rules = endpoint_header_rules(geom.packet_words, geom.jobs)
        self.rounds: dict[tuple[int, int], int] = {}
        self.job: AllreduceJob | None = None
        self.error = ErrorCode.NONE
        self.done = True
        self.counters = EndpointCounters()
        self.outbox: list[Packet] = []
        self.data: np.ndarray | None = None

    # -- control -------------------------------------------------------------------------------
    def start(self, job: AllreduceJob, data: np.ndarray | None, now: float = 0) -> None:
        self.job, self.error, self.done = job, ErrorCode.NONE, False
        self.counters = EndpointCounters()
        self.outbox = []
        if job.mode == NetMode.RESET:
            self.data = None
            self.tries = 0
            self.deadline = now + job.timeout
            self._send_reset()
            return
        self.data = data.reshape(-1)
        words = self.data.size // self.lanes
        self.nbytes = words * self.geom.word_bytes
        self.blocks = self.geom.blocks(self.nbytes)
        self.received = 0
        self.window = min(job.window, self.blocks)
        self.pending: list[int | None] = [None] * self.window   # block in flight per slot
        self.sent_time = [0] * self.window        # when each slot's block was last sent (data)
        self.timer_from = [0] * self.window       # ... sent but for a tail resend: the timeout's start
        self.tries_of = [0] * self.window
        self.suspect = [False] * self.window      # probed as overtaken: out of the ``inflight`` count
        self.probe_time = [0] * self.window       # a suspect slot: its last probe, or the STATUS since
        self.srtt = None                          # smoothed answer time of blocks sent once (Karn)
        self.rttvar = 0                           # ... and its mean deviation (RFC 6298)
        self.seq = 0                                # packets sent so far (the send order)
        self.sent_at = [0] * self.window            # the send order of each slot's last packet
        self.clean = [True] * self.window           # the slot's block was sent once (Karn: only such
        self.answered = -1                          # answers move ``answered``, the latest send answered)
        self.inflight = self.window if job.inflight is None else max(1, min(job.inflight, self.window))
        self.next_block = 0
        self.busy = 0
        self._feed(now)

    def _feed(self, now: float) -> None:
        """Send blocks in order while fewer than ``inflight`` slots wait: block ``b`` goes in slot
        ``b % window`` once that slot's previous block is done (a stalled slot holds up only the
        blocks of its own slot, ``window`` blocks later)."""
        while self.busy < self.inflight and self.next_block < self.blocks \
                and self.pending[self.next_block % self.window] is None:
            self._send_block(self.next_block % self.window, self.next_block, now)
            self.busy += 1
            self.next_block += 1

    def _fail(self, code: ErrorCode) -> None:
        self.error, self.done = code, True
        self.outbox = []

    def round_of(self, slot: int) -> int:
        return self.rounds.get((self.job.job, slot), 0)

    def _send_reset(self) -> None:
        j = self.job
        self.outbox.append(Packet(Header(type=PacketType.RESET, job=j.job, worker=self.worker, epoch=j.epoch,
                                         members=j.members)))
        self.counters.packets += 1

    def _send_block(self, slot: int, block: int, now: float, *, again: bool = False, tail: bool = False) -> None:
        """Send ``block`` from ``slot``: first (``again`` False), again (the timer, a STATUS), or
        again by the tail timer (``tail``: the timeout keeps running, no try is counted)."""
        j = self.job
        words = self.geom.block_words(self.nbytes, block)
        lo = block * self.geom.packet_words * self.lanes
        payload = self.data[lo:lo + words * self.lanes].copy()
        hdr = Header(type=PacketType.DATA, job=j.job, worker=self.worker, epoch=j.epoch, slot=slot,
                     round=self.round_of(slot), count=words, offset=block, members=j.members, op=j.mode)
        self.outbox.append(Packet(hdr, payload))
        self.pending[slot] = block
        self.sent_time[slot] = int(now)
        if not tail:
            self.timer_from[slot] = int(now)
        self.sent_at[slot] = self.seq
        self.clean[slot] = not again
        self.seq += 1
        self.counters.packets += 1
        if again:
            self.counters.retransmits += 1
        else:
            self.tries_of[slot] = 0
            self.suspect[slot] = False

    # -- timers ----------------------------------------------------------------------------------
    def _starved(self) -> bool:
        """The feeder has nothing it may send: every block was sent, or the next one's slot still
        waits. No later packet can then reveal a loss, so the tail timer takes over."""
        return self.next_block >= self.blocks or self.pending[self.next_block % self.window] is not None

    def _tail_wait(self, s: int) -> float:
        """Cycles after its timer's start before slot ``s`` is served by the tail timer, once an
        answer time was measured: the smoothed answer time + max(4 x its mean deviation, 1/4 of it)
        (RFC 6298's RTO with a floor). A suspect (probed) slot counts from its last probe or the
        last STATUS for it and is probed again (a lost probe, STATUS or result costs one such time,
        not a timeout); another slot counts from its block's last send and, while the feeder is
        starved (no later packet can reveal a loss), is sent again; otherwise never."""
        if self.srtt is None:
            return math.inf
        tail = self.srtt + max(self.rttvar << 2, self.srtt >> 2)
        if self.suspect[s] or self._starved():
            return tail
        return math.inf

    def _deadline(self, s: int) -> float:
        base = self.probe_time[s] if self.suspect[s] else self.sent_time[s]
        return min(self.timer_from[s] + self.job.timeout, base + self._tail_wait(s))

    # -- events --------------------------------------------------------------------------------
    def next_deadline(self) -> float:
        if self.done:
            return math.inf
        if self.job.mode == NetMode.RESET:
            return self.deadline
        return min((self._deadline(s) for s in range(self.window) if self.pending[s] is not None), default=math.inf)

    def on_timer(self, now: float) -> None:
        if self.done:
            return
        j = self.job
        if j.mode == NetMode.RESET:
            if now >= self.deadline:
                self.tries += 1
                if self.tries > j.retries:
                    self._fail(ErrorCode.NET_TIMEOUT)
                    return
                self.deadline = now + j.timeout
                self._send_reset()
                self.counters.retransmits += 1
            return
        for s in range(self.window):
            if self.pending[s] is None:
                continue
            if now >= self.timer_from[s] + j.timeout:          # the timeout: a try
                self.tries_of[s] += 1
                if self.tries_of[s] > j.retries:
                    self._fail(ErrorCode.NET_TIMEOUT)
                    return
                self._send_block(s, self.pending[s], now, again=True)
            elif self.suspect[s]:
                if now >= self.probe_time[s] + self._tail_wait(s):   # a probed slot: probe again
                    self._probe(s, now)
            elif now >= self.sent_time[s] + self._tail_wait(s):  # the tail timer: not a try
                self._send_block(s, self.pending[s], now, again=True, tail=True)

    def _fast_retransmit(self, now: float) -> None:
        """Slots sent FAST_RETRANSMIT_AFTER packets before one that got its result: probe them. The
        slot is then lost, most likely (suspect): it leaves the ``inflight`` count, and it is probed
        again one answer time after its last probe or STATUS (:meth:`_tail_wait`), not sooner: a
        probe answered by a result already on its way costs the switch's output bus a whole packet."""
        for s in range(self.window):
            if self.pending[s] is not None and not self.suspect[s] \
                    and self.answered - self.sent_at[s] >= FAST_RETRANSMIT_AFTER:
                self._probe(s, now, lost=True)

    def _probe(self, s: int, now: float, *, lost: bool = False) -> None:
        """A PROBE for slot ``s`` (``lost``: the first, the slot becomes suspect). It counts in the
        send order but does not date the slot's block (``sent_at``: STATUS resends are paced by
        the block's own sends)."""
        j = self.job
        if lost:
            self.suspect[s] = True
            self.busy -= 1
        self.probe_time[s] = int(now)
        self.outbox.append(Packet(Header(type=PacketType.PROBE, job=j.job, worker=self.worker,
                                         epoch=j.epoch, slot=s, round=self.round_of(s),
                                         offset=self.pending[s], members=j.members, op=j.mode)))
        self.clean[s] = False
        self.seq += 1
        self.counters.packets += 1

    def _bad(self, pkt: Packet) -> bool:
        if pkt.extra_words < 0:
            return True
        h = pkt.header
        if first_drop(self.rules, h.fields()) is not None:
            return True
        want = h.count if h.type in [int(t) for t in PAYLOAD_TYPES] else 0
        return pkt.payload_words(self.lanes) != want or pkt.extra_words != 0

    def on_packet(self, pkt: Packet, now: float) -> None:
        c = self.counters
        if self._bad(pkt):
            c.bad_packets += 1
            return
        h = pkt.header
        j = self.job
        if self.done or h.job != j.job or h.epoch != j.epoch:
            c.duplicates += 1                   # nothing running, another job or a stale epoch
            return
        if j.mode == NetMode.RESET:
            if h.type == PacketType.RESET_ACK and h.worker == self.worker:
                for key in [k for k in self.rounds if k[0] == j.job]:
                    del self.rounds[key]
                self.done = True
            else:
                c.duplicates += 1
            return
        s = h.slot
        ok = (s < self.window and self.pending[s] is not None and h.round == self.round_of(s)
              and (h.offset == self.pending[s] or h.type == PacketType.NACK))
        if not ok or h.type not in (PacketType.RESULT, PacketType.STATUS, PacketType.NACK):
            c.duplicates += 1
            return
        if h.type == PacketType.STATUS:
            c.heard = h.members
            if self.suspect[s]:
                self.probe_time[s] = int(now)        # answered: the round still waits
            if not h.members >> self.worker & 1 and self.seq - self.sent_at[s] >= FAST_RETRANSMIT_AFTER \
                    and (self.srtt is None or int(now) - self.sent_time[s] >= self.srtt):
                self._send_block(s, self.pending[s], now, again=True)   # the switch misses my block
            return
        if h.type == PacketType.NACK:
            reason = {NackReason.COLLISION: ErrorCode.NET_COLLISION, NackReason.STALE: ErrorCode.NET_STALE,
                      NackReason.MISMATCH: ErrorCode.NET_MISMATCH}.get(h.offset, ErrorCode.NET_MISMATCH)
            self._fail(reason)
            return
        words = self.geom.block_words(self.nbytes, h.offset)
        if h.count != words:
            c.duplicates += 1
            return
        lo = h.offset * self.geom.packet_words * self.lanes
        self.data[lo:lo + words * self.lanes] = pkt.payload
        c.results += 1
        if self.clean[s]:
            self.answered = max(self.answered, self.sent_at[s])
            sample = min(int(now) - self.sent_time[s], (1 << RTT_BITS) - 1)
            if self.srtt is None:
                self.srtt, self.rttvar = sample, sample >> 1
            else:
                delta = sample - self.srtt
                self.rttvar += (abs(delta) - self.rttvar) >> 2
                self.srtt += delta >> 3
        self.rounds[(j.job, s)] = (self.round_of(s) + 1) % ROUND_MODULO
        self.received += 1
        self.pending[s] = None
        if not self.suspect[s]:
            self.busy -= 1
        self.suspect[s] = False
        if self.received == self.blocks:
            self.done = True
            return
        self._fast_retransmit(now)
        self._feed(now)

    def take_outbox(self) -> list[Packet]:
        out, self.outbox = self.outbox, []
        return out


class MultimemEndpoint:
    """The memory-semantic all-reduce in the spirit of NVLS ``multimem`` (golden model only).

    Member of rank ``k`` owns blocks ``b`` with ``b % n == k``. For each owned block it asks
    the switch for a reduce-on-read (LD_REQ: the switch reads the same block from every
    member with LD_READ and returns the reduction, LD_RESULT), writes the result locally and
    stores it to every member with one multicast store (ST: the switch forwards ST_DATA and
    answers ST_DONE once every member acknowledged with ST_ACK). Meanwhile it serves the
    switch's LD_READ and ST_DATA for the other members' blocks. Member ``k`` uses slots
    ``k * w .. k * w + w - 1`` (``w = (window - 1) // n``); when its stores are done and every
    foreign block has arrived, a one-word SwitchML round on slot ``window - 1`` is the barrier
    after which nobody needs anything from it (late stores are still acknowledged).
    """

    def __init__(self, worker: int, geom: EndpointGeometry, data_width: int):
        self.worker, self.geom, self.lanes = worker, geom, data_width // 32
        self.rules = endpoint_header_rules(geom.packet_words, geom.jobs)
        self.rounds: dict[tuple[int, int], int] = {}
        self.done, self.error = True, ErrorCode.NONE
        self.outbox: list[Packet] = []
        self.counters = EndpointCounters()
        self.job = None

    def start(self, job: AllreduceJob, data: np.ndarray, now: float = 0) -> None:
        members = [i for i in range(MAX_WORKERS) if job.members >> i & 1]
        self.job, self.data = job, data.reshape(-1)
        self.n, self.rank = len(members), members.index(self.worker)
        self.per = (job.window - 1) // self.n
        if self.per < 1:
            raise ValueError(f"multimem needs window >= members + 1 ({self.n + 1}), got {job.window}")
        self.nbytes = self.data.size // self.lanes * self.geom.word_bytes
        self.blocks = self.geom.blocks(self.nbytes)
        owned = list(range(self.rank, self.blocks, self.n))
        self.queue = [owned[i::self.per] for i in range(self.per)]          # blocks per own slot
        self.slot_state: dict[int, list] = {}     # own slot index -> [block, phase "ld"/"st", deadline, tries]
        self.foreign = {b for b in range(self.blocks) if b % self.n != self.rank}
        self.got: set[int] = set()
        self.done, self.error, self.barrier = False, ErrorCode.NONE, None
        self.counters = EndpointCounters()
        self.outbox = []
        for i in range(self.per):
            self._next(i, now)
        self._check_barrier(now)

    # -- sending -------------------------------------------------------------------------------
    def _slot(self, i: int) -> int:
        return self.rank * self.per + i

    def _round(self, slot: int) -> int:
        return self.rounds.get((self.job.job, slot), 0)

    def _advance(self, slot: int) -> None:
        self.rounds[(self.job.job, slot)] = (self._round(slot) + 1) % ROUND_MODULO

    def _send(self, type_, slot, block, *, count=0, payload=None, again=False, **kw) -> None:
        j = self.job
        fields = dict(type=int(type_), job=j.job, worker=self.worker, epoch=j.epoch, slot=slot,
                      round=self._round(slot), offset=block, count=count, members=j.members, op=j.mode)
        fields.update(kw)
        self.outbox.append(Packet(Header(**fields), payload))
        self.counters.packets += 1
        if again:
            self.counters.retransmits += 1

    def _block(self, b: int) -> slice:
        lo = b * self.geom.packet_words * self.lanes
        return slice(lo, lo + self.geom.block_words(self.nbytes, b) * self.lanes)

    def _words(self, b: int) -> int:
        return self.geom.block_words(self.nbytes, b)

    def _next(self, i: int, now: float) -> None:
        if not self.queue[i]:
            self.slot_state.pop(i, None)
            return
        b = self.queue[i].pop(0)
        self.slot_state[i] = [b, "ld", now + self.job.timeout, 0]
        self._send(PacketType.LD_REQ, self._slot(i), b, count=self._words(b))

    def _fail(self, code) -> None:
        self.error, self.done, self.outbox = code, True, []

    def _sync_rounds(self) -> None:
        """Every member's request slots advanced two rounds per block (LD then ST) on their owner
        only; bring this device's count of the other owners' slots to theirs, so that every
        member agrees on every slot's round again (the next job may use any slot)."""
        for rank in range(self.n):
            if rank == self.rank:
                continue
            owned = list(range(rank, self.blocks, self.n))
            for i in range(self.per):
                slot = rank * self.per + i
                self.rounds[(self.job.job, slot)] = (self._round(slot) + 2 * len(owned[i::self.per])) % ROUND_MODULO

    def _barrier_packet(self, again=False) -> None:
        self._send(PacketType.DATA, self.job.window - 1, 0, count=1, payload=np.zeros(self.lanes, np.int32),
                   again=again)

    def _check_barrier(self, now: float) -> None:
        if self.barrier is None and not self.slot_state and self.got >= self.foreign:
            self.barrier = [now + self.job.timeout, 0]
            self._barrier_packet()

    # -- events --------------------------------------------------------------------------------
    def next_deadline(self) -> float:
        if self.done:
            return math.inf
        t = min((st[2] for st in self.slot_state.values()), default=math.inf)
        return min(t, self.barrier[0]) if self.barrier is not None else t

    def on_timer(self, now: float) -> None:
        if self.done:
            return
        j = self.job
        for i, st in list(self.slot_state.items()):
            if now >= st[2]:
                b, phase, _, tries = st
                if tries >= j.retries:
                    self._fail(ErrorCode.NET_TIMEOUT)
                    return
                self.slot_state[i] = [b, phase, now + j.timeout, tries + 1]
                if phase == "ld":
                    self._send(PacketType.LD_REQ, self._slot(i), b, count=self._words(b), again=True)
                else:
                    self._send(PacketType.ST, self._slot(i), b, count=self._words(b),
                               payload=self.data[self._block(b)].copy(), again=True)
        if self.barrier is not None and now >= self.barrier[0]:
            if self.barrier[1] >= j.retries:
                self._fail(ErrorCode.NET_TIMEOUT)
                return
            self.barrier = [now + j.timeout, self.barrier[1] + 1]
            self._barrier_packet(again=True)

    def on_packet(self, pkt: Packet, now: float) -> None:
        c = self.counters
        if pkt.extra_words or first_drop(self.rules, pkt.header.fields()) is not None:
            c.bad_packets += 1
            return
        h = pkt.header
        j = self.job
        if j is None or h.job != j.job or h.epoch != j.epoch:
            c.duplicates += 1
            return
        if h.type == PacketType.LD_READ:                # serve a member's reduce-on-read: my copy
            if not self.done and h.offset < self.blocks and h.count == self._words(h.offset):
                self._send(PacketType.LD_DATA, h.slot, h.offset, count=h.count, round=h.round, members=h.members,
                           op=h.op, payload=self.data[self._block(h.offset)].copy())
            return
        if h.type == PacketType.ST_DATA:                # a member's reduced block: store it, acknowledge
            if not self.done and h.offset in self.foreign and h.offset not in self.got \
                    and pkt.payload_words(self.lanes) == self._words(h.offset):
                self.data[self._block(h.offset)] = pkt.payload
                self.got.add(h.offset)
            self._send(PacketType.ST_ACK, h.slot, h.offset, round=h.round, members=h.members, op=h.op)
            if not self.done:
                self._check_barrier(now)
            return
        if self.done:
            c.duplicates += 1
            return
        if self.barrier is not None and h.slot == j.window - 1:
            if h.type == PacketType.RESULT and h.round == self._round(h.slot):
                self._advance(h.slot)
                self._sync_rounds()
                self.done = True
            elif h.type == PacketType.STATUS and h.round == self._round(h.slot):
                c.heard = h.members
            else:
                c.duplicates += 1
            return
        i = h.slot - self.rank * self.per
        st = self.slot_state.get(i) if 0 <= i < self.per else None
        if st is None or h.round != self._round(h.slot) or (h.offset != st[0] and h.type != PacketType.NACK):
            c.duplicates += 1
            return
        if h.type == PacketType.NACK:
            self._fail({NackReason.COLLISION: ErrorCode.NET_COLLISION, NackReason.STALE: ErrorCode.NET_STALE}
                       .get(h.offset, ErrorCode.NET_MISMATCH))
            return
        b, phase = st[0], st[1]
        if phase == "ld" and h.type == PacketType.LD_RESULT:
            self.data[self._block(b)] = pkt.payload
            c.results += 1
            self._advance(h.slot)
            self.slot_state[i] = [b, "st", now + j.timeout, 0]
            self._send(PacketType.ST, h.slot, b, count=h.count, payload=pkt.payload.copy())
        elif phase == "st" and h.type == PacketType.ST_DONE:
            self._advance(h.slot)
            self._next(i, now)
            self._check_barrier(now)
        else:
            c.duplicates += 1

    def take_outbox(self) -> list[Packet]:
        out, self.outbox = self.outbox, []
        return out


def job_of(d: dict) -> AllreduceJob:
    """The run-time fields of a validated ALLREDUCE descriptor."""
    return AllreduceJob(d["mode"], d["job"], d["worker"], d["members"], d["epoch"], d["window"], d["timeout"],
                        d["retries"], d["inflight"])


def run_allreduce_descriptor(mem, d: dict, layout, network=None) -> None:
    """Golden run of one validated ALLREDUCE descriptor on device memory ``mem`` (program.execute).

    ``network`` reduces it with the other devices (an object with ``allreduce(mem, d, layout)``,
    e.g. a :class:`GoldenFabric` handle). Without one the device is alone: no switch ever
    answers, so the job ends with NET_TIMEOUT after its retransmissions and the buffer is left
    as it was, as on hardware.
    """
    from .program import EngineFault

    if d["mode"] != NetMode.RESET:
        check = getattr(mem, "check", None)
        if check is not None:
            check(d["addr"], d["bytes"])
    if network is None:
        raise EngineFault(ErrorCode.NET_TIMEOUT, f"job {d['job']}: no switch answered after {d['retries']} "
                                                 "retransmissions (the device is not in a cluster)")
    network.allreduce(mem, d, layout)


class GoldenFabric:
    """Devices joined by an ideal switch, for :func:`hbmforge.numerics.program.execute`: the
    golden reference of programs that run on several devices at once (tensor-parallel steps).

    Each device's program runs in its own thread (:meth:`run`); an ALLREDUCE waits until every
    member of the job reached its own next one, then every member gets the reduction in place,
    which is what the cluster's switch delivers (exactly once, in any order). Members that
    disagree on the length, op or member set end with NET_MISMATCH; a member that does not come
    within ``timeout`` seconds ends the others with NET_TIMEOUT naming it.
    """

    def __init__(self, *, timeout: float = 60.0):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._cv = threading.Condition()
        self._count: dict = {}                  # (job, worker) -> all-reduces reached
        self._waiting: dict = {}                # (job, index) -> {worker: (mem, d)}
        self._result: dict = {}                 # (job, index) -> None (done) or (code, detail)

    def allreduce(self, mem, d: dict, layout) -> None:
        from .program import EngineFault

        if d["mode"] == NetMode.RESET:
            return
        job, me = d["job"], d["worker"]
        with self._cv:
            index = self._count.get((job, me), 0)
            self._count[(job, me)] = index + 1
            key = (job, index)
            here = self._waiting.setdefault(key, {})
            here[me] = (mem, d)
            members = [w for w in range(MAX_WORKERS) if d["members"] >> w & 1]
            if set(here) >= set(members):
                self._result[key] = self._reduce(here, members)
                self._cv.notify_all()
            elif not self._cv.wait_for(lambda: key in self._result, timeout=self.timeout):
                missing = sorted(set(members) - set(here))
                self._result[key] = (ErrorCode.NET_TIMEOUT, f"job {job}: worker(s) {missing} never joined "
                                                            f"all-reduce {index} within {self.timeout:g} s")
                self._cv.notify_all()
            outcome = self._result[key]
        if outcome is not None:
            raise EngineFault(*outcome)

    @staticmethod
    def _reduce(here: dict, members: list[int]):
        ds = [here[w][1] for w in members]
        first = ds[0]
        for d in ds[1:]:
            if (d["bytes"], d["mode"], d["members"]) != (first["bytes"], first["mode"], first["members"]):
                return (ErrorCode.NET_MISMATCH, f"job {first['job']}: the members disagree on the buffer "
                                                f"({[(x['worker'], x['bytes'], x['mode']) for x in ds]})")
        n = first["bytes"]
        bufs = [np.frombuffer(bytes(here[w][0].read(here[w][1]["addr"], n)), dtype="<i4") for w in members]
        out = reduce_reference(bufs, first["mode"]).astype("<i4").tobytes()
        for w in members:
            mem, d = here[w]
            mem.write(d["addr"], out)
        return None

    def run(self, programs: Sequence[tuple], layout) -> list:
        """Run ``(memory, program_addr, count)`` per device together; their ProgramResults."""
        from .program import execute

        results: list = [None] * len(programs)
        errors: list = []

        def one(i, mem, addr, count):
            try:
                results[i] = execute(mem, addr, count, layout, network=self)
            except BaseException as err:           # noqa: BLE001  (re-raised in the caller)
                errors.append(err)

        threads = [threading.Thread(target=one, args=(i, *p), daemon=True) for i, p in enumerate(programs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout * (1 + sum(p[2] for p in programs)))
            if t.is_alive():
                raise TimeoutError("a golden device program did not finish")
        if errors:
            raise errors[0]
        return results


# -- links and faults --------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkParams:
    """One direction of a link: serialization rate, latency and seeded faults (per packet).

    ``loss``: Bernoulli loss probability; or, with ``burst`` set, a Gilbert-Elliott channel:
    ``burst = (p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad)`` (one step per
    packet). ``duplicate``: probability that a packet arrives twice. ``reorder``: probability
    that a packet is held back by 1..``reorder_cycles`` cycles, so later ones overtake it.
    """

    bytes_per_cycle: float = 8.0
    latency: int = 100
    loss: float = 0.0
    burst: tuple[float, float, float, float] | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_cycles: int = 200

    def __post_init__(self):
        if not (isinstance(self.bytes_per_cycle, (int, float)) and self.bytes_per_cycle > 0):
            raise ValueError(f"bytes_per_cycle must be > 0, got {self.bytes_per_cycle!r}")
        if isinstance(self.latency, bool) or not isinstance(self.latency, int) or self.latency < 1:
            raise ValueError(f"latency must be an int >= 1 cycle, got {self.latency!r}")
        for name in ("loss", "duplicate", "reorder"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        if self.burst is not None:
            if len(self.burst) != 4 or not all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in self.burst):
                raise ValueError(f"burst must be 4 probabilities (p_gb, p_bg, loss_good, loss_bad), got {self.burst!r}")
        if isinstance(self.reorder_cycles, bool) or not isinstance(self.reorder_cycles, int) or self.reorder_cycles < 1:
            raise ValueError(f"reorder_cycles must be an int >= 1, got {self.reorder_cycles!r}")

    @property
    def mean_loss(self) -> float:
        """Long-run packet loss rate."""
        if self.burst is None:
            return self.loss
        p_gb, p_bg, lg, lb = self.burst
        if p_gb + p_bg == 0:
            return lg
        bad = p_gb / (p_gb + p_bg)
        return (1 - bad) * lg + bad * lb


class _Channel:
    """The fault process of one link direction (its own RNG: independent of event order)."""

    def __init__(self, params: LinkParams, seed: int):
        self.p = params
        self.rng = random.Random(seed)
        self.bad = False
        self.busy_until = 0.0
        self.lost = self.duplicated = self.reordered = self.sent = 0

    def fate(self) -> tuple[bool, bool, float]:
        """(lost, duplicated, extra delay) of the next packet."""
        p, rng = self.p, self.rng
        self.sent += 1
        if p.burst is not None:
            p_gb, p_bg, lg, lb = p.burst
            self.bad = (rng.random() >= p_bg) if self.bad else (rng.random() < p_gb)
            lost = rng.random() < (lb if self.bad else lg)
        else:
            lost = rng.random() < p.loss
        dup = rng.random() < p.duplicate
        delay = rng.randint(1, p.reorder_cycles) if rng.random() < p.reorder else 0
        if lost:
            self.lost += 1
        if dup and not lost:
            self.duplicated += 1
        if delay and not lost:
            self.reordered += 1
        return lost, dup, delay


# -- the network: endpoints, links and the switch with a timing model --------------------------
@dataclass
class RoundResult:
    """One all-reduce on :class:`NetworkSim`."""

    cycles: float                   # from the start to the last endpoint done
    errors: list                    # ErrorCode per worker
    results: list = field(repr=False)     # each worker's buffer after the run
    packets: int = 0                # packets the endpoints sent
    retransmits: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0

    @property
    def ok(self) -> bool:
        return all(e == ErrorCode.NONE for e in self.errors)


class NetworkSim:
    """N endpoints and the switch joined by links (one :class:`LinkParams` for every direction,
    or ``up``/``down`` lists per device); deterministic for a seed.

    Switch timing model: a packet is handed to its unit when it has fully arrived and is at
    the head of its port's queue; a unit takes ``count + 2`` cycles per packet (2 for one
    without payload), or ``count`` for a packet that was waiting when the unit finished a
    packet of 2 or more payload words (the RTL unit decides it during that packet's last read);
    output packets join the destination ports' transmit queues when the
    unit finishes, through the switch's ``out_buses`` output buses: a packet takes the bus that
    frees first and holds it ``words + 1`` cycles (multicast or not); a unit waiting for a bus is
    held, and its packets go one after the other. State persists across
    :meth:`run` calls (slot rounds, epochs, packets still in flight), as on the hardware.
    """

    UNIT_OVERHEAD = 2
    BUS_OVERHEAD = 1

    def __init__(self, devices: int, switch: SwitchGeometry, link: LinkParams | None = None, *, seed: int = 0,
                 up: Sequence[LinkParams] | None = None, down: Sequence[LinkParams] | None = None,
                 endpoint: EndpointGeometry | None = None):
        if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= switch.ports:
            raise ValueError(f"devices must be an int in [1, {switch.ports}] (the switch's ports), got {devices!r}")
        link = link or LinkParams()
        self.n = devices
        self.geom = switch
        self.switch = GoldenSwitch(switch)
        eg = endpoint or EndpointGeometry(switch.word_bytes, switch.packet_words, switch.slots, switch.jobs)
        self.endpoints = [GoldenEndpoint(i, eg, switch.data_width) for i in range(devices)]
        ups = list(up) if up is not None else [link] * devices
        downs = list(down) if down is not None else [link] * devices
        self.up = [_Channel(p, seed * 1009 + 2 * i) for i, p in enumerate(ups)]
        self.down = [_Channel(p, seed * 1009 + 2 * i + 1) for i, p in enumerate(downs)]
        self.now = 0.0
        self._events: list = []
        self._seq = 0
        self._rx: list[deque] = [deque() for _ in range(switch.ports)]
        self._unit_free = [0.0] * switch.units
        self._unit_words = [0] * switch.units      # payload words of each unit's last packet
        self._bus_free = [0.0] * switch.out_buses
        self._rr = 0

    # -- events ------------------------------------------------------------------------------
    def _push(self, t: float, kind: str, *args) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, args))

    def _transmit(self, ch: _Channel, pkt: Packet, t: float, kind: str, dest: int) -> None:
        """Serialize ``pkt`` on ``ch`` from ``t``; schedule its arrival (or lose it)."""
        dur = pkt.nbytes(self.geom.data_width) / ch.p.bytes_per_cycle
        start = max(t, ch.busy_until)
        ch.busy_until = start + dur
        lost, dup, delay = ch.fate()
        if lost:
            return
        arrive = start + dur + ch.p.latency + delay
        self._push(arrive, kind, dest, pkt)
        if dup:
            self._push(arrive + dur, kind, dest, pkt.copy())

    def _flush(self, i: int) -> None:
        for pkt in self.endpoints[i].take_outbox():
            self._transmit(self.up[i], pkt, self.now, "to_switch", i)

    def _serve_units(self) -> None:
        """Start every unit that is free on the oldest packet of some port that targets it."""
        g = self.geom
        progress = True
        while progress:
            progress = False
            for k in range(g.ports):
                port = (self._rr + k) % g.ports
                q = self._rx[port]
                if not q:
                    continue
                pkt = q[0]
                h = pkt.header
                unit = 0 if h.type == PacketType.RESET or h.slot >= g.slots else g.unit_of(h.slot)
                if self._unit_free[unit] > self.now:
                    continue
                q.popleft()
                words = pkt.payload_words(g.lanes)
                back_to_back = self._unit_words[unit] >= 2 and self._unit_free[unit] == self.now
                done_at = self.now + words + (0 if back_to_back and words else self.UNIT_OVERHEAD)
                self._unit_free[unit] = done_at
                self._unit_words[unit] = words
                self._push(done_at, "unit_done", port, pkt, unit, self.now)
                self._rr = (port + 1) % g.ports
                progress = True

    def _handle(self, kind: str, args) -> None:
        if kind == "to_switch":
            port, pkt = args
            self._rx[port].append(pkt)
        elif kind == "unit_done":
            port, pkt, unit, started = args
            ready = started
            for d in self.switch.receive(port, pkt):
                # the output buses: a packet (multicast or not) takes the one that frees first and
                # holds it for its words + 1 cycles, streamed while the unit reads; a unit sends
                # its packets one after the other and waiting for a bus holds it
                bus = min(range(len(self._bus_free)), key=self._bus_free.__getitem__)
                out = max(ready, self._bus_free[bus])
                ready = self._bus_free[bus] = out + d.packet.payload_words(self.geom.lanes) + self.BUS_OVERHEAD
                self._unit_free[unit] = max(self._unit_free[unit], ready)
                for p in d.ports:
                    if p < self.n:
                        self._transmit(self.down[p], d.packet, max(self.now, out), "to_device", p)
        elif kind == "to_device":
            dev, pkt = args
            ep = self.endpoints[dev]
            ep.on_packet(pkt, self.now)
            self._flush(dev)
            self._arm(dev)
        elif kind == "timer":
            dev, when = args
            ep = self.endpoints[dev]
            if ep.next_deadline() <= self.now:
                ep.on_timer(self.now)
                self._flush(dev)
            self._arm(dev)
        self._serve_units()

    def _arm(self, dev: int) -> None:
        t = self.endpoints[dev].next_deadline()
        if t < math.inf:
            self._push(t, "timer", dev, t)

    # -- runs --------------------------------------------------------------------------------
    def run(self, buffers: Sequence[np.ndarray | None], jobs: Sequence[AllreduceJob | None], *,
            max_cycles: float = 1e9) -> RoundResult:
        """Start ``jobs[i]`` on endpoint ``i`` (None: that device does not take part) and run until
        every started endpoint is done (or ``max_cycles``). Buffers are reduced in place."""
        start = self.now
        active = [i for i, j in enumerate(jobs) if j is not None]
        before = [(c.lost, c.duplicated, c.reordered) for c in self.up + self.down]
        for i in active:
            self.endpoints[i].start(jobs[i], buffers[i], self.now)
            self._flush(i)
            self._arm(i)
        self._serve_units()
        end = start
        while self._events and not all(self.endpoints[i].done for i in active):
            t, _, kind, args = heapq.heappop(self._events)
            if t - start > max_cycles:
                heapq.heappush(self._events, (t, 0, kind, args))
                break
            self.now = max(self.now, t)
            self._handle(kind, args)
            end = self.now
        after = [(c.lost, c.duplicated, c.reordered) for c in self.up + self.down]
        diff = [sum(a[k] - b[k] for a, b in zip(after, before)) for k in range(3)]
        eps = [self.endpoints[i] for i in active]
        errors = [ErrorCode.NONE] * self.n
        for i in active:
            ep = self.endpoints[i]
            errors[i] = ep.error if ep.done else ErrorCode.NET_TIMEOUT
        return RoundResult(cycles=end - start, errors=errors,
                           results=[None if buffers[i] is None else buffers[i] for i in range(self.n)],
                           packets=sum(e.counters.packets for e in eps),
                           retransmits=sum(e.counters.retransmits for e in eps),
                           lost=diff[0], duplicated=diff[1], reordered=diff[2])

    def drain(self, cycles: float) -> None:
        """Let packets in flight arrive (and be dropped or answered) for ``cycles`` more cycles."""
        stop = self.now + cycles
        while self._events and self._events[0][0] <= stop:
            t, _, kind, args = heapq.heappop(self._events)
            self.now = max(self.now, t)
            self._handle(kind, args)
        self.now = max(self.now, stop)

    def use_multimem(self, on: bool = True) -> None:
        """Switch every device between the SwitchML-style endpoint and :class:`MultimemEndpoint`."""
        cls = MultimemEndpoint if on else GoldenEndpoint
        old = self.endpoints
        self.endpoints = [cls(i, e.geom, self.geom.data_width) for i, e in enumerate(old)]
        for new, e in zip(self.endpoints, old):
            new.rounds = e.rounds                  # slot rounds are per device, whatever the mode

    def allreduce(self, buffers: Sequence[np.ndarray], *, mode: int = NetMode.SUM, job: int = 0, epoch: int = 0,
                  window: int | None = None, timeout: int = 2000, retries: int = 20,
                  members: int | None = None, inflight: int | None = None) -> RoundResult:
        """All-reduce one int32 buffer per device (in place) with every device a member."""
        if len(buffers) != self.n:
            raise ValueError(f"give one buffer per device ({self.n}), got {len(buffers)}")
        members = (1 << self.n) - 1 if members is None else members
        window = self.geom.slots if window is None else window
        jobs = [AllreduceJob(mode, job, i, members, epoch, window, timeout, retries, inflight)
                if members >> i & 1 else None for i in range(self.n)]
        return self.run(buffers, jobs)


# -- the ring, over the same links ---------------------------------------------------------------
@dataclass
class RingResult:
    cycles: float
    results: list
    packets: int


def ring_allreduce(buffers: Sequence[np.ndarray], switch: SwitchGeometry, link: LinkParams | None = None,
                   *, op: int = NetMode.SUM) -> RingResult:
    """Ring all-reduce (reduce-scatter then all-gather, 2 (N - 1) steps) of int32 buffers over the
    switch's links, packets of ``packet_words`` words: each hop is device ``i`` -> switch (store
    and forward) -> device ``i + 1``; a device forwards a packet of step ``k + 1`` as soon as the
    matching packet of step ``k`` arrived (pipelined, as NCCL chunks it). No loss (the ring has no
    loss recovery here). The result is the same bits as the switch's: sums modulo 2**32."""
    link = link or LinkParams()
    n = len(buffers)
    if n < 2:
        raise ValueError("a ring needs at least 2 devices")
    lanes = switch.lanes
    data = [np.ascontiguousarray(b, dtype=np.int32).reshape(-1).copy() for b in buffers]
    total = data[0].size
    words = total // lanes
    chunk_words = ceil_div(words, n)
    bounds = [(min(i * chunk_words, words) * lanes, min((i + 1) * chunk_words, words) * lanes) for i in range(n)]
    pw = switch.packet_words * lanes
    hdr_bytes = switch.header_beats * switch.word_bytes
    up = [0.0] * n                  # link busy-until per device uplink
    down = [0.0] * n
    ready = {}                      # (device, step, packet) -> time the packet is at the device
    packets = 0
    steps = 2 * (n - 1)
    # per step, device i sends chunk (i - step) mod n (reduce-scatter), then (i + 1 - step) mod n (gather)
    for step in range(steps):
        for i in range(n):
            c = (i - step) % n if step < n - 1 else (i + 1 - (step - (n - 1))) % n
            lo, hi = bounds[c]
            dst = (i + 1) % n
            for p, off in enumerate(range(lo, hi, pw)):
                seg = slice(off, min(off + pw, hi))
                nbytes = hdr_bytes + (seg.stop - seg.start) * 4
                dur = nbytes / link.bytes_per_cycle
                t0 = ready.get((i, step, p), 0.0)
                s = max(t0, up[i])
                up[i] = s + dur
                at_switch = s + dur + link.latency
                s2 = max(at_switch, down[dst])
                down[dst] = s2 + dur
                arrive = s2 + dur + link.latency
                ready[(dst, step + 1, p)] = arrive
                packets += 1
        # data movement of the step (all devices at once)
        new = [d.copy() for d in data]
        for i in range(n):
            c = (i - step) % n if step < n - 1 else (i + 1 - (step - (n - 1))) % n
            lo, hi = bounds[c]
            dst = (i + 1) % n
            if step < n - 1:
                new[dst][lo:hi] = combine(op, data[dst][lo:hi], data[i][lo:hi])
            else:
                new[dst][lo:hi] = data[i][lo:hi]
        data = new
    end = max(ready.values()) if ready else 0.0
    return RingResult(cycles=end, results=data, packets=packets)


# -- floats through a per-block exponent chosen by the hosts ------------------------------------
def block_exponents(x: np.ndarray, block: int) -> np.ndarray:
    """Per block of ``block`` floats, the exponent ``e`` with ``max|x| < 2**e`` (int32; -126 for an
    all-zero block): what each host contributes to a MAX all-reduce."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    nb = ceil_div(x.size, block)
    pad = np.zeros(nb * block, dtype=np.float32)
    pad[:x.size] = np.abs(x)
    peak = pad.reshape(nb, block).max(axis=1)
    with np.errstate(divide="ignore"):
        _, e = np.frexp(peak)
    e = np.where(peak > 0, e, -126)
    return e.astype(np.int32)


def float_allreduce_reference(arrays: Sequence[np.ndarray], block: int) -> np.ndarray:
    """The float32 all-reduce the hosts get: per block the largest exponent ``e`` over the
    devices (a MAX all-reduce), each device's floats rounded to int32 with ``2**(30 - e - b)``,
    ``b = ceil(log2 N)`` (so the sum of N cannot overflow), an integer SUM all-reduce, and one
    scaling back. Exact up to the one rounding per element per device; the same bits on every
    device and for every arrival order."""
    n = len(arrays)
    xs = [np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays]
    e = np.max(np.stack([block_exponents(x, block) for x in xs]), axis=0)
    head = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    shift = (30 - head - e).astype(np.int64)
    scale = np.repeat(np.ldexp(1.0, shift), block)[:xs[0].size]
    q = [np.rint(x.astype(np.float64) * scale).astype(np.int64).astype(np.int32) for x in xs]
    total = reduce_reference(q, NetMode.SUM).astype(np.float64)
    return (total / scale).astype(np.float32)
