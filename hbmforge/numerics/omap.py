"""Golden model of the oblivious map (hbmforge.engines.memory, OMAP): memory in, memory out.

The map keeps ``N`` entries in ``B`` bins of ``Z`` slots in host memory, each bin sealed with
ChaCha20-Poly1305 (RFC 8439) under a nonce of bin, version and epoch; the trusted state lives
in HBM: the control block, a directory (key -> entry location: a bin, or a stash node), the
bin versions and the stash, a pool of nodes linked into one list per bin label.

One query, always the same host traffic (docs/engines/memory.md, "oblivious map"):

1. draw two labels from the PRF (ChaCha20 under ``k_prf`` of the query counter): a dummy bin
   ``r`` and the entry's next bin ``b'``; hash the key (ChaCha20 under ``k_hash``) to its
   directory bucket and look it up;
2. read one bin from host memory: the entry's label (the directory keeps it: the bin the entry
   is in, or the bin its stash node waits for), or ``r`` for a key not in the map; check its
   tag (a mismatch stops the job: OMAP_TAMPERED, nothing returned, nothing written);
3. take the entry out (of the bin, or of its stash node, which dies), apply GET/PUT/DELETE;
4. evict: up to ``Z`` nodes of the bin's stash list move into the bin's free slots (dead
   nodes are freed on the way);
5. the entry, if it still exists, goes to a fresh stash node labelled ``b'``;
6. write the bin back, sealed under its next version.

Every label is fresh and uniform and read once (whether or not its entry has left the stash
by then), so the sequence of bins read is i.i.d. uniform and independent of the queries (reading
a fresh dummy for an entry still in the stash would not be: whether it left the stash depends on
which bins were read since, so the bins read would correlate with the trace so far); every query reads and writes one bin of the same size at the same
cycle offsets. The functions here perform the same memory operations in the same order as
the RTL, so memory, results and control block agree bit for bit (the RTL's timing statistics
aside: :attr:`ControlBlock.TIMING_FIELDS`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..encodings import ErrorCode, OmapAction, OmapOp, OmapStatus
from ..engines.memory import (CB_BYTES, KEY_BYTES, MAX_BINS_LOG2, MAX_DIR_LOG2, MAX_NODES, NODE_DEAD, NODE_FREE,
                              NODE_LIVE, OMAP_MAGIC, STASH_BIT, ControlBlock, OmapGeometry)

__all__ = ["chacha20_block", "prf_words", "seal", "open_sealed", "OmapFault", "HostOp", "OmapRun",
           "run_omap", "check_control_block"]


# -- primitives (the RTL's ChaCha20 core computes the same blocks) ------------------------------
def chacha20_block(key: bytes, counter_nonce: bytes) -> bytes:
    """One 64-byte ChaCha20 block (RFC 8439): state words 12..15 = ``counter_nonce`` (16 bytes LE)."""
    enc = Cipher(algorithms.ChaCha20(key, counter_nonce), mode=None).encryptor()
    return enc.update(bytes(64))


def prf_words(key: bytes, counter_nonce: bytes) -> tuple[int, ...]:
    """The 16 little-endian u32 words of one PRF block."""
    return struct.unpack("<16I", chacha20_block(key, counter_nonce))


def label_input(query_counter: int) -> bytes:
    return struct.pack("<QQ", query_counter & ((1 << 64) - 1), 0)


def seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 ciphertext || tag, no associated data."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)


def open_sealed(key: bytes, nonce: bytes, sealed: bytes) -> bytes | None:
    """The plaintext, or None if the tag does not match (tampered or replayed)."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed, None)
    except InvalidTag:
        return None


class OmapFault(Exception):
    """A job ended with a run-time error of the map (the engine's ``fault`` code)."""

    def __init__(self, code: ErrorCode, detail: str, done: int):
        super().__init__(detail)
        self.code, self.detail, self.done = code, detail, done


@dataclass(frozen=True)
class HostOp:
    """One host-memory transaction of the device: read or write of ``bytes`` at ``addr``."""

    write: bool
    addr: int
    bytes: int
    bin: int


@dataclass
class OmapRun:
    """What one OMAP job did: host traffic in order, and the records it completed."""

    host: list = field(default_factory=list)
    done: int = 0
    statuses: list = field(default_factory=list)
    bytes_written: int = 0              # every byte the job wrote, host and HBM

    @property
    def host_bytes_read(self) -> int:
        return sum(op.bytes for op in self.host if not op.write)

    @property
    def host_bytes_written(self) -> int:
        return sum(op.bytes for op in self.host if op.write)


class _Counting:
    """Memory whose writes are counted (the port byte counters of the golden program)."""

    def __init__(self, mem, run: OmapRun):
        self.mem, self.run = mem, run

    def read(self, addr: int, n: int) -> bytes:
        return self.mem.read(addr, n)

    def write(self, addr: int, data) -> None:
        self.run.bytes_written += len(data)
        self.mem.write(addr, data)


def check_control_block(raw: bytes, geom: OmapGeometry) -> str:
    """Why a control block is not one the engine runs ("" if it is)."""
    magic, version = ControlBlock.magic_of(raw)
    cb = ControlBlock.unpack(raw)
    if magic != OMAP_MAGIC or version != 1:
        return f"magic {magic:#x} / version {version}, expected {OMAP_MAGIC:#x} / 1"
    if not 1 <= cb.bins_log2 <= MAX_BINS_LOG2:
        return f"bins_log2 {cb.bins_log2} outside [1, {MAX_BINS_LOG2}]"
    if not 0 <= cb.dir_log2 <= MAX_DIR_LOG2:
        return f"dir_log2 {cb.dir_log2} outside [0, {MAX_DIR_LOG2}]"
    if not 1 <= cb.node_count <= MAX_NODES or cb.free_head > cb.node_count:
        return f"node_count {cb.node_count} / free_head {cb.free_head} out of range"
    for name in ("bins_base", "dir_base", "meta_base", "nodes_base"):
        if getattr(cb, name) % geom.word_bytes:
            return f"{name} {getattr(cb, name):#x} not word-aligned"
    if cb.bins_base % geom.bin_stride:
        return f"bins_base {cb.bins_base:#x} not a multiple of the bin stride {geom.bin_stride}"
    return ""


class _Map:
    """The map's state as memory operations: the same reads and writes the RTL makes."""

    def __init__(self, mem, ctrl: int, geom: OmapGeometry, cb: ControlBlock):
        self.mem, self.ctrl, self.g, self.cb = mem, ctrl, geom, cb
        self.bins = 1 << cb.bins_log2
        self.buckets = 1 << cb.dir_log2

    # -- addresses -----------------------------------------------------------------------
    def way_addr(self, ref: int) -> int:
        return self.cb.dir_base + ref * self.g.way_bytes

    def node_addr(self, node: int) -> int:
        return self.cb.nodes_base + node * self.g.node_bytes

    def bin_addr(self, b: int) -> int:
        return self.cb.bins_base + b * self.g.bin_stride

    # -- meta (head, version) ------------------------------------------------------------
    def read_meta(self, b: int) -> tuple[int, int]:
        word, off = self.g.meta_word(b)
        raw = self.mem.read(self.cb.meta_base + word, self.g.word_bytes)
        return struct.unpack_from("<II", raw, off)

    def write_meta(self, b: int, head: int, version: int) -> None:
        word, off = self.g.meta_word(b)
        raw = bytearray(self.mem.read(self.cb.meta_base + word, self.g.word_bytes))
        struct.pack_into("<II", raw, off, head, version & 0xFFFF_FFFF)
        self.mem.write(self.cb.meta_base + word, bytes(raw))

    # -- nodes ---------------------------------------------------------------------------
    def read_node(self, node: int) -> tuple[bytes, tuple[int, int, int]]:
        raw = self.mem.read(self.node_addr(node), self.g.node_bytes)
        return raw[:self.g.slot_bytes], self.g.unpack_link(raw[self.g.slot_bytes:])

    def write_link(self, node: int, next_node: int, label: int, state: int) -> None:
        self.mem.write(self.node_addr(node) + self.g.slot_bytes, self.g.pack_link(next_node, label, state))

    def free_node(self, node: int) -> None:
        self.write_link(node, self.cb.free_head, 0, NODE_FREE)
        self.cb.free_head = node + 1
        self.cb.nodes_used -= 1

    def push(self, slot: bytes, label: int) -> int:
        """A fresh node holding ``slot``, at the head of ``label``'s list; its index."""
        node = self.cb.free_head - 1
        _, (nxt, _, _) = self.read_node(node)
        self.cb.free_head = nxt
        head, version = self.read_meta(label)
        self.mem.write(self.node_addr(node), slot + self.g.pack_link(head, label, NODE_LIVE))
        self.write_meta(label, node + 1, version)
        self.cb.nodes_used += 1
        self.cb.nodes_peak = max(self.cb.nodes_peak, self.cb.nodes_used)
        return node

    # -- directory: two-choice hashing into buckets of ``dir_ways`` ways ----------------------
    def buckets_of(self, key16: bytes) -> tuple[int, int]:
        words = prf_words(self.cb.k_hash, key16)
        return words[0] & (self.buckets - 1), words[1] & (self.buckets - 1)

    def lookup(self, key16: bytes):
        """(entry ref of the key or None, its loc, its label, ref of the free way to insert at or None).

        Both buckets are read; the key is searched in the first, then the second; a new key
        goes to the first free way of the bucket with fewer valid ways (the first on a tie).
        """
        g = self.g
        hit, loc, label = None, 0, 0
        free, valid_count = [None, None], [0, 0]
        for i, h in enumerate(self.buckets_of(key16)):
            raw = self.mem.read(self.way_addr(h * g.dir_ways), g.bucket_bytes)
            for w in range(g.dir_ways):
                k, l, valid, lab = g.unpack_way(raw[w * g.way_bytes:(w + 1) * g.way_bytes])
                if valid and k == key16 and hit is None:
                    hit, loc, label = h * g.dir_ways + w, l, lab
                if valid:
                    valid_count[i] += 1
                elif free[i] is None:
                    free[i] = h * g.dir_ways + w
        pick = 1 if valid_count[1] < valid_count[0] else 0
        return hit, loc, label, free[pick]

    def write_way(self, ref: int, key16: bytes, loc: int, valid: bool, label: int = 0) -> None:
        self.mem.write(self.way_addr(ref),
                       self.g.pack_way(key16, loc, valid, label) if valid else bytes(self.g.way_bytes))

    # -- bins ----------------------------------------------------------------------------
    def open_bin(self, b: int, version: int, run: OmapRun) -> list[bytes] | None:
        g = self.g
        raw = self.mem.read(self.bin_addr(b), g.bin_bytes)
        run.host.append(HostOp(False, self.bin_addr(b), g.bin_bytes, b))
        plain = open_sealed(self.cb.k_enc, g.nonce(b, version, self.cb.epoch), raw[:g.plain_bytes + 16])
        if plain is None:
            return None
        return [plain[i * g.slot_bytes:(i + 1) * g.slot_bytes] for i in range(g.bin_slots)]

    def seal_bin(self, b: int, version: int, slots: list[bytes], run: OmapRun) -> None:
        g = self.g
        sealed = seal(self.cb.k_enc, g.nonce(b, version, self.cb.epoch), b"".join(slots))
        self.mem.write(self.bin_addr(b), sealed.ljust(g.bin_bytes, b"\0"))
        run.host.append(HostOp(True, self.bin_addr(b), g.bin_bytes, b))

    def evict(self, b: int, slots: list[bytes], head: int) -> int:
        """Up to Z nodes of ``b``'s list into the free slots; the list's new head."""
        g = self.g
        for _ in range(g.bin_slots):
            if head == 0:
                break
            node = head - 1
            slot, (nxt, _, state) = self.read_node(node)
            if state == NODE_LIVE:
                empty = next((i for i, s in enumerate(slots) if not g.unpack_slot(s)[1]), None)
                if empty is None:
                    break
                slots[empty] = slot
                ref, _, key, _ = g.unpack_slot(slot)
                self.write_way(ref, key, b, True, b)
            self.free_node(node)
            head = nxt
        return head


def _record(mem, addr: int, geom: OmapGeometry) -> tuple[int, bytes, bytes]:
    raw = mem.read(addr, geom.record_bytes)
    op = struct.unpack_from("<I", raw, 0)[0]
    return op, bytes(raw[8:24]), bytes(raw[24:24 + geom.value_bytes])


def _result(mem, addr: int, geom: OmapGeometry, status: int, key16: bytes, value: bytes) -> None:
    out = bytearray(geom.record_bytes)
    struct.pack_into("<I", out, 0, status)
    out[8:24] = key16
    out[24:24 + geom.value_bytes] = value.ljust(geom.value_bytes, b"\0")
    mem.write(addr, bytes(out))


def run_omap(mem, d: dict, geom: OmapGeometry) -> OmapRun:
    """Run one validated OMAP descriptor ``d`` against ``mem``; raises :class:`OmapFault` for the
    engine's run-time errors (after writing the control block back, as the RTL does)."""
    raw = mem.read(d["ctrl_addr"], CB_BYTES)
    why = check_control_block(raw, geom)
    run = OmapRun()
    if why:
        raise OmapFault(ErrorCode.OMAP_BAD_STATE, f"control block at {d['ctrl_addr']:#x}: {why}", 0)
    cb = ControlBlock.unpack(raw)
    mem = _Counting(mem, run)
    m = _Map(mem, d["ctrl_addr"], geom, cb)
    try:
        action = d["action"]
        if action == OmapAction.QUERY:
            _queries(m, d, run)
        elif action == OmapAction.BULK:
            _bulk(m, d, run)
        else:
            _format(m, run)
    finally:
        mem.write(d["ctrl_addr"], cb.pack())
    return run


def _queries(m: _Map, d: dict, run: OmapRun) -> None:
    g, cb = m.g, m.cb
    for i in range(d["count"]):
        op, key16, value = _record(m.mem, d["src_addr"] + i * g.record_bytes, g)
        op &= 3
        t = cb.query_counter
        cb.query_counter = (t + 1) & ((1 << 64) - 1)
        words = prf_words(cb.k_prf, label_input(t))
        dummy, label = words[0] & (m.bins - 1), words[1] & (m.bins - 1)
        hit, loc, entry_label, free = m.lookup(key16)
        in_bin = hit is not None and not loc & STASH_BIT
        target = entry_label if hit is not None else dummy
        if cb.free_head == 0:
            cb.stash_full += 1
            raise OmapFault(ErrorCode.OMAP_STASH_FULL, f"query {i}: the stash has no free node", run.done)
        head, version = m.read_meta(target)
        slots = m.open_bin(target, version, run)
        if slots is None:
            cb.tampered += 1
            raise OmapFault(ErrorCode.OMAP_TAMPERED, f"query {i}: bin {target} failed authentication "
                                                     "(its host page was tampered with or replayed)", run.done)
        entry = None                                # (ref, value) of the key's entry, taken out
        if hit is not None:
            ref = hit
            if in_bin:
                at = next((s for s, raw in enumerate(slots)
                           if g.unpack_slot(raw)[1] and g.unpack_slot(raw)[0] == ref), None)
                if at is None:
                    raise OmapFault(ErrorCode.OMAP_CORRUPT, f"query {i}: entry {ref} is not in bin {target}",
                                    run.done)
                entry = (ref, g.unpack_slot(slots[at])[3])
                slots[at] = bytes(g.slot_bytes)
            else:
                node = loc & ~STASH_BIT
                slot, (nxt, lab, _) = m.read_node(node)
                entry = (ref, g.unpack_slot(slot)[3])
                m.write_link(node, nxt, lab, NODE_DEAD)
        status, out = OmapStatus.NOP, bytes(g.value_bytes)
        if op == OmapOp.GET:
            status = OmapStatus.FOUND if entry else OmapStatus.NOT_FOUND
            out = entry[1] if entry else out
        elif op == OmapOp.PUT:
            if entry:
                entry, status = (entry[0], value), OmapStatus.UPDATED
            elif free is None or cb.count >= cb.capacity:
                status = OmapStatus.FULL
                if free is None:
                    cb.dir_full += 1
                else:
                    cb.map_full += 1
            else:
                entry, status = (free, value), OmapStatus.INSERTED
                cb.count += 1
        elif op == OmapOp.DELETE:
            if entry:
                m.write_way(entry[0], key16, 0, False)
                entry, status = None, OmapStatus.DELETED
                cb.count -= 1
            else:
                status = OmapStatus.NOT_FOUND
        head = m.evict(target, slots, head)
        m.write_meta(target, head, version + 1)
        if entry is not None:
            node = m.push(g.pack_slot(entry[0], True, key16, entry[1]), label)
            m.write_way(entry[0], key16, STASH_BIT | node, True, label)
        m.seal_bin(target, version + 1, slots, run)
        _result(m.mem, d["dst_addr"] + i * g.record_bytes, g, status, key16, out)
        cb.queries += 1
        run.statuses.append(status)
        run.done += 1


def _bulk(m: _Map, d: dict, run: OmapRun) -> None:
    g, cb = m.g, m.cb
    for i in range(d["count"]):
        _, key16, value = _record(m.mem, d["src_addr"] + i * g.record_bytes, g)
        t = cb.query_counter
        cb.query_counter = (t + 1) & ((1 << 64) - 1)
        label = prf_words(cb.k_prf, label_input(t))[1] & (m.bins - 1)
        hit, loc, _, free = m.lookup(key16)
        if hit is not None:
            if loc & STASH_BIT:
                node = loc & ~STASH_BIT
                m.mem.write(m.node_addr(node), g.pack_slot(hit, True, key16, value))
                status = OmapStatus.UPDATED
            else:
                status = OmapStatus.FULL                # already in a host bin: BULK does not reach it
        elif free is None or cb.count >= cb.capacity or cb.free_head == 0:
            status = OmapStatus.FULL
            if free is None:
                cb.dir_full += 1
            elif cb.free_head == 0:
                cb.stash_full += 1
            else:
                cb.map_full += 1
        else:
            ref = free
            node = m.push(g.pack_slot(ref, True, key16, value), label)
            m.write_way(ref, key16, STASH_BIT | node, True, label)
            cb.count += 1
            status = OmapStatus.INSERTED
        _result(m.mem, d["dst_addr"] + i * g.record_bytes, g, status, key16, bytes(g.value_bytes))
        run.statuses.append(status)
        run.done += 1


def _format(m: _Map, run: OmapRun) -> None:
    g = m.g
    for b in range(m.bins):
        head, version = m.read_meta(b)
        slots = [bytes(g.slot_bytes)] * g.bin_slots
        head = m.evict(b, slots, head)
        m.write_meta(b, head, version + 1)
        m.seal_bin(b, version + 1, slots, run)
        run.done += 1
