"""``ObliviousMap``: a key-value map whose host-memory traffic says nothing about the queries.

    omap = ObliviousMap(dev, capacity=1 << 16, key_bytes=8, value_bytes=8)
    omap.put(b"key00001", b"value001"); omap.get(b"key00001")          # b"value001"
    omap.put_many({k: v, ...}); omap.get_many([k, ...]); omap.delete(k)

The map runs on the device's memory engine (``kind: memory`` with ``omap:``;
docs/engines/memory.md). Its bulk, ``capacity`` entries in encrypted bins, lives in host memory
(``dev.alloc(..., memory="host")``: observed, and possibly tampered with); its trusted state
(control block with the keys, directory, bin versions, stash) lives in HBM on the data port.
Every query, whatever it asks and whether the key is there or not, reads one bin and writes
one bin of the same size at the same cycle offsets of its slot. A tampered or replayed host
page fails the query's authentication: :class:`TamperError`, nothing returned.

What runs where: the device (RTL) does every query, the bulk load and the format sweep; this
object only writes the map's public initial state and the key material into HBM (a
deployment would provision the keys on the card), writes query records and reads results.
"""
from __future__ import annotations

import os
import struct
from typing import Iterable, Mapping

import numpy as np

from hbmforge.encodings import OmapAction, OmapOp, OmapStatus, Opcode
from hbmforge.engines.memory import (CB_BYTES, KEY_BYTES, NODE_FREE, ControlBlock, OmapPlan, omap_geometry,
                                     omap_slot_timing, plan_omap)

from .checks import check_int, check_timeout
from .device import Buffer, Device, check_device
from .errors import DeviceError, DeviceRunError, OutOfDeviceMemoryError

__all__ = ["ObliviousMap", "TamperError", "ObliviousMapFullError", "OmapResult"]

_TAMPER_CODES = (34,)        # ErrorCode.OMAP_TAMPERED


class TamperError(DeviceError):
    """A host page of the map failed authentication (tampered with or replayed): the query
    returned nothing and the map's trusted state is as before that query."""


class ObliviousMapFullError(ValueError):
    """A put of a new key into a full map (or a full directory bucket): that key was not stored."""

    def __init__(self, message: str, keys: list):
        super().__init__(message)
        self.keys = keys


class OmapResult:
    """One query's outcome: ``status`` (an OmapStatus) and ``value`` (bytes or None)."""

    __slots__ = ("status", "value")

    def __init__(self, status: OmapStatus, value):
        self.status, self.value = status, value

    def __repr__(self):
        return f"OmapResult({self.status.name}, {self.value!r})"


def _bytes(what: str, value, size: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes of length {size}, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != size:
        raise ValueError(f"{what} must be exactly {size} bytes (the map's {what.split()[0]}_bytes), got {len(value)}")
    return value


class ObliviousMap:
    """A map of up to ``capacity`` keys of ``key_bytes`` (1-16) to values of ``value_bytes``
    (1 .. the engine's ``value_bytes``), on the memory engine of ``device``.

    ``items``: a mapping loaded when the map is made (device BULK insert, then the format
    sweep writes every bin once). ``seed``: derive the key material from it (tests,
    reproducible traces); default: ``os.urandom``. ``timeout``: seconds per device run.
    """

    def __init__(self, device: Device, capacity: int, key_bytes: int, value_bytes: int, *,
                 items: Mapping | None = None, seed: int | None = None, timeout: float = 600.0,
                 slot_margin: float = 1.25):
        dev = check_device(device)
        lay = dev.layout
        geom = omap_geometry(lay)
        if geom is None:
            raise ValueError(f"design {lay.kernel!r} has no oblivious map: add `omap:` to a `kind: memory` engine")
        capacity = check_int("capacity", capacity, 1, 1 << 30)
        self._key_bytes = check_int("key_bytes", key_bytes, 1, KEY_BYTES)
        self._value_bytes = check_int("value_bytes", value_bytes, 1, geom.value_bytes)
        self._timeout = check_timeout(timeout)
        if seed is not None:
            seed = check_int("seed", seed, 0, (1 << 64) - 1)
        if isinstance(slot_margin, bool) or not isinstance(slot_margin, (int, float)) or not 1.0 <= slot_margin <= 16:
            raise ValueError(f"slot_margin must be a number in [1, 16], got {slot_margin!r}")
        loaded = self._check_items(items, capacity) if items is not None else {}
        try:
            plan = plan_omap(geom, capacity)
        except ValueError as err:
            raise ValueError(f"capacity: {err}") from None
        board = lay.config.board_info
        eng = lay.config.engine("memory")
        host_port = lay.port_names[1 + eng.port]
        bank = dev._bank_region(lay.port("data"))
        state_bytes = plan.hbm_bytes + 2 * CB_BYTES
        if state_bytes > bank.size:
            raise OutOfDeviceMemoryError(
                f"capacity {capacity}: the map's trusted state needs {state_bytes} bytes of HBM (directory "
                f"{plan.dir_bytes}, stash {plan.node_region_bytes}), the data port's bank {bank.name} holds "
                f"{bank.size}; use a smaller capacity")
        self._dev, self._geom, self._plan = dev, geom, plan
        self._capacity = capacity
        self._closed = False
        self._buffers: list[Buffer] = []
        self._batch = None
        try:
            self._state = self._alloc(state_bytes, "data")
            self._bins = self._alloc(plan.host_bytes + geom.bin_stride, host_port, memory=eng.backing)
            self._setup(seed, slot_margin)
            if loaded:
                res = self._run_batch(OmapAction.BULK, [(OmapOp.PUT, k, v) for k, v in loaded.items()])
                lost = [k for k, r in zip(loaded, res) if r.status != OmapStatus.INSERTED]
                if lost:
                    raise ObliviousMapFullError(
                        f"items: {len(lost)} of {len(loaded)} key(s) found both of their directory buckets full "
                        f"(dir_ways {geom.dir_ways}); the map was not made", [bytes(k) for k in lost])
            self._run(OmapAction.FORMAT, 0, 0, 0)
        except BaseException:
            self._release()
            raise

    # -- allocation and set-up ------------------------------------------------------------
    def _alloc(self, nbytes: int, port: str, memory: str | None = None) -> Buffer:
        buf = self._dev.alloc(nbytes, port, memory=memory)
        self._buffers.append(buf)
        return buf

    def _release(self) -> None:
        for buf in self._buffers:
            if not buf.freed and not self._dev.closed:
                self._dev.free(buf)
        self._buffers.clear()
        self._closed = True

    def _setup(self, seed, margin: float) -> None:
        dev, g, plan = self._dev, self._geom, self._plan
        word = g.word_bytes
        base = self._state.address
        self._ctrl = base
        dir_base = base + CB_BYTES
        meta_base = dir_base + plan.dir_bytes
        nodes_base = meta_base + plan.meta_bytes
        self._scratch = nodes_base + plan.node_region_bytes          # one record for FORMAT's unused slots
        stride = g.bin_stride
        bins_base = -(-self._bins.address // stride) * stride
        if seed is None:
            material = os.urandom(96)
            epoch = int.from_bytes(os.urandom(4), "little")
        else:
            import hashlib
            material = hashlib.sha512(seed.to_bytes(8, "little") + b"hbmforge-omap-keys").digest()
            material += hashlib.sha256(material).digest()
            epoch = seed & 0xFFFF_FFFF
        timing = self._slot_timing(margin)
        cb = ControlBlock(epoch=epoch, bins_log2=plan.bins_log2, k_enc=material[:32], k_prf=material[32:64],
                          k_hash=material[64:96], bins_base=bins_base, dir_base=dir_base, meta_base=meta_base,
                          nodes_base=nodes_base, dir_log2=plan.dir_log2, node_count=plan.nodes,
                          capacity=self._capacity, free_head=1, t_read=timing.t_read, t_write=timing.t_write,
                          t_slot=timing.t_slot)
        self._timing = timing
        # public initial state: an empty directory and bin meta, every node on the free list
        dev.write(self._state, cb.pack())
        zero = bytes(1 << 20)
        for off in range(CB_BYTES, CB_BYTES + plan.dir_bytes + plan.meta_bytes, len(zero)):
            n = min(len(zero), CB_BYTES + plan.dir_bytes + plan.meta_bytes - off)
            dev.write(self._state, zero[:n], offset=off)
        nodes = np.zeros((plan.nodes, g.node_bytes // 4), dtype="<u4")
        link = g.slot_bytes // 4
        nodes[:, link] = np.arange(2, plan.nodes + 2, dtype=np.uint64).astype("<u4")
        nodes[-1, link] = 0
        nodes[:, link + 2] = NODE_FREE
        dev.write(self._state, nodes, offset=nodes_base - base)
        assert nodes_base % word == 0 and dir_base % word == 0 and meta_base % word == 0

    def _slot_timing(self, margin: float):
        from hbmforge.memory_map import region_for

        lay = self._dev.layout
        clock = lay.config.clock
        board = lay.config.board_info
        hbm = board.latency_cycles(clock)
        hbm_w = board.latency_cycles(clock, write=True)
        eng = lay.config.engine("memory")
        region = region_for(board, eng.backing)
        host_rate = None
        if region is not None:
            host_r, host_w = region.latency_cycles(clock), region.latency_cycles(clock, write=True)
            host_rate = region.bytes_per_cycle(clock)
        else:
            host_r, host_w = hbm, hbm_w
        kernel_outstanding = lay.config.axi.max_outstanding
        limits = dict(burst_beats=lay.config.axi.max_burst_beats, hbm_outstanding=kernel_outstanding,
                      host_outstanding=kernel_outstanding)
        timings = getattr(self._dev, "timings", None)            # the sim backend's actual port timing
        if timings:
            data, host = timings.get("data"), timings.get(lay.port_names[1 + eng.port])
            if data is not None:
                hbm, hbm_w = max(hbm, data.read_latency), max(hbm_w, data.write_latency)
                limits.update(hbm_bytes_per_cycle=data.bytes_per_cycle,
                              hbm_outstanding=min(kernel_outstanding, data.max_outstanding))
            if host is not None:                                 # a region's timing and its port's, the slower
                host_r, host_w = max(host_r, host.read_latency), max(host_w, host.write_latency)
                limits.update(host_bytes_per_cycle=min(host.bytes_per_cycle, host_rate or host.bytes_per_cycle),
                              host_outstanding=min(kernel_outstanding, host.max_outstanding))
        return omap_slot_timing(self._geom, hbm_read=hbm, hbm_write=hbm_w, host_read=host_r, host_write=host_w,
                                margin=margin, **limits)

    def _check_items(self, items, capacity: int) -> dict:
        if not isinstance(items, Mapping):
            raise TypeError(f"items must be a mapping of keys to values, got {type(items).__name__}")
        out = {}
        for k, v in items.items():
            out[_bytes("key", k, self._key_bytes)] = _bytes("value", v, self._value_bytes)
        if len(out) > capacity:
            raise ObliviousMapFullError(f"items holds {len(out)} keys, more than the capacity {capacity}", [])
        return out

    # -- properties ---------------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self._dev

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def key_bytes(self) -> int:
        return self._key_bytes

    @property
    def value_bytes(self) -> int:
        return self._value_bytes

    @property
    def plan(self) -> OmapPlan:
        return self._plan

    @property
    def slot_timing(self):
        return self._timing

    @property
    def bins_region(self) -> tuple[int, int]:
        """(address, bytes) of the host bins: what an observer of host memory sees."""
        cb = self.control_block()
        return cb.bins_base, self._plan.host_bytes

    @property
    def buffers(self) -> dict:
        """The map's buffers: ``state`` (HBM: control block, directory, bin meta, stash), ``bins``
        (host memory), and ``src``/``dst`` of the last batch (HBM), for audits and tests."""
        out = {"state": self._state, "bins": self._bins}
        if self._batch is not None:
            out.update(src=self._batch[0], dst=self._batch[1])
        return out

    @property
    def control_address(self) -> int:
        return self._ctrl

    def control_block(self) -> ControlBlock:
        self._check()
        return ControlBlock.unpack(self._dev.read(self._state, CB_BYTES))

    def __len__(self) -> int:
        return self.control_block().count

    def stats(self) -> dict:
        """The control block's counters: queries, overflow events, stash use, slot overruns."""
        cb = self.control_block()
        return {name: getattr(cb, name) for name in ("queries", "count", "dir_full", "map_full", "nodes_used",
                                                      "nodes_peak", "overruns", "max_work", "stash_full",
                                                      "tampered", "query_counter")} | {
            "t_read": cb.t_read, "t_write": cb.t_write, "t_slot": cb.t_slot, "nodes": self._plan.nodes}

    # -- queries ----------------------------------------------------------------------------
    def get(self, key) -> bytes | None:
        """The value of ``key``, or None if the map does not hold it."""
        return self.get_many([key])[0]

    def put(self, key, value) -> None:
        """Store ``value`` under ``key``; ObliviousMapFullError if the map is full (nothing changed)."""
        self.put_many({key: value})

    def delete(self, key) -> bool:
        """Remove ``key``; True if it was there."""
        return self.delete_many([key])[0]

    def get_many(self, keys: Iterable) -> list:
        keys = self._keys(keys)
        res = self.query([(OmapOp.GET, k, None) for k in keys])
        return [r.value for r in res]

    def put_many(self, items) -> None:
        """Store every (key, value) of a mapping or an iterable of pairs, in order, one query each;
        keys that found the map full are listed in the ObliviousMapFullError (the others stored)."""
        if isinstance(items, (str, bytes, bytearray)) or not (isinstance(items, Mapping) or hasattr(items, "__iter__")):
            raise TypeError(f"put_many takes a mapping or (key, value) pairs, got {type(items).__name__}")
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        for p in pairs:
            if not (isinstance(p, tuple) and len(p) == 2):
                raise TypeError(f"put_many takes a mapping or (key, value) pairs, got {p!r}")
        ops = [(OmapOp.PUT, k, v) for k, v in pairs]
        res = self.query(ops)
        full = [k for (op, k, v), r in zip(ops, res) if r.status == OmapStatus.FULL]
        if full:
            raise ObliviousMapFullError(
                f"{len(full)} of {len(ops)} put(s) found the map full (capacity {self._capacity}, or a full "
                f"directory bucket): those keys were not stored, the others were", [bytes(k) for k in full])

    def delete_many(self, keys: Iterable) -> list[bool]:
        keys = self._keys(keys)
        res = self.query([(OmapOp.DELETE, k, None) for k in keys])
        return [r.status == OmapStatus.DELETED for r in res]

    def dummy(self, count: int = 1) -> None:
        """``count`` dummy queries (a random bin read and written, nothing changes): padding."""
        count = check_int("count", count, 1, self._geom.max_records)
        self.query([(OmapOp.NOP, bytes(self._key_bytes), None)] * count)

    def query(self, ops) -> list[OmapResult]:
        """Run ``ops``, a list of ``(OmapOp, key, value or None)``, as one device batch, in order."""
        self._check()
        checked = []
        if isinstance(ops, (str, bytes)) or not hasattr(ops, "__iter__"):
            raise TypeError(f"ops must be a list of (op, key, value) tuples, got {type(ops).__name__}")
        for item in ops:
            if not (isinstance(item, tuple) and len(item) == 3):
                raise TypeError(f"each op must be an (op, key, value) tuple, got {item!r}")
            op, key, value = item
            if isinstance(op, bool):
                raise ValueError(f"op must be an OmapOp (NOP, GET, PUT, DELETE), got {op!r}")
            if not isinstance(op, OmapOp):
                try:
                    op = OmapOp(op)
                except (ValueError, TypeError):
                    raise ValueError(f"op must be an OmapOp (NOP, GET, PUT, DELETE), got {op!r}") from None
            key = _bytes("key", key, self._key_bytes)
            if op == OmapOp.PUT:
                value = _bytes("value", value, self._value_bytes)
            elif value is not None:
                raise ValueError(f"{op.name} takes no value (None), got {value!r}")
            checked.append((op, key, value))
        if not checked:
            return []
        if len(checked) > self._geom.max_records:
            raise ValueError(f"a batch holds at most {self._geom.max_records} queries, got {len(checked)}")
        return self._run_batch(OmapAction.QUERY, checked)

    def _keys(self, keys) -> list[bytes]:
        if isinstance(keys, (str, bytes, bytearray)) or not hasattr(keys, "__iter__"):
            raise TypeError(f"keys must be a list of byte strings, got {type(keys).__name__}")
        return [_bytes("key", k, self._key_bytes) for k in keys]

    # -- device runs ------------------------------------------------------------------------
    def _batch_buffers(self, n: int) -> tuple[Buffer, Buffer]:
        rec = self._geom.record_bytes
        if self._batch is None or self._batch[0].nbytes < n * rec:
            size = max(n, 64) * rec
            if self._batch is not None:
                for b in self._batch:
                    self._buffers.remove(b)
                    self._dev.free(b)
            self._batch = (self._alloc(size, "data"), self._alloc(size, "data"))
        return self._batch

    def _run_batch(self, action: OmapAction, ops) -> list[OmapResult]:
        g = self._geom
        rec = g.record_bytes
        src, dst = self._batch_buffers(len(ops))
        raw = bytearray(len(ops) * rec)
        for i, (op, key, value) in enumerate(ops):
            struct.pack_into("<I", raw, i * rec, int(op))
            raw[i * rec + 8:i * rec + 8 + len(key)] = key
            if value is not None:
                raw[i * rec + 24:i * rec + 24 + len(value)] = value
        self._dev.write(src, bytes(raw))
        self._run(action, src.address, dst.address, len(ops))
        out = self._dev.read(dst, len(ops) * rec)
        results = []
        for i in range(len(ops)):
            status = OmapStatus(struct.unpack_from("<I", out, i * rec)[0] & 0xF)
            value = bytes(out[i * rec + 24:i * rec + 24 + self._value_bytes]) if status == OmapStatus.FOUND else None
            results.append(OmapResult(status, value))
        return results

    def _run(self, action: OmapAction, src: int, dst: int, count: int) -> None:
        from .program import ProgramBuilder

        dev = self._dev
        prog = ProgramBuilder(dev)
        fields = {"op": int(Opcode.OMAP), "action": int(action), "ctrl_addr": self._ctrl, "src_addr": src,
                  "dst_addr": dst, "count": count}
        code, why = dev.layout.validate_descriptor(fields)
        if code:
            raise ValueError(f"OMAP descriptor refused: {why}")
        prog.unchecked(**fields)
        buf = dev.alloc(prog.nbytes)
        try:
            dev.write(buf, prog.to_bytes())
            try:
                dev.run(buf, len(prog), timeout=self._timeout)
            except DeviceRunError as err:
                if err.code in _TAMPER_CODES:
                    raise TamperError(f"oblivious map: {err}; the host page of a bin failed authentication "
                                      f"(tampered with or replayed); that query returned nothing") from None
                raise
        finally:
            if not dev.closed and not dev.running:
                dev.free(buf)

    # -- lifetime ---------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise DeviceError("this ObliviousMap was closed")
        self._dev._check_open()

    def close(self) -> None:
        """Free the map's device and host buffers."""
        if not self._closed:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"ObliviousMap(capacity={self._capacity}, key_bytes={self._key_bytes}, "
                f"value_bytes={self._value_bytes}, bins={self._plan.bins}{', closed' if self._closed else ''})")
