"""The in-switch reduction family: the ALLREDUCE descriptor, the packet format and the switch geometry.

Everything the endpoint RTL (``hbmforge.generators.network``), the aggregation switch RTL,
the golden models (:mod:`hbmforge.numerics.network`), the co-simulation's network model and
the host agree on is stated here once; docs/engines/network.md is the prose version.

Descriptor (u64 slots after ``op`` = ``Opcode.ALLREDUCE``), :data:`NETWORK_FIELDS`:

=========  ============================================================================
mode       ``NetMode``: SUM (int32 lanes, modulo 2**32), MAX (signed int32), RESET (job)
job        job id, ``< jobs``: the slot rounds of each job are kept apart
worker     this device's worker id (its switch port), ``< MAX_WORKERS``
members    bitmap of the job's workers (bit ``worker`` set)
epoch      the job's epoch (0..255): data packets carry it; RESET sets it on the switch
addr       buffer (data port); the result replaces it in place
bytes      buffer length: whole port words; cut into blocks of ``packet_words`` words
window     switch slots the job uses, ``1 .. config window``; with ``w = min(window, blocks)``
           slot ``s`` carries blocks ``s, s + w, s + 2 w, ...``
inflight   blocks in flight at most, ``1 .. window`` (about the bandwidth-delay product: more
           only fills queues); blocks are sent in order, block ``b`` once slot ``b % w`` is free
timeout    cycles without an answer before a packet is sent again (``1 .. 2**24 - 1``)
retries    retransmissions of one packet before the run stops with NET_TIMEOUT (1..255)
=========  ============================================================================

Packet (AXI4-Stream words of the port width; ``tlast`` on the last word): a 128-bit header
(:class:`Header`, the low 128 bits of the first ``header_beats`` words, little-endian),
then ``count`` payload words. Each payload word is ``width / 32`` int32 lanes. A worker
counts the rounds of each slot (``round``, modulo 256): round ``r`` uses the slot's copy
``r % 2`` (the shadow copy keeps the previous round's result for late retransmissions).
"""
from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields, replace
from functools import cached_property

from amaranth.lib import enum

from ..encodings import ErrorCode, NetMode, Opcode
from ..mathutil import ceil_div, exact_log2
from .base import Channels, Check, EngineFamily, FamilyRegister, StreamPort

__all__ = [
    "NETWORK_FIELDS", "HEADER_BITS", "HEADER_FIELDS", "ROUND_MODULO", "HEADER_CHECK_SEED", "MAX_WORKERS", "MAX_OUT_BUSES", "MAX_TIMEOUT",
    "MAX_RETRIES", "FAST_RETRANSMIT_AFTER", "RTT_BITS", "SWITCH_COUNTERS", "PacketType", "NackReason",
    "DropReason", "Header", "header_check",
    "TO_SWITCH", "FROM_SWITCH", "PAYLOAD_TYPES", "REQUEST_TYPES", "SwitchGeometry", "EndpointGeometry",
    "switch_header_rules", "endpoint_header_rules", "first_drop", "NetworkFamily", "network_checks",
    "max_allreduce_bytes",
]

NETWORK_FIELDS = ("mode", "job", "worker", "members", "epoch", "addr", "bytes", "window", "inflight", "timeout",
                  "retries")

HEADER_BITS = 128
#: workers a job may have: the width of the header's ``members`` bitmap
MAX_WORKERS = 16
#: output buses the switch may have (units to transmit ports; ``SwitchGeometry.out_buses``)
MAX_OUT_BUSES = 4
MAX_TIMEOUT = (1 << 24) - 1
#: fast recovery: a slot is probed (PROBE, header only), without waiting for its timer, once a slot
#: sent this many packets after it has got its result (its packet, another member's or its result
#: was most likely lost; the network may reorder by a few packets, so not 1). The switch answers
#: with the stored result, or a STATUS to the prober and to the members it misses, who then send
#: their block again at once. Probes do not count in ``retries``.
FAST_RETRANSMIT_AFTER = 8
#: answer times are measured up to 2^RTT_BITS - 1 cycles (the timeout's range)
RTT_BITS = 24
MAX_RETRIES = 255
#: the check of an all-zero header is not zero, so an idle or cleared word never passes
HEADER_CHECK_SEED = 0xA5C3

#: name -> (lsb, width) in the 128-bit header (bit 0 = bit 0 of the first word)
HEADER_FIELDS = {
    "type": (0, 4),
    "op": (4, 2),
    "reserved": (6, 2),
    "job": (8, 4),
    "worker": (12, 4),
    "round": (16, 8),
    "epoch": (24, 8),
    "slot": (32, 16),
    "count": (48, 16),
    "offset": (64, 32),
    "members": (96, 16),
    "check": (112, 16),
}
#: rounds are counted modulo this; a packet delayed by more than half of it (rounds of its slot) aliases
ROUND_MODULO = 1 << HEADER_FIELDS["round"][1]


class PacketType(enum.IntEnum, shape=4):
    """Header ``type``. Workers send the first group, the switch the second."""

    DATA = 1         # worker -> switch: a block's contribution (payload)
    RESULT = 2       # switch -> members: the reduced block (payload); unicast to a late retransmitter
    STATUS = 3       # switch -> worker: its block is stored, the slot waits; ``members`` = workers heard
    NACK = 4         # switch -> worker: refused; ``offset`` = NackReason, ``members`` = the holder's
    RESET = 5        # worker -> switch: give the job epoch ``epoch``, forget its slots
    RESET_ACK = 6    # switch -> worker
    LD_REQ = 7       # worker -> switch: reduce-on-read of block ``offset`` on every member
    LD_READ = 8      # switch -> members: send your block ``offset`` (``worker`` = the requester)
    LD_DATA = 9      # member -> switch: that block (payload), a contribution to the request's slot
    LD_RESULT = 10   # switch -> requester: the reduced block (payload)
    ST = 11          # worker -> switch: multicast store of block ``offset`` (payload)
    ST_DATA = 12     # switch -> members: store this block (payload; ``worker`` = the storer)
    ST_ACK = 13      # member -> switch: stored
    ST_DONE = 14     # switch -> storer: every member stored it
    PROBE = 15       # worker -> switch: where is this slot's round? (a header-only fast retransmit)


TO_SWITCH = (PacketType.DATA, PacketType.RESET, PacketType.LD_REQ, PacketType.LD_DATA, PacketType.ST,
             PacketType.ST_ACK, PacketType.PROBE)
FROM_SWITCH = (PacketType.RESULT, PacketType.STATUS, PacketType.NACK, PacketType.RESET_ACK, PacketType.LD_READ,
               PacketType.LD_RESULT, PacketType.ST_DATA, PacketType.ST_DONE)
#: types that carry ``count >= 1`` payload words
PAYLOAD_TYPES = (PacketType.DATA, PacketType.RESULT, PacketType.LD_DATA, PacketType.LD_RESULT, PacketType.ST,
                 PacketType.ST_DATA)
#: types that ask for ``count >= 1`` words but carry none (every other type has ``count == 0``)
REQUEST_TYPES = (PacketType.LD_REQ, PacketType.LD_READ)


class NackReason(enum.IntEnum, shape=4):
    """NACK ``offset``: why the switch refused a packet."""

    COLLISION = 1    # the unit holds the job for another member set or op
    STALE = 2        # the packet's epoch is not the job's (a RESET happened, or is needed)
    MISMATCH = 3     # the slot holds another offset or count: the members disagree on the buffer


class DropReason(enum.IntEnum, shape=4):
    """Why a receiver dropped a packet without looking further (counted, never reduced)."""

    BAD_CHECK = 1    # the header check does not match
    BAD_TYPE = 2     # not a type this receiver takes
    BAD_WORKER = 3   # switch: ``worker`` is not the arrival port
    BAD_JOB = 4      # ``job`` out of range
    BAD_SLOT = 5     # ``slot`` out of range
    BAD_COUNT = 6    # ``count`` above ``packet_words``, 0 for a payload or request type, or not 0 for another
    BAD_MEMBERS = 7  # ``members`` empty, beyond the ports, or without the sender
    BAD_FIELD = 8    # reserved bit set, or ``op`` not SUM/MAX
    BAD_LENGTH = 9   # the words up to ``tlast`` are not ``header_beats + count``


def header_check(value: int) -> int:
    """The ``check`` of a 128-bit header: XOR of its seven other 16-bit lanes and the seed."""
    acc = HEADER_CHECK_SEED
    for i in range(7):
        acc ^= (value >> (16 * i)) & 0xFFFF
    return acc


@dataclass(frozen=True)
class Header:
    """One packet header; :meth:`to_int` fills ``check`` unless told to keep a given one."""

    type: int
    job: int = 0
    worker: int = 0
    epoch: int = 0
    slot: int = 0
    round: int = 0
    count: int = 0
    offset: int = 0
    members: int = 0
    op: int = 0
    reserved: int = 0
    check: int | None = None

    def to_int(self, *, keep_check: bool = False) -> int:
        value = 0
        for name, (lsb, width) in HEADER_FIELDS.items():
            if name == "check":
                continue
            field = int(getattr(self, name))
            if not 0 <= field < 1 << width:
                raise ValueError(f"header field {name} = {field} does not fit {width} bits")
            value |= field << lsb
        check = self.check if keep_check and self.check is not None else header_check(value)
        return value | (int(check) & 0xFFFF) << HEADER_FIELDS["check"][0]

    @classmethod
    def from_int(cls, value: int) -> "Header":
        vals = {name: (value >> lsb) & ((1 << width) - 1) for name, (lsb, width) in HEADER_FIELDS.items()}
        return cls(**vals)

    @property
    def check_ok(self) -> bool:
        return self.check is not None and header_check(self.to_int(keep_check=True)) == self.check

    def fields(self, **extra) -> dict:
        """The header as the ``fields`` mapping of the header rules (plus ``extra``)."""
        out = {f.name: int(getattr(self, f.name)) for f in dc_fields(self) if f.name != "check"}
        out["calc"] = header_check(self.to_int(keep_check=True))
        out["check"] = out["calc"] if self.check is None else int(self.check)
        out.update(extra)
        return out

    def words(self, data_width: int) -> list[int]:
        """The header as ``ceil(128 / data_width)`` stream words (low bits first)."""
        value = self.to_int(keep_check=self.check is not None)
        beats = ceil_div(HEADER_BITS, data_width)
        mask = (1 << data_width) - 1
        return [(value >> (data_width * i)) & mask for i in range(beats)]

    def with_(self, **changes) -> "Header":
        return replace(self, **changes)


def _rules(port_mask: int, geometry_limits: dict, accepted: tuple, *, check_worker: bool):
    """Header rules shared by the switch and the endpoint; first failing one wins."""
    foreign = 0xFFFF & ~port_mask              # member bits beyond the ports
    limit_jobs = geometry_limits["jobs"]
    limit_slots = geometry_limits["slots"]
    words = geometry_limits["packet_words"]
    counted = [int(t) for t in PAYLOAD_TYPES + REQUEST_TYPES if t in accepted]

    def has_count(f, ops):
        return ops.one_of(f["type"], counted) if counted else 0

    def bad_count(f, ops):
        return ops.any_(f["count"] > words, has_count(f, ops) & (f["count"] == 0),
                        ops.not_(has_count(f, ops)) & (f["count"] != 0))

    rules = [
        (DropReason.BAD_CHECK, lambda f, ops: f["check"] != f["calc"]),
        (DropReason.BAD_TYPE, lambda f, ops: ops.not_(ops.one_of(f["type"], accepted))),
        (DropReason.BAD_FIELD, lambda f, ops: ops.any_(f["reserved"] != 0, f["op"] > int(NetMode.MAX))),
    ]
    if check_worker:
        rules.append((DropReason.BAD_WORKER, lambda f, ops: f["worker"] != f["port"]))
    rules += [
        (DropReason.BAD_JOB, lambda f, ops: f["job"] >= limit_jobs),
        (DropReason.BAD_SLOT, lambda f, ops: f["slot"] >= limit_slots),
        (DropReason.BAD_COUNT, bad_count),
    ]
    if check_worker:
        rules.append((DropReason.BAD_MEMBERS,
                      lambda f, ops: ops.any_(f["members"] == 0, (f["members"] & foreign) != 0,
                                              ((f["members"] >> ops.low(f["worker"], 4)) & 1) == 0)))
    return tuple(rules)


def first_drop(rules, fields) -> DropReason | None:
    """The reason of the first failing rule on integer ``fields``, or None."""
    from .base import IntOps

    for reason, fails in rules:
        if fails(fields, IntOps):
            return reason
    return None


# -- the switch ----------------------------------------------------------------------------
#: the switch-wide counters (hbmforge.numerics.network.SwitchCounters has the same names)
SWITCH_COUNTERS = ("reduced", "completed", "resent", "status", "nacks", "duplicates")


@dataclass(frozen=True)
class SwitchGeometry:
    """The aggregation switch's parameters (a named geometry, as the engines use).

    * ``ports``: devices it joins (2..16, the ``members`` bitmap width bounds it);
    * ``data_width``: stream word bits (64..1024, a power of two; the endpoints' port width);
    * ``packet_words``: payload words a packet may carry (the endpoints' ``packet_words`` or more);
    * ``slots``: aggregation slots per job (each with two copies, for even and odd rounds);
    * ``jobs``: concurrent job ids;
    * ``units``: aggregation units (slot ``s`` is reduced by unit ``s % units``; each unit
      takes one payload word per cycle, so ``units > ports`` keeps up with every port at line rate);
    * ``rx_packets``/``tx_packets``: whole packets each port buffers on the way in / out (per
      output bus);
    * ``out_buses``: output buses from the units to the transmit ports. Each carries one packet at
      a time at one word per cycle, the links' rate: with one, every resent RESULT (a unicast)
      holds every port's output for a packet time, and at 1% loss on 8 devices (about 1,160 bus
      packets for 1,024 blocks) the bus, not the links, set the pace. Two buses give the units
      twice the links' rate into the ports (each port keeps a FIFO per bus and sends packets in
      the order they were granted).
    """

    ports: int
    data_width: int = 64
    packet_words: int = 32
    slots: int = 16
    jobs: int = 4
    units: int | None = None
    rx_packets: int = 4
    tx_packets: int = 4
    out_buses: int = 2

    def __post_init__(self):
        def whole(name, lo, hi, pow2=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"switch {name} must be an int in [{lo}, {hi}], got {v!r}")
            if pow2 and v & (v - 1):
                raise ValueError(f"switch {name} must be a power of two, got {v}")

        whole("ports", 2, MAX_WORKERS)
        whole("data_width", 64, 1024, pow2=True)
        whole("packet_words", 1, 256, pow2=True)
        whole("slots", 1, 1 << 16, pow2=True)
        whole("jobs", 1, 1 << HEADER_FIELDS["job"][1], pow2=True)
        whole("rx_packets", 2, 64, pow2=True)
        whole("tx_packets", 2, 64, pow2=True)
        whole("out_buses", 1, MAX_OUT_BUSES)
        if self.units is None:
            object.__setattr__(self, "units", min(self.slots, 1 << (2 * self.ports - 1).bit_length()))
        whole("units", 1, self.slots, pow2=True)

    @property
    def header_beats(self) -> int:
        return ceil_div(HEADER_BITS, self.data_width)

    @property
    def lanes(self) -> int:
        """int32 lanes per stream word."""
        return self.data_width // 32

    @property
    def word_bytes(self) -> int:
        return self.data_width // 8

    @property
    def port_mask(self) -> int:
        return (1 << self.ports) - 1

    @property
    def slots_per_unit(self) -> int:
        return self.slots // self.units

    def unit_of(self, slot: int) -> int:
        return slot % self.units

    @property
    def pool_bits(self) -> int:
        """Aggregation memory: every slot of every job, two copies, ``packet_words`` words each."""
        return self.jobs * self.slots * 2 * self.packet_words * self.data_width

    @property
    def counter_names(self) -> tuple[str, ...]:
        """The switch's ``stat_*`` outputs: per port (received, dropped, sent), then switch-wide."""
        return tuple(f"stat_{c}_p{p}" for p in range(self.ports) for c in ("rx", "drop", "tx")) + \
            tuple(f"stat_{c}" for c in SWITCH_COUNTERS)

    def to_json(self) -> dict:
        return {"ports": self.ports, "data_width": self.data_width, "packet_words": self.packet_words,
                "slots": self.slots, "jobs": self.jobs, "units": self.units, "rx_packets": self.rx_packets,
                "tx_packets": self.tx_packets, "out_buses": self.out_buses, "header_beats": self.header_beats}

    @classmethod
    def for_endpoint(cls, layout, ports: int, **overrides) -> "SwitchGeometry":
        """The switch that joins ``ports`` devices of ``layout`` (a design with a network engine)."""
        eng = layout.config.engine("network")
        if eng is None:
            raise ValueError(f"design {layout.kernel!r} has no network engine (add `kind: network` to its engines)")
        args = dict(ports=ports, data_width=layout.config.data_width, packet_words=eng.packet_words,
                    slots=eng.window, jobs=eng.jobs)
        args.update(overrides)
        return cls(**args)


def switch_header_rules(geom: SwitchGeometry):
    """What the switch checks on every packet it receives (fields: the header's, ``calc`` the
    computed check and ``port`` the arrival port); a failing packet is dropped and counted."""
    return _rules(geom.port_mask, {"jobs": geom.jobs, "slots": geom.slots, "packet_words": geom.packet_words},
                  TO_SWITCH, check_worker=True)


def endpoint_header_rules(packet_words: int, jobs: int):
    """What the endpoint checks on every packet from the switch (slot and job ranges are checked
    against the job it runs, later)."""
    return _rules(0xFFFF, {"jobs": jobs, "slots": 1 << 16, "packet_words": packet_words},
                  FROM_SWITCH, check_worker=False)


# -- the endpoint --------------------------------------------------------------------------
def max_allreduce_bytes(word_bytes: int) -> int:
    """One ALLREDUCE moves at most ``2**32 - 1`` bytes (whole words)."""
    return ((1 << 32) - 1) // word_bytes * word_bytes


@dataclass(frozen=True)
class EndpointGeometry:
    """Byte counts of one endpoint: blocks of ``packet_words`` port words."""

    word_bytes: int
    packet_words: int
    window: int
    jobs: int

    @classmethod
    def of(cls, layout) -> "EndpointGeometry":
        eng = layout.config.engine("network")
        if eng is None:
            raise ValueError(f"design {layout.kernel!r} has no network engine")
        return cls(layout.word_bytes, eng.packet_words, eng.window, eng.jobs)

    @property
    def packet_bytes(self) -> int:
        return self.word_bytes * self.packet_words

    @property
    def header_beats(self) -> int:
        return ceil_div(HEADER_BITS, 8 * self.word_bytes)

    def blocks(self, nbytes: int) -> int:
        return ceil_div(nbytes, self.packet_bytes)

    def block_words(self, nbytes: int, block: int) -> int:
        """Payload words of block ``block`` of an ``nbytes`` buffer (the last one may be short)."""
        words = nbytes // self.word_bytes
        return min(self.packet_words, words - block * self.packet_words)


# -- the family ----------------------------------------------------------------------------
def network_checks(layout) -> tuple[Check, ...]:
    """ALLREDUCE rules in hardware order: mode, job/epoch, worker/members, length, window,
    timeout/retries, alignment."""
    geom = EndpointGeometry.of(layout)
    word = layout.word_bytes
    top = max_allreduce_bytes(word)

    def reduces(f):
        return f["mode"] != NetMode.RESET

    def why_worker(f):
        if f["worker"] >= MAX_WORKERS:
            return f"worker {f['worker']}, must be < {MAX_WORKERS}"
        if f["members"] == 0 or f["members"] >> MAX_WORKERS:
            return f"members {f['members']:#x}, must be a non-empty bitmap of {MAX_WORKERS} bits"
        return f"members {f['members']:#x} does not include worker {f['worker']}"

    return (
        Check(ErrorCode.BAD_NET_MODE, lambda f, ops: ops.not_(ops.one_of(f["mode"], list(NetMode))),
              lambda f: f"mode {f['mode']}, allowed {[f'{m.name}={int(m)}' for m in NetMode]}"),
        Check(ErrorCode.BAD_NET_JOB, lambda f, ops: ops.any_(f["job"] >= geom.jobs, f["epoch"] > 255),
              lambda f: (f"job {f['job']}, the engine keeps jobs 0..{geom.jobs - 1}" if f["job"] >= geom.jobs
                         else f"epoch {f['epoch']}, must be 0..255")),
        Check(ErrorCode.BAD_NET_WORKER,
              lambda f, ops: ops.any_(f["worker"] >= MAX_WORKERS, f["members"] == 0,
                                      f["members"] >= 1 << MAX_WORKERS,
                                      ((f["members"] >> ops.low(f["worker"], 4)) & 1) == 0),
              why_worker),
        Check(ErrorCode.BAD_NET_LENGTH,
              lambda f, ops: reduces(f) & ops.any_(f["bytes"] == 0, f["bytes"] > top,
                                                   ops.misaligned(f["bytes"], word)),
              lambda f: f"bytes {f['bytes']}, must be a multiple of {word} in [{word}, {top}]"),
        Check(ErrorCode.BAD_NET_WINDOW,
              lambda f, ops: reduces(f) & ops.any_(f["window"] == 0, f["window"] > geom.window,
                                                   f["inflight"] == 0, f["inflight"] > f["window"]),
              lambda f: (f"window {f['window']}, must be in [1, {geom.window}]"
                         if not 1 <= f["window"] <= geom.window
                         else f"inflight {f['inflight']}, must be in [1, window = {f['window']}]")),
        Check(ErrorCode.BAD_NET_TIMEOUT,
              lambda f, ops: ops.any_(f["timeout"] == 0, f["timeout"] > MAX_TIMEOUT,
                                      f["retries"] == 0, f["retries"] > MAX_RETRIES),
              lambda f: (f"timeout {f['timeout']}, must be in [1, {MAX_TIMEOUT}] cycles"
                         if not 1 <= f["timeout"] <= MAX_TIMEOUT
                         else f"retries {f['retries']}, must be in [1, {MAX_RETRIES}]")),
        Check(ErrorCode.MISALIGNED, lambda f, ops: reduces(f) & ops.misaligned(f["addr"], word),
              lambda f: f"addr {f['addr']:#x} not a multiple of {word}"),
    )


#: the endpoint's counters (cleared when a run starts)
NETWORK_REGISTERS = (
    FamilyRegister("NET_PACKETS", 32, "packets the endpoint sent (data, requests, resets; retransmissions included)"),
    FamilyRegister("NET_RETRANSMITS", 32, "packets sent again after a timeout"),
    FamilyRegister("NET_RESULTS", 32, "reduced blocks received and written (each block once)"),
    FamilyRegister("NET_DUPLICATES", 32, "packets from the switch for blocks already done, other slots or "
                                         "rounds (dropped)"),
    FamilyRegister("NET_BAD_PACKETS", 32, "packets dropped for a bad header, length, job or epoch"),
    FamilyRegister("NET_HEARD", 32, "workers the switch had heard for the block that waited longest "
                                    "(its last STATUS; 0 if none came)"),
)


class NetworkFamily(EngineFamily):
    kind = "network"
    opcodes = (Opcode.ALLREDUCE,)
    errors = (ErrorCode.BAD_NET_MODE, ErrorCode.BAD_NET_JOB, ErrorCode.BAD_NET_WORKER, ErrorCode.BAD_NET_LENGTH,
              ErrorCode.BAD_NET_WINDOW, ErrorCode.BAD_NET_TIMEOUT, ErrorCode.MISALIGNED, ErrorCode.NET_TIMEOUT,
              ErrorCode.NET_COLLISION, ErrorCode.NET_STALE, ErrorCode.NET_MISMATCH)
    runtime_errors = (ErrorCode.NET_TIMEOUT, ErrorCode.NET_COLLISION, ErrorCode.NET_STALE, ErrorCode.NET_MISMATCH)

    def fields(self, layout, opcode):
        return NETWORK_FIELDS

    def checks(self, layout, opcode):
        return network_checks(layout)

    def channels(self, layout):
        w = layout.config.data_width
        return Channels(data_readers=("src",), data_writer=True,
                        streams=(StreamPort("net", "in", w), StreamPort("net", "out", w)))

    def registers(self, layout):
        return NETWORK_REGISTERS

    def manifest(self, layout):
        eng = layout.config.engine("network")
        geom = EndpointGeometry.of(layout)
        return {"packet_words": eng.packet_words, "packet_bytes": geom.packet_bytes, "window": eng.window,
                "jobs": eng.jobs, "read_ahead": eng.read_ahead, "header_bits": HEADER_BITS,
                "header_beats": geom.header_beats, "max_workers": MAX_WORKERS,
                "modes": {m.name: int(m) for m in NetMode}, "max_bytes": max_allreduce_bytes(layout.word_bytes)}
