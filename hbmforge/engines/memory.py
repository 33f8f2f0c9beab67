"""The memory family: a tile cache in front of host/DDR memory and an oblivious map (BOLT-style).

One engine (config ``kind: memory``, :class:`hbmforge.config.MemoryEngine`) runs two opcodes.
Everything its RTL, its golden models (:mod:`hbmforge.numerics.memory`,
:mod:`hbmforge.numerics.omap`) and the host (:mod:`hbmforge.host.memory`, ``host.omap``) agree
on is stated here; docs/engines/memory.md is the prose version.

CACHE descriptor (u64 slots after ``op`` = ``Opcode.CACHE``), :data:`CACHE_FIELDS`:

==========  =======================================================================
action      ``CacheAction``: CONFIGURE, PREFETCH, FLUSH, INVALIDATE, STATS
addr        CONFIGURE: base of the cacheable window; PREFETCH/FLUSH/INVALIDATE: first byte
            (line-aligned); STATS: where the counters and tags go (data port)
bytes       CONFIGURE: window size; PREFETCH/FLUSH/INVALIDATE: range size (whole lines)
store_addr  CONFIGURE: base of the HBM store (``ways * sets * line_bytes`` bytes, 4 KiB-aligned)
==========  =======================================================================

OMAP descriptor, :data:`OMAP_FIELDS`:

==========  =======================================================================
action      ``OmapAction``: QUERY, BULK, FORMAT
ctrl_addr   the map's control block in HBM (:class:`ControlBlock`; data port)
src_addr    QUERY/BULK: ``count`` query records (data port)
dst_addr    QUERY/BULK: ``count`` result records (data port)
count       QUERY/BULK: records, 1 .. ``omap.max_records``
==========  =======================================================================
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from ..encodings import CacheAction, ErrorCode, OmapAction, OmapOp, OmapStatus, Opcode
from ..mathutil import ceil_div, exact_log2, round_up
from .base import Channels, Check, EngineFamily, FamilyRegister

__all__ = [
    "CACHE_FIELDS", "OMAP_FIELDS", "CacheGeometry", "OmapGeometry", "ControlBlock", "CB_BYTES",
    "CACHE_COUNTERS", "TAG_BITS", "WINDOW_BITS", "STASH_BIT", "NODE_FREE", "NODE_LIVE", "NODE_DEAD",
    "OMAP_MAGIC", "MAX_BINS_LOG2", "MAX_DIR_LOG2", "MAX_NODES", "KEY_BYTES",
    "MemoryFamily", "cache_checks", "omap_checks", "cache_geometry", "omap_geometry", "OmapPlan", "plan_omap",
    "SlotTiming", "omap_slot_timing",
]

CACHE_FIELDS = ("action", "addr", "bytes", "store_addr")
OMAP_FIELDS = ("action", "ctrl_addr", "src_addr", "dst_addr", "count")

#: the cacheable window is at most 2**40 bytes (tags hold the line's offset in it)
WINDOW_BITS = 40
#: the counters the cache keeps since CONFIGURE, in STATS order (u64 each)
CACHE_COUNTERS = ("hits", "misses", "evictions", "writebacks", "prefetches", "bypasses",
                  "backing_bytes_read", "backing_bytes_written", "store_bytes_read", "store_bytes_written")
#: a STATS tag word: bits 0..39 tag (line offset in the window >> line bits), 40 valid, 41 dirty,
#: 44..47 LRU age, 48..55 access frequency
TAG_BITS = {"tag": (0, 40), "valid": (40, 1), "dirty": (41, 1), "age": (44, 4), "freq": (48, 8)}


@dataclass(frozen=True)
class CacheGeometry:
    """Sizes and address arithmetic of one config's tile cache (``word_bytes`` = port word)."""

    word_bytes: int
    line_bytes: int
    ways: int
    sets: int
    replacement: str
    write_policy: str
    mshrs: int

    @property
    def line_bits(self) -> int:
        return exact_log2(self.line_bytes, "line_bytes")

    @property
    def set_bits(self) -> int:
        return exact_log2(self.sets, "sets")

    @property
    def way_bits(self) -> int:
        return exact_log2(self.ways, "ways")

    @property
    def line_words(self) -> int:
        return self.line_bytes // self.word_bytes

    @property
    def lines(self) -> int:
        return self.ways * self.sets

    @property
    def store_bytes(self) -> int:
        return self.lines * self.line_bytes

    @property
    def tag_bits(self) -> int:
        return WINDOW_BITS - self.line_bits - self.set_bits

    def split(self, offset: int) -> tuple[int, int, int]:
        """``(tag, set, byte in line)`` of an offset into the window."""
        line = offset >> self.line_bits
        return line >> self.set_bits, line & (self.sets - 1), offset & (self.line_bytes - 1)

    def store_slot(self, set_index: int, way: int) -> int:
        """Byte offset of a line's copy in the HBM store."""
        return (set_index * self.ways + way) * self.line_bytes

    @property
    def stats_bytes(self) -> int:
        """Bytes STATS writes: 16 u64 counter slots, then one u64 tag word per line (set-major)."""
        return round_up(8 * (16 + self.lines), self.word_bytes)


def cache_geometry(layout) -> CacheGeometry | None:
    eng = layout.config.engine("memory")
    if eng is None or eng.cache is None:
        return None
    c = eng.cache
    return CacheGeometry(layout.word_bytes, c.line_bytes, c.ways, c.sets, c.replacement, c.write_policy, c.mshrs)


# -- the oblivious map -----------------------------------------------------------------------
OMAP_MAGIC = 0x50414D4F          # "OMAP"
KEY_BYTES = 16                   # keys are zero-padded to 16 bytes on the device
STASH_BIT = 1 << 31              # a directory location with this bit is a stash node, else a bin
NODE_FREE, NODE_LIVE, NODE_DEAD = 0, 1, 2
MAX_BINS_LOG2 = 30
MAX_DIR_LOG2 = 28
MAX_NODES = (1 << 31) - 1
CB_BYTES = 256


@dataclass(frozen=True)
class OmapGeometry:
    """Record sizes of one config's oblivious map (all in HBM or host memory, little-endian).

    * slot (a bin entry, a stash node's entry, a query or result record), ``slot_bytes``:
      ``ref`` u32 (the entry's directory way) | ``flags`` u32 (bit 0 valid) | key[16] | value;
      a query record holds ``op`` (``OmapOp``) where a slot has ``ref``, a result record the
      ``OmapStatus``.
    * host bin: ``bin_slots`` encrypted slots and the 16-byte Poly1305 tag, ``bin_bytes``
      (whole words) at ``bins_base + bin * bin_stride``.
    * directory way, ``unit`` bytes: key[16] | loc u32 | flags u32 (bit 0 valid) | label u32
      (the entry's bin: where it is, or where its stash node waits to go; a query of the key
      reads this bin); ``dir_ways`` ways per bucket; entry ``ref = bucket * dir_ways + way``.
    * stash node: a slot then a link record of ``unit`` bytes: next u32 (node + 1, 0: none) |
      label u32 (its bin) | state u32 (free, live, dead).
    * bin meta: 8 bytes per bin, head u32 (the first stash node labelled with it, + 1) |
      version u32 (how often the bin was written: the nonce counter).
    """

    word_bytes: int
    bin_slots: int
    value_bytes: int
    dir_ways: int
    max_records: int

    @property
    def unit(self) -> int:
        return max(self.word_bytes, 32)

    @property
    def slot_bytes(self) -> int:
        return round_up(8 + KEY_BYTES + self.value_bytes, self.unit)

    @property
    def plain_bytes(self) -> int:
        return self.bin_slots * self.slot_bytes

    @property
    def bin_bytes(self) -> int:
        return round_up(self.plain_bytes + 16, self.word_bytes)

    @property
    def bin_stride(self) -> int:
        return 1 << (self.bin_bytes - 1).bit_length()

    @property
    def way_bytes(self) -> int:
        return self.unit

    @property
    def bucket_bytes(self) -> int:
        return self.dir_ways * self.unit

    @property
    def node_bytes(self) -> int:
        return self.slot_bytes + self.unit

    @property
    def record_bytes(self) -> int:
        """A query or result record."""
        return self.slot_bytes

    def meta_word(self, bin_index: int) -> tuple[int, int]:
        """(byte offset of the word holding a bin's meta, byte offset of the meta in it)."""
        off = 8 * bin_index
        return off - off % self.word_bytes, off % self.word_bytes

    def nonce(self, bin_index: int, version: int, epoch: int) -> bytes:
        """The 96-bit ChaCha20-Poly1305 nonce of a bin write: bin | version | epoch (u32 LE each)."""
        return struct.pack("<III", bin_index, version & 0xFFFF_FFFF, epoch & 0xFFFF_FFFF)

    # -- records -------------------------------------------------------------------------
    def pack_slot(self, ref: int, valid: bool, key: bytes, value: bytes) -> bytes:
        out = bytearray(self.slot_bytes)
        struct.pack_into("<II", out, 0, ref, 1 if valid else 0)
        out[8:8 + KEY_BYTES] = key.ljust(KEY_BYTES, b"\0")
        out[24:24 + self.value_bytes] = value.ljust(self.value_bytes, b"\0")
        return bytes(out)

    def unpack_slot(self, raw: bytes) -> tuple[int, bool, bytes, bytes]:
        ref, flags = struct.unpack_from("<II", raw, 0)
        return ref, bool(flags & 1), bytes(raw[8:24]), bytes(raw[24:24 + self.value_bytes])

    def pack_way(self, key: bytes, loc: int, valid: bool, label: int) -> bytes:
        out = bytearray(self.unit)
        out[:KEY_BYTES] = key.ljust(KEY_BYTES, b"\0")
        struct.pack_into("<III", out, 16, loc, 1 if valid else 0, label)
        return bytes(out)

    def unpack_way(self, raw: bytes) -> tuple[bytes, int, bool, int]:
        loc, flags, label = struct.unpack_from("<III", raw, 16)
        return bytes(raw[:16]), loc, bool(flags & 1), label

    def pack_link(self, next_node: int, label: int, state: int) -> bytes:
        out = bytearray(self.unit)
        struct.pack_into("<III", out, 0, next_node, label, state)
        return bytes(out)

    def unpack_link(self, raw: bytes) -> tuple[int, int, int]:
        return struct.unpack_from("<III", raw, 0)


@dataclass(frozen=True)
class OmapPlan:
    """The sizes of one map of ``capacity`` entries (what ``ObliviousMap`` allocates).

    * ``bins = 2**bins_log2``: the least power of two >= capacity / 2, so a full map holds two
      entries per bin on average (about one in its host bin and one in transit in the stash);
    * ``buckets = 2**dir_log2``: a full directory fills a quarter of its ways (two-choice
      hashing keeps the fullest bucket near ``ways / 4 + log2 log N``);
    * ``nodes``: the stash pool, ``capacity + bins + 1024``: a bulk load parks every entry in
      the stash before the format sweep, and the pool can always hold every live entry. Under
      uniform queries about 35% of the entries wait in the stash for their bin (a bin is read
      about once per ``bins`` queries, an entry is queried once per ``capacity``); a dead node
      is freed when its label's bin is read, which the next query of its key does: ~0.35
      ``capacity`` nodes in use (measured by :class:`hbmforge.numerics.omap_scale.OmapScaleModel`;
      docs/engines/memory.md).
    """

    capacity: int
    bins_log2: int
    dir_log2: int
    nodes: int
    geometry: OmapGeometry

    @property
    def bins(self) -> int:
        return 1 << self.bins_log2

    @property
    def buckets(self) -> int:
        return 1 << self.dir_log2

    @property
    def host_bytes(self) -> int:
        return self.bins * self.geometry.bin_stride

    @property
    def dir_bytes(self) -> int:
        return self.buckets * self.geometry.bucket_bytes

    @property
    def meta_bytes(self) -> int:
        return round_up(8 * self.bins, self.geometry.word_bytes)

    @property
    def node_region_bytes(self) -> int:
        return self.nodes * self.geometry.node_bytes

    @property
    def hbm_bytes(self) -> int:
        """Trusted state in HBM: control block, directory, bin meta, stash nodes."""
        return CB_BYTES + self.dir_bytes + self.meta_bytes + self.node_region_bytes


def plan_omap(geometry: OmapGeometry, capacity: int) -> OmapPlan:
    bins_log2 = max(1, (max(capacity, 2) // 2 - 1).bit_length())
    bins_log2 = max(bins_log2, (-(-capacity // 2) - 1).bit_length())
    ways = geometry.dir_ways
    dir_log2 = max(0, (-(-4 * capacity // ways) - 1).bit_length())
    if bins_log2 > MAX_BINS_LOG2 or dir_log2 > MAX_DIR_LOG2:
        raise ValueError(f"capacity {capacity} needs 2**{bins_log2} bins and 2**{dir_log2} directory buckets; "
                         f"the engine runs at most 2**{MAX_BINS_LOG2} and 2**{MAX_DIR_LOG2}")
    nodes = capacity + (1 << bins_log2) + 1024
    if nodes > MAX_NODES:
        raise ValueError(f"capacity {capacity} needs {nodes} stash nodes; the engine runs at most {MAX_NODES}")
    return OmapPlan(capacity, bins_log2, dir_log2, nodes, geometry)


@dataclass(frozen=True)
class SlotTiming:
    """Cycle offsets of one constant-time query slot: the bin read is issued at ``t_read``, the
    bin write at ``t_write``, the next query starts at ``t_slot`` (all from the slot's start)."""

    t_read: int
    t_write: int
    t_slot: int


def omap_slot_timing(geometry: OmapGeometry, *, hbm_read: int, hbm_write: int, host_read: int,
                     host_write: int, margin: float = 1.25, hbm_bytes_per_cycle: float | None = None,
                     host_bytes_per_cycle: float | None = None, burst_beats: int = 1 << 16,
                     hbm_outstanding: int = 1 << 16, host_outstanding: int = 1 << 16) -> SlotTiming:
    """Slot offsets that cover the most work a query can do, with ``margin``.

    A query makes at most ``13 + 3 Z`` HBM operations one after another (record, two buckets,
    meta; node read and dead mark; per evicted node a read, a directory write and a link write;
    the meta write; the push: link read, meta read, node write, meta write, directory write;
    the result), each costing its latency plus its words plus a few cycles of handshakes; two
    AEAD passes (ChaCha20 82 cycles per four 64-byte blocks, Poly1305 10 per 16 and 5 a
    message); slot scans of ``Z`` slots. The engine counts the slots whose work ran past an offset (control block
    ``overruns``); with these offsets none does on the co-simulation (tests check it).

    A memory slower than one word per cycle (``*_bytes_per_cycle``) stretches each operation's
    words; an operation longer than ``burst_beats`` is several bursts, and with fewer than that
    many in flight (``*_outstanding``: the port's or the kernel's limit, whichever is lower)
    their latencies add up. The defaults are a port at full rate with bursts in flight at once.
    """
    g = geometry
    wb = g.word_bytes
    hs = 13                                              # handshakes and state changes per operation (one: the address add)
    for name, v in (("burst_beats", burst_beats), ("hbm_outstanding", hbm_outstanding),
                    ("host_outstanding", host_outstanding)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    rate = {}
    for name, v in (("hbm", hbm_bytes_per_cycle), ("host", host_bytes_per_cycle)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ValueError(f"{name}_bytes_per_cycle must be a positive number or None, got {v!r}")
        rate[name] = wb if v is None else min(float(wb), float(v))
    outstanding = {"hbm": hbm_outstanding, "host": host_outstanding}

    def op(latency, nbytes, memory="hbm"):
        turns = ceil_div(ceil_div(ceil_div(nbytes, wb), burst_beats), outstanding[memory])
        return latency * turns + math.ceil(nbytes / rate[memory]) + hs

    # ChaCha20: CHACHA_CYCLES = 82 a block, CHACHA_IN_FLIGHT = 4 blocks at once (a request every
    # other cycle; a pass asks for all its blocks at once, the PRF and the hash both at once);
    # Poly1305: POLY_BLOCK_CYCLES = 9 a block (+ 1 handshake), POLY_TAG_CYCLES = 5 a message
    # (generators/memory/chacha.py, poly1305.py)
    chacha_batch = 82 + 2 * 4 + 2
    aead = (chacha_batch * -(-(1 + -(-g.plain_bytes // 64)) // 4) + 10 * (g.plain_bytes // 16 + 1) + 5
            + 2 * (g.bin_bytes // wb) + 16)
    scan = 2 * g.bin_slots + 2 * (g.slot_bytes // wb)
    pre = op(hbm_read, g.record_bytes) + chacha_batch + 2 * op(hbm_read, g.bucket_bytes) + 2 * g.dir_ways \
        + op(hbm_read, wb) + 8
    work = (pre + op(host_read, g.bin_bytes, "host") + 2 * (g.bin_bytes // wb) + aead + scan
            + op(hbm_read, g.node_bytes) + op(hbm_write, g.unit)
            + g.bin_slots * (op(hbm_read, g.node_bytes) + scan + 2 * op(hbm_write, g.unit))
            + op(hbm_write, wb) + op(hbm_read, g.unit) + op(hbm_read, wb) + op(hbm_write, g.node_bytes)
            + 2 * op(hbm_write, wb) + op(hbm_write, g.unit) + aead)
    t_read = int(pre * margin)
    t_write = int(work * margin)
    t_slot = int(t_write + op(host_write, g.bin_bytes, "host") + 2 * (g.bin_bytes // wb)
                 + op(hbm_write, g.record_bytes) + 16)
    return SlotTiming(t_read, t_write, t_slot)


def omap_geometry(layout) -> OmapGeometry | None:
    eng = layout.config.engine("memory")
    if eng is None or eng.omap is None:
        return None
    o = eng.omap
    return OmapGeometry(layout.word_bytes, o.bin_slots, o.value_bytes, o.dir_ways, o.max_records)


@dataclass
class ControlBlock:
    """The map's control block in HBM (:data:`CB_BYTES` bytes, little-endian): read by the engine
    at the start of every OMAP job and written back at its end (also when a job stops on an error).

    The keys (ChaCha20-Poly1305 for bins, and two ChaCha20 PRF keys: bin labels, directory hash)
    are written by the client that creates the map. ``t_read``/``t_write``/``t_slot`` are the
    cycle offsets of each query slot (docs/engines/memory.md, "constant-time slots").
    """

    epoch: int = 0
    bins_log2: int = 0
    k_enc: bytes = bytes(32)
    k_prf: bytes = bytes(32)
    k_hash: bytes = bytes(32)
    bins_base: int = 0
    dir_base: int = 0
    meta_base: int = 0
    nodes_base: int = 0
    dir_log2: int = 0
    node_count: int = 0
    capacity: int = 0
    count: int = 0
    free_head: int = 0
    query_counter: int = 0
    t_read: int = 0
    t_write: int = 0
    t_slot: int = 0
    queries: int = 0
    dir_full: int = 0
    map_full: int = 0
    nodes_used: int = 0
    nodes_peak: int = 0
    overruns: int = 0
    max_work: int = 0
    stash_full: int = 0
    tampered: int = 0

    #: (field, offset, struct format); keys are 32 bytes
    FIELDS = (("epoch", 8, "I"), ("bins_log2", 12, "I"), ("bins_base", 112, "Q"), ("dir_base", 120, "Q"),
              ("meta_base", 128, "Q"), ("nodes_base", 136, "Q"), ("dir_log2", 144, "I"),
              ("node_count", 148, "I"), ("capacity", 152, "I"), ("count", 156, "I"), ("free_head", 160, "I"),
              ("query_counter", 168, "Q"), ("t_read", 176, "I"), ("t_write", 180, "I"), ("t_slot", 184, "I"),
              ("queries", 192, "Q"), ("dir_full", 200, "I"), ("map_full", 204, "I"), ("nodes_used", 208, "I"),
              ("nodes_peak", 212, "I"), ("overruns", 216, "I"), ("max_work", 220, "I"),
              ("stash_full", 224, "I"), ("tampered", 228, "I"))
    KEYS = (("k_enc", 16), ("k_prf", 48), ("k_hash", 80))
    #: fields that depend on the RTL's cycle timing, not on the golden model's semantics
    TIMING_FIELDS = ("overruns", "max_work")

    def pack(self) -> bytes:
        out = bytearray(CB_BYTES)
        struct.pack_into("<II", out, 0, OMAP_MAGIC, 1)
        for name, off, fmt in self.FIELDS:
            struct.pack_into("<" + fmt, out, off, getattr(self, name))
        for name, off in self.KEYS:
            out[off:off + 32] = getattr(self, name)
        return bytes(out)

    @classmethod
    def unpack(cls, raw: bytes) -> "ControlBlock":
        cb = cls()
        for name, off, fmt in cls.FIELDS:
            setattr(cb, name, struct.unpack_from("<" + fmt, raw, off)[0])
        for name, off in cls.KEYS:
            setattr(cb, name, bytes(raw[off:off + 32]))
        return cb

    @staticmethod
    def magic_of(raw: bytes) -> tuple[int, int]:
        return struct.unpack_from("<II", raw, 0)


# -- checks --------------------------------------------------------------------------------
def cache_checks(layout) -> tuple[Check, ...]:
    """CACHE rules in hardware order: action, range (line alignment, sizes), word alignment."""
    geom = cache_geometry(layout)
    word = layout.word_bytes
    actions = list(CacheAction) if geom is not None else []
    line = geom.line_bytes if geom is not None else word
    ranged = (CacheAction.PREFETCH, CacheAction.FLUSH, CacheAction.INVALIDATE)

    def is_(f, *acts):
        return f["action"] == acts[0] if len(acts) == 1 else _any_eq(f["action"], acts)

    def why_action(f):
        if geom is None:
            return f"{layout.kernel} has no tile cache (add `cache:` to its memory engine)"
        return f"action {f['action']}, allowed {[f'{a.name}={int(a)}' for a in CacheAction]}"

    def bad_range(f, ops):
        window = is_(f, CacheAction.CONFIGURE) & ops.any_(
            f["bytes"] == 0, f["bytes"] > (1 << WINDOW_BITS), ops.misaligned(f["addr"], line),
            ops.misaligned(f["bytes"], line), ops.misaligned(f["store_addr"], 4096))
        ranged_bad = _any_eq(f["action"], ranged) & ops.any_(
            f["bytes"] == 0, ops.misaligned(f["addr"], line), ops.misaligned(f["bytes"], line),
            is_(f, CacheAction.PREFETCH) & (f["bytes"] > (1 << 32) - line), f["bytes"] > (1 << WINDOW_BITS))
        return ops.any_(window, ranged_bad)

    def why_range(f):
        if f["action"] == CacheAction.CONFIGURE:
            return (f"window [{f['addr']:#x}, +{f['bytes']}) must be whole {line}-byte lines, at most "
                    f"2**{WINDOW_BITS} bytes, and store_addr {f['store_addr']:#x} 4096-aligned")
        top = "4 GiB" if f["action"] == CacheAction.PREFETCH else f"2**{WINDOW_BITS} bytes"
        return f"range [{f['addr']:#x}, +{f['bytes']}) must be whole {line}-byte lines, non-empty, below {top}"

    return (
        Check(ErrorCode.BAD_CACHE_ACTION, lambda f, ops: ops.not_(ops.one_of(f["action"], actions)), why_action),
        Check(ErrorCode.BAD_CACHE_RANGE, bad_range, why_range),
        Check(ErrorCode.MISALIGNED, lambda f, ops: is_(f, CacheAction.STATS) & ops.misaligned(f["addr"], word),
              lambda f: f"addr {f['addr']:#x} not a multiple of {word}"),
    )


def _any_eq(value, choices):
    out = None
    for c in choices:
        term = value == int(c)
        out = term if out is None else out | term
    return out


def omap_checks(layout) -> tuple[Check, ...]:
    """OMAP rules in hardware order: action, record count, word alignment."""
    geom = omap_geometry(layout)
    word = layout.word_bytes
    actions = list(OmapAction) if geom is not None else []
    top = geom.max_records if geom is not None else 1
    batch = (OmapAction.QUERY, OmapAction.BULK)

    def why_action(f):
        if geom is None:
            return f"{layout.kernel} has no oblivious map (add `omap:` to its memory engine)"
        return f"action {f['action']}, allowed {[f'{a.name}={int(a)}' for a in OmapAction]}"

    def why_align(f):
        names = ["ctrl_addr"] + (["src_addr", "dst_addr"] if f["action"] in batch else [])
        bad = next(a for a in names if f[a] % word)
        return f"{bad} {f[bad]:#x} not a multiple of {word}"

    return (
        Check(ErrorCode.BAD_OMAP_ACTION, lambda f, ops: ops.not_(ops.one_of(f["action"], actions)), why_action),
        Check(ErrorCode.BAD_OMAP_COUNT,
              lambda f, ops: _any_eq(f["action"], batch) & ops.any_(f["count"] == 0, f["count"] > top),
              lambda f: f"count {f['count']}, must be in [1, {top}]"),
        Check(ErrorCode.MISALIGNED,
              lambda f, ops: ops.any_(ops.misaligned(f["ctrl_addr"], word),
                                      _any_eq(f["action"], batch) & ops.any_(ops.misaligned(f["src_addr"], word),
                                                                             ops.misaligned(f["dst_addr"], word))),
              why_align),
    )


class MemoryFamily(EngineFamily):
    kind = "memory"
    opcodes = (Opcode.CACHE, Opcode.OMAP)
    errors = (ErrorCode.BAD_CACHE_ACTION, ErrorCode.BAD_CACHE_RANGE, ErrorCode.BAD_OMAP_ACTION,
              ErrorCode.BAD_OMAP_COUNT, ErrorCode.MISALIGNED, ErrorCode.OMAP_TAMPERED, ErrorCode.OMAP_STASH_FULL,
              ErrorCode.OMAP_CORRUPT, ErrorCode.OMAP_BAD_STATE)
    runtime_errors = (ErrorCode.OMAP_TAMPERED, ErrorCode.OMAP_STASH_FULL, ErrorCode.OMAP_CORRUPT,
                      ErrorCode.OMAP_BAD_STATE)

    def fields(self, layout, opcode):
        return CACHE_FIELDS if opcode == Opcode.CACHE else OMAP_FIELDS

    def checks(self, layout, opcode):
        return cache_checks(layout) if opcode == Opcode.CACHE else omap_checks(layout)

    def channels(self, layout):
        cfg = layout.config
        eng = cfg.engine("memory")
        n = cfg.stream_ports
        if eng.cache is None:
            return Channels(data_readers=("src",), data_writer=True, stream_readers=eng.port + 1,
                            stream_writers=eng.port + 1)
        store = eng.exclusive_ports(cfg)[0]
        return Channels(data_readers=("src",), data_writer=True, stream_readers=n, stream_writers=n,
                        resident=(eng.port, store), interposes=(eng.port,))

    def registers(self, layout):
        if cache_geometry(layout) is None:
            return ()
        return tuple(FamilyRegister(f"CACHE_{c.upper()}", 64, f"tile cache {c.replace('_', ' ')} in the last run")
                     for c in CACHE_COUNTERS)

    def manifest(self, layout):
        eng = layout.config.engine("memory")
        out = {"port": eng.port, "backing": eng.backing, "actions": {"cache": {a.name: int(a) for a in CacheAction},
                                                                   "omap": {a.name: int(a) for a in OmapAction}}}
        cg, og = cache_geometry(layout), omap_geometry(layout)
        if cg is not None:
            out["cache"] = {"line_bytes": cg.line_bytes, "ways": cg.ways, "sets": cg.sets,
                            "replacement": cg.replacement, "write_policy": cg.write_policy, "mshrs": cg.mshrs,
                            "store_port": layout.config.engine("memory").exclusive_ports(layout.config)[0],
                            "store_bytes": cg.store_bytes, "stats_bytes": cg.stats_bytes,
                            "counters": list(CACHE_COUNTERS)}
        if og is not None:
            out["omap"] = {"bin_slots": og.bin_slots, "value_bytes": og.value_bytes, "dir_ways": og.dir_ways,
                           "slot_bytes": og.slot_bytes, "bin_bytes": og.bin_bytes, "bin_stride": og.bin_stride,
                           "node_bytes": og.node_bytes, "record_bytes": og.record_bytes,
                           "control_bytes": CB_BYTES, "max_records": og.max_records,
                           "ops": {o.name: int(o) for o in OmapOp}, "status": {s.name: int(s) for s in OmapStatus}}
        return out
