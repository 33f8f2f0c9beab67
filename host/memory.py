"""``TileCache``: the memory engine's tile cache from the host (configure, prefetch, flush, stats).

    cache = TileCache(dev)                        # HBM store on the cache's port, window: host memory
    w = Linear.from_float(weights, device=dev, memory="host")    # weights behind the cache
    cache.prefetch(w.weight_buffers[0])           # lines fill in the background
    y = w(x)                                      # the matmul reads its weights through the cache
    cache.stats()                                 # hits, misses, evictions, bytes per level, tags

Engines read and write the backing port (``w<port>`` of the memory engine) through the cache
transparently; this object only sets it up and runs its actions (one CACHE descriptor each,
or :meth:`descriptor` records inside a larger program: prefetch hints next to the matmuls).
Host writes into cached memory bypass the cache: :meth:`invalidate` the range afterwards.
"""
from __future__ import annotations

import struct
import weakref

from hbmforge.encodings import CacheAction, Opcode
from hbmforge.engines.memory import CACHE_COUNTERS, CacheGeometry, cache_geometry
from hbmforge.memory_map import region_for

from .checks import U64_MAX, check_int, check_timeout
from .device import Buffer, Device, check_device
from .errors import DeviceError, OutOfDeviceMemoryError

__all__ = ["TileCache", "expected_matmul_reads"]

#: the open TileCache of each device: the cache is one piece of hardware, and a second
#: CONFIGURE would drop the first's lines (dirty ones included)
_OPEN: "weakref.WeakKeyDictionary[Device, TileCache]" = weakref.WeakKeyDictionary()


class TileCache:
    """The tile cache of ``device`` (a design with ``kind: memory`` and ``cache:``).

    ``window``: the cacheable range, a Buffer or ``(address, bytes)`` (required on the xrt backend); default: the whole
    memory the backing port is linked to (the host region, or DDR). Its ends are rounded out
    to whole lines; it must lie in the memory the backing port is linked to. The store (``ways *
    sets * line_bytes`` bytes) is allocated in HBM on the cache's store port; a store the bank
    cannot hold is refused before anything happens. One TileCache per device at a time (the
    cache is one piece of hardware): :meth:`close` it before making another.
    """

    def __init__(self, device: Device, *, window=None, timeout: float = 60.0):
        dev = check_device(device)
        lay = dev.layout
        geom = cache_geometry(lay)
        if geom is None:
            raise ValueError(f"design {lay.kernel!r} has no tile cache: add `cache:` to a `kind: memory` engine")
        self._timeout = check_timeout(timeout)
        eng = lay.config.engine("memory")
        self._geom = geom
        self._dev = dev
        self._backing_port = lay.port_names[1 + eng.port]
        self._store_port = lay.port_names[1 + eng.exclusive_ports(lay.config)[0]]
        base, size = self._window(window, eng.backing)
        bank = dev._bank_region(lay.port(self._store_port))
        other = _OPEN.get(dev)
        if other is not None and not other.closed:
            raise DeviceError("this device's tile cache is already set up by another TileCache (its window "
                              f"{other.window[0]:#x}, +{other.window[1]:#x}); close() that one first (a new "
                              "CONFIGURE would drop its lines, dirty ones included)")
        if geom.store_bytes > bank.size:
            raise OutOfDeviceMemoryError(
                f"the cache's store ({geom.ways} ways x {geom.sets} sets x {geom.line_bytes} bytes = "
                f"{geom.store_bytes}) does not fit bank {bank.name} ({bank.size} bytes) of port {self._store_port}")
        self._store = dev.alloc(geom.store_bytes, self._store_port)
        self._window_range = (base, size)
        try:
            self.run([self.descriptor(CacheAction.CONFIGURE, base, size)])
        except BaseException:
            dev.free(self._store)
            raise
        _OPEN[dev] = self

    def _window(self, window, backing: str) -> tuple[int, int]:
        line = self._geom.line_bytes
        if window is None:
            if self._dev.backend == "xrt":
                raise ValueError("window: pass the cacheable range (a host buffer, or an (address, bytes) pair) on "
                                 "the xrt backend: host-only buffers get their device addresses from XRT, not "
                                 "from the simulated address map the default window comes from")
            region = region_for(self._dev.layout.config.board_info, backing)
            if region is None:                          # Zynq: host memory is the board's own
                mem = self._dev.layout.config.board_info.memory
                base, size = 0, mem.channel_size_mib << 20
            else:
                base, size = region.base, region.size
        elif isinstance(window, Buffer):
            self._dev._check_buffer(window, "window")
            base, size = window.address, window.nbytes
        elif isinstance(window, tuple) and len(window) == 2:
            base = check_int("window address", window[0], 0, U64_MAX)
            size = check_int("window bytes", window[1], 1, U64_MAX)
        else:
            raise TypeError(f"window must be a Buffer, an (address, bytes) pair or None, got {type(window).__name__}")
        start = base // line * line
        end = -(-(base + size) // line) * line
        if end - start > 1 << 40:
            raise ValueError(f"window of {end - start} bytes: the cache reaches at most 2**40 bytes")
        board = self._dev.layout.config.board_info
        if isinstance(window, Buffer) and region_for(board, backing) is not None and window.memory != backing:
            raise ValueError(f"window is a buffer in {window.memory} memory, but the cache's port is linked to "
                             f"{backing} memory: allocate it with memory={backing!r}")
        return start, end - start

    # -- properties -----------------------------------------------------------------------
    @property
    def geometry(self) -> CacheGeometry:
        return self._geom

    @property
    def store(self) -> Buffer:
        return self._store

    @property
    def window(self) -> tuple[int, int]:
        return self._window_range

    @property
    def backing_port(self) -> str:
        """The port the cache sits on: engines reading it read through the cache."""
        return self._backing_port

    # -- actions ------------------------------------------------------------------------------
    def descriptor(self, action: CacheAction, addr: int = 0, nbytes: int = 0, store: int | None = None) -> dict:
        """One CACHE descriptor's fields, checked with the design's rules (for ProgramBuilder.unchecked)."""
        action = CacheAction(action)
        fields = {"op": int(Opcode.CACHE), "action": int(action), "addr": addr, "bytes": nbytes,
                  "store_addr": self._store.address if store is None and hasattr(self, "_store") else (store or 0)}
        code, why = self._dev.layout.validate_descriptor(fields)
        if code:
            raise ValueError(f"CACHE {action.name} refused: {why}")
        return fields

    @property
    def closed(self) -> bool:
        return self._store is None or self._store.freed

    def _check(self) -> None:
        if self.closed:
            raise DeviceError("this TileCache was closed")
        self._dev._check_open()

    def _range(self, target, nbytes) -> tuple[int, int]:
        """``target`` (a Buffer, or an address with ``nbytes``) rounded out to whole lines, inside
        the window."""
        line = self._geom.line_bytes
        if isinstance(target, Buffer):
            self._dev._check_buffer(target, "target")
            addr = target.address
            size = target.nbytes if nbytes is None else check_int("nbytes", nbytes, 1, target.nbytes)
        else:
            addr = check_int("address", target, 0, U64_MAX)
            if nbytes is None:
                raise ValueError("nbytes is required with an address")
            size = check_int("nbytes", nbytes, 1, U64_MAX)
        start = addr // line * line
        end = -(-(addr + size) // line) * line
        base, wbytes = self._window_range
        if start < base or end > base + wbytes:
            raise ValueError(f"range [{addr:#x}, +{size:#x}) is not inside the cache's window [{base:#x}, "
                             f"+{wbytes:#x}): it does not pass through the cache")
        return start, end - start

    def _range_or_window(self, target, nbytes) -> tuple[int, int]:
        if target is None:
            if nbytes is not None:
                raise ValueError("nbytes needs a target (a Buffer or an address); without one the whole "
                                 "window is meant")
            return self._window_range
        return self._range(target, nbytes)

    def prefetch(self, target, nbytes: int | None = None) -> None:
        """Fill the lines of a Buffer (or ``address, nbytes``) in the background: the run ends once
        the lines are looked up; later reads of them hit (or wait for their fill)."""
        self._check()
        self.run([self.descriptor(CacheAction.PREFETCH, *self._range(target, nbytes))])

    def flush(self, target=None, nbytes: int | None = None) -> None:
        """Write the dirty lines of a range (default: the window) back to the backing memory."""
        self._check()
        self.run([self.descriptor(CacheAction.FLUSH, *self._range_or_window(target, nbytes))])

    def invalidate(self, target=None, nbytes: int | None = None) -> None:
        """Drop the lines of a range (default: all) without writing them back: after the host wrote
        that memory directly (host writes do not pass through the cache)."""
        self._check()
        self.run([self.descriptor(CacheAction.INVALIDATE, *self._range_or_window(target, nbytes))])

    def stats(self) -> dict:
        """Counters since the cache was made (CACHE_COUNTERS) and every line's state (set-major):
        ``lines``: list of dicts (set, way, tag, valid, dirty, age, freq, address)."""
        self._check()
        g = self._geom
        buf = self._dev.alloc(g.stats_bytes)
        try:
            self.run([self.descriptor(CacheAction.STATS, buf.address, 0)])
            raw = self._dev.read(buf, g.stats_bytes)
        finally:
            self._dev.free(buf)
        words = struct.unpack_from(f"<{16 + g.lines}Q", raw)
        out = dict(zip(CACHE_COUNTERS, words))
        lines = []
        base = self._window_range[0]
        for i, w in enumerate(words[16:16 + g.lines]):
            s, way = divmod(i, g.ways)
            tag = w & ((1 << 40) - 1)
            lines.append({"set": s, "way": way, "tag": tag, "valid": bool(w >> 40 & 1), "dirty": bool(w >> 41 & 1),
                          "age": w >> 44 & 15, "freq": w >> 48 & 255,
                          "address": base + (((tag << g.set_bits) | s) << g.line_bits)})
        out["lines"] = lines
        out["raw"] = raw
        return out

    def run(self, descriptors: list[dict]) -> None:
        """Run CACHE descriptors (from :meth:`descriptor`) as one program."""
        from .program import ProgramBuilder

        if isinstance(descriptors, (str, bytes, dict)) or not hasattr(descriptors, "__iter__"):
            raise TypeError(f"descriptors must be a list of CACHE descriptors (TileCache.descriptor), "
                            f"got {type(descriptors).__name__}")
        descriptors = list(descriptors)
        for i, d in enumerate(descriptors):
            if not isinstance(d, dict) or d.get("op") != int(Opcode.CACHE):
                raise ValueError(f"descriptors[{i}] is not a CACHE descriptor (make them with TileCache.descriptor)")
        self._dev._check_open()
        prog = ProgramBuilder(self._dev)
        for d in descriptors:
            prog.unchecked(**d)
        buf = self._dev.alloc(prog.nbytes)
        try:
            self._dev.write(buf, prog.to_bytes())
            self._dev.run(buf, len(prog), timeout=self._timeout)
        finally:
            if not self._dev.closed and not self._dev.running:
                self._dev.free(buf)

    def close(self) -> None:
        """Flush every dirty line and free the store."""
        if not self.closed and not self._dev.closed:
            self.flush()
            self._dev.free(self._store)
        if _OPEN.get(self._dev) is self:
            del _OPEN[self._dev]


def expected_matmul_reads(layout, m: int, n: int, k: int, wbits, w_addr: int, *, out_mode=0) -> list[tuple[int, int]]:
    """The (address, bytes) reads the matmul engine makes of one weight stripe for one MATMUL of
    [m, k] x [n, k] (``k`` padded): per K slice, the slice's part of the stripe once per chunk of
    row blocks (the engine's passes, hbmforge.engines.matmul). What the cache sees of a Linear."""
    from hbmforge.encodings import WeightFormat

    geom = layout.matmul
    code = WeightFormat.code(wbits)
    out, off = [], 0
    for s in range(geom.slices(k)):
        nbytes = geom.slice_weight_port_bytes(n, geom.slice_k(k, s), code)
        out += [(w_addr + off, nbytes)] * geom.chunks(m, n, k, out_mode)
        off += nbytes
    return out
