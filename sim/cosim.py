"""``CoSim``: a Python handle on a co-simulation library (ctypes over the §7 C ABI).

Its methods are the C functions without the ``hbf_`` prefix, with the same
arguments (the host's sim backend and its test double rely on that), plus a
few conveniences: register names from the manifest, numpy arrays for memory,
a wall-clock ``timeout`` so a hung kernel returns instead of hanging (long runs
are cut into chunks; Ctrl-C is honoured between them).
"""
from __future__ import annotations

import ctypes
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hbmforge.layout import CTRL_ADDR_WIDTH

from .bindings import port_timings, read_design
from .timing import DRAM_PARAM_NAMES, PortTiming, check_memory_model, dram_params

__all__ = ["CoSim", "CoSimError", "AxiProtocolError", "PortStats", "RegionStats", "MemoryStats", "ProtocolReport",
           "build_cosim", "MAX_REGIONS", "TRACE_DTYPE"]

_RUN_CHUNK = 1 << 20            # cycles per C call when a wall-clock limit or Ctrl-C must be honoured
_ERROR_TEXT_BYTES = 1 << 16
_ADDRESS_SPACE = 1 << 64
_MAX_STEP = (1 << 63) - 1


def _count(name: str, value, lo: int = 0, hi: int = _MAX_STEP) -> int:
    """An integer argument in [lo, hi]; TypeError/ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _span(addr, nbytes: int) -> int:
    """``addr`` checked so that ``[addr, addr + nbytes)`` lies in the 64-bit address space."""
    addr = _count("address", addr, 0, _ADDRESS_SPACE - 1)
    if addr + nbytes > _ADDRESS_SPACE:
        raise ValueError(f"[{addr:#x}, +{nbytes}) runs past the end of the 64-bit address space")
    return addr


class CoSimError(RuntimeError):
    """The library could not be loaded or used (closed handle, bad port, failed create)."""


class AxiProtocolError(CoSimError):
    """The kernel broke an AXI rule (raised by :meth:`CoSim.check_protocol`)."""


class PortStats(NamedTuple):
    """``hbf_port_stats`` in ABI order (a tuple, so ``stats[0]`` works too)."""

    bytes_read: int
    bytes_written: int
    read_bursts: int
    write_bursts: int
    r_beats: int
    violations_4k: int


class RegionStats(NamedTuple):
    """``hbf_region_stats``: traffic into one memory region and its trace buffer."""

    bytes_read: int
    bytes_written: int
    read_bursts: int
    write_bursts: int
    trace_pending: int
    trace_dropped: int


class MemoryStats(NamedTuple):
    """``hbf_memory_stats``: what the calibrated DRAM model saw (column accesses by row state,
    refreshes, bus turnarounds, bursts through the HBM switch to another group and hops crossed)."""

    accesses: int
    row_hits: int
    row_closed: int
    row_misses: int
    refreshes: int
    turnarounds: int
    crossing_bursts: int
    crossing_hops: int


#: regions the harness holds (memory_regions.h)
MAX_REGIONS = 8
#: one traced burst: what an observer of the region sees
TRACE_DTYPE = np.dtype([("cycle", "<u8"), ("addr", "<u8"), ("bytes", "<u4"), ("port", "u1"), ("write", "u1"),
                        ("region", "u1")])


class ProtocolReport(NamedTuple):
    """``hbf_protocol_errors``: the violation count and their text (``count, text = ...``)."""

    count: int
    text: str

    @property
    def messages(self) -> list[str]:
        return [line for line in self.text.splitlines() if line]


def build_cosim(design, manifest=None, **kwargs) -> Path:
    """Path of the co-simulation library of ``design`` (a generated design dir or RTL), built if not cached.

    ``kwargs`` go to :func:`hbmforge.sim.build.build_library` (``options``, ``progress``).
    """
    from .build import build_library
    return build_library(design, manifest, **kwargs).library


_LIBS: dict[str, ctypes.CDLL] = {}


def _load(path: Path) -> ctypes.CDLL:
    key = str(path.resolve())
    lib = _LIBS.get(key)
    if lib is not None:
        return lib
    try:
        lib = ctypes.CDLL(key, mode=ctypes.RTLD_LOCAL)
    except OSError as e:
        raise CoSimError(f"cannot load co-simulation library {key}: {e}") from e
    vp, u32, u64, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    sigs = {
        "hbf_create": ([], vp),
        "hbf_destroy": ([vp], None),
        "hbf_num_ports": ([vp], i32),
        "hbf_set_port_timing": ([vp, i32, u32, u32, ctypes.c_double, u32], None),
        "hbf_reg_read": ([vp, u32], u32),
        "hbf_reg_write": ([vp, u32, u32], None),
        "hbf_mem_write": ([vp, u64, vp, u64], None),
        "hbf_mem_read": ([vp, u64, vp, u64], None),
        "hbf_step": ([vp, u64], None),
        "hbf_run_until_interrupt": ([vp, u64], i32),
        "hbf_cycles": ([vp], u64),
        "hbf_port_stats": ([vp, i32, ctypes.POINTER(u64)], None),
        "hbf_protocol_errors": ([vp, ctypes.c_char_p, i32], i32),
        "hbf_trace_open": ([vp, ctypes.c_char_p], None),
        "hbf_set_region": ([vp, i32, u64, u64, u32, u32, ctypes.c_double, i32], i32),
        "hbf_region_stats": ([vp, i32, ctypes.POINTER(u64)], None),
        "hbf_region_trace": ([vp, ctypes.POINTER(u64), u64], u64),
        "hbf_num_streams": ([vp], i32),
        "hbf_stream_config": ([vp, i32, ctypes.c_double, u32], None),
        "hbf_stream_take": ([vp, i32, vp, vp, vp, u64], u64),
        "hbf_stream_give": ([vp, i32, vp, vp, vp, u64], u64),
        "hbf_stream_stats": ([vp, i32, ctypes.POINTER(u64)], None),
        "hbf_interrupt": ([vp], i32),
        "hbf_coverage_write": ([vp, ctypes.c_char_p], i32),
        "hbf_set_memory_model": ([vp, ctypes.POINTER(ctypes.c_double), i32], i32),
        "hbf_set_port_channel": ([vp, i32, u32], None),
        "hbf_memory_stats": ([vp, ctypes.POINTER(u64)], None),
    }
    for name, (args, res) in sigs.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise CoSimError(f"{key} does not export {name}: not an hbmforge co-simulation library "
                             "or built from an older harness") from None
        fn.argtypes, fn.restype = args, res
    _LIBS[key] = lib
    return lib


class CoSim:
    """One simulated device: the kernel out of reset, empty memory, board-default port timing.

    ``CoSim.open(rtl, manifest)`` builds (or takes from the cache) and opens;
    ``CoSim(library, manifest)`` opens an existing library.
    """

    def __init__(self, library: str | Path, manifest: dict | str | Path | None = None, *,
                 trace_format: str | None = None):
        library = Path(library)
        if manifest is None:
            manifest = library.parent / "manifest.json"
        design = read_design(manifest)
        self.layout = design.layout
        self.manifest = dict(design.data)
        self.library = library
        if trace_format is None:                 # ask the build record next to the library
            info = library.parent / "build_info.json"
            if info.exists():
                trace_format = json.loads(info.read_text()).get("options", {}).get("trace") or ""
        self.trace_format = trace_format        # "fst", "vcd", "" (no tracing) or None (unknown)
        self._lib = _load(library)
        self._h = self._lib.hbf_create()
        if not self._h:
            raise CoSimError(f"hbf_create failed for {library}")
        n = self._lib.hbf_num_ports(self._h)
        names = list(self.layout.port_names)
        if n != len(names):
            self.close()
            raise CoSimError(f"{library} has {n} m_axi ports but the manifest lists {len(names)} ({names})")
        self.port_names = names
        self._timing = list(port_timings(self.layout))    # in cycles of the config's clock
        self._region_args: dict[int, tuple] = {}           # index -> set_region's arguments, the same
        self._ctrl_span = 1 << CTRL_ADDR_WIDTH
        self.last_stop: str | None = None
        self.memory_model = "ideal"
        self.memory_clock_mhz: float | None = None    # the clock a calibrated model's timing is in
        self.build_result = None          # set by open(): the BuildResult of the library

    @classmethod
    def open(cls, design, manifest=None, *, options=None, progress: bool = True) -> "CoSim":
        """Build (or take from the cache) and open; ``design`` is a design dir or Verilog file(s)."""
        from .build import build_library
        return cls.from_build(build_library(design, manifest, options=options, progress=progress))

    @classmethod
    def from_build(cls, result) -> "CoSim":
        """Open the library of a :class:`~hbmforge.sim.build.BuildResult`, keeping the result
        (``build_result``: stage times, cache hit) for reports."""
        sim = cls(result.library, result.manifest, trace_format=result.trace or "")
        sim.build_result = result
        return sim

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.hbf_destroy(self._h)
            self._h = None

    def __enter__(self) -> "CoSim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def handle(self) -> int:
        if not self._h:
            raise CoSimError("the co-simulation was closed")
        return self._h

    # -- registers ---------------------------------------------------------------------
    def _reg(self, reg: int | str) -> tuple[int, int]:
        if isinstance(reg, str):
            r = self.layout.reg(reg)          # ValueError naming the registers
            return r.offset, r.width
        addr = _count("register offset", reg, 0, self._ctrl_span - 4)
        if addr % 4:
            raise ValueError(f"register offset {addr:#x} is not a word offset below {self._ctrl_span:#x}")
        return addr, 32

    def reg_read(self, reg: int | str) -> int:
        """A register by offset (32 bits) or manifest name (64-bit ones read low word first)."""
        addr, width = self._reg(reg)
        value = self._lib.hbf_reg_read(self.handle, addr)
        if width == 64:
            value |= self._lib.hbf_reg_read(self.handle, addr + 4) << 32
        return value

    def reg_write(self, reg: int | str, value: int) -> None:
        addr, width = self._reg(reg)
        value = _count("register value", value, 0, (1 << width) - 1)
        self._lib.hbf_reg_write(self.handle, addr, value & 0xFFFFFFFF)
        if width == 64:
            self._lib.hbf_reg_write(self.handle, addr + 4, (value >> 32) & 0xFFFFFFFF)

    def start(self, *, interrupt: bool = True) -> None:
        """ap_start, with the done interrupt enabled (GIE, IER bit 0) unless told otherwise."""
        if interrupt:
            self.reg_write(0x04, 1)
            self.reg_write(0x08, 1)
        self.reg_write(0x00, 1)

    def ack_interrupt(self) -> int:
        """Clear the pending ISR bits (toggle-on-write); returns the bits that were set."""
        isr = self._lib.hbf_reg_read(self.handle, 0x0C)
        if isr:
            self._lib.hbf_reg_write(self.handle, 0x0C, isr)
        return isr

    # -- memory ------------------------------------------------------------------------
    def mem_write(self, addr: int, data) -> None:
        """Write bytes, a bytearray/memoryview or any numpy array (its raw bytes) at ``addr``."""
        if isinstance(data, np.ndarray):
            arr = np.ascontiguousarray(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            arr = np.frombuffer(data, np.uint8)
        else:
            raise TypeError(f"data must be bytes, a bytearray, a memoryview or a numpy array, "
                            f"got {type(data).__name__}")
        addr = _span(addr, arr.nbytes)
        if arr.nbytes:
            self._lib.hbf_mem_write(self.handle, addr, arr.ctypes.data, arr.nbytes)

    def mem_read(self, addr: int, n: int | None = None, dtype=None, *, count: int | None = None):
        """``n`` bytes at ``addr`` as ``bytes``; with ``dtype``, a numpy array (``count`` items or ``n`` bytes)."""
        if dtype is None:
            out = np.empty(_count("n", n, 0, 1 << 40), np.uint8)
        else:
            dt = np.dtype(dtype)
            items = (_count("count", count, 0, 1 << 40) if count is not None
                     else _count("n", n, 0, 1 << 40) // dt.itemsize)
            out = np.empty(items, dt)
        addr = _span(addr, out.nbytes)
        if out.nbytes:
            self._lib.hbf_mem_read(self.handle, addr, out.ctypes.data, out.nbytes)
        return out.tobytes() if dtype is None else out

    # -- time --------------------------------------------------------------------------
    def cycles(self) -> int:
        """Cycles since creation (the 16 reset cycles included)."""
        return self._lib.hbf_cycles(self.handle)

    def step(self, cycles: int) -> None:
        """Clock the model ``cycles`` times (0 <= cycles < 2**63)."""
        self._lib.hbf_step(self.handle, _count("cycles", cycles))

    def run_until_interrupt(self, max_cycles: int, *, timeout: float | None = None) -> bool:
        """Clock until ``interrupt`` is high: True if seen, False after ``max_cycles`` or ``timeout`` seconds.

        ``last_stop`` tells which: "interrupt", "max_cycles" or "timeout".
        """
        handle = self.handle
        left = _count("max_cycles", max_cycles)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0 or timeout != timeout):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = left if deadline is None and left <= _RUN_CHUNK else _RUN_CHUNK
        while True:
            n = min(left, chunk)
            if self._lib.hbf_run_until_interrupt(handle, n):
                self.last_stop = "interrupt"
                return True
            left -= n
            if left <= 0:
                self.last_stop = "max_cycles"
                return False
            if deadline is not None and time.monotonic() >= deadline:
                self.last_stop = "timeout"
                return False

    # -- memory timing and statistics --------------------------------------------------
    def num_ports(self) -> int:
        return self._lib.hbf_num_ports(self.handle)

    def port_index(self, port: int | str) -> int:
        if isinstance(port, str):
            return self.layout.port(port).index       # ValueError naming the ports
        return _count("port index", port, 0, len(self.port_names) - 1)

    def port_timing(self, port: int | str) -> PortTiming:
        return self._timing[self.port_index(port)]

    def set_port_timing(self, port: int | str, read_latency: int | None = None, write_latency: int | None = None,
                        bytes_per_cycle: float | None = None, max_outstanding: int | None = None, *,
                        timing: PortTiming | None = None) -> PortTiming:
        """Set a port's timing (ABI argument order); arguments left ``None`` keep their value."""
        i = self.port_index(port)
        if timing is None:
            changes = {k: v for k, v in (("read_latency", read_latency), ("write_latency", write_latency),
                                         ("bytes_per_cycle", bytes_per_cycle),
                                         ("max_outstanding", max_outstanding)) if v is not None}
            timing = replace(self._timing[i], **changes)
        self._timing[i] = timing
        self._apply_port_timing(i)
        return timing

    def _clock_ratio(self) -> float:
        """Kernel cycles of the memory's clock per cycle of the config's: 1 unless a calibrated model
        runs at another ``clock_mhz``."""
        if self.memory_clock_mhz is None:
            return 1.0
        return self.memory_clock_mhz / float(self.layout.config.clock)

    def _at_memory_clock(self, t: PortTiming, cap: float) -> PortTiming:
        """``t`` (cycles of the config's clock) at the memory clock: the same ns and GB/s."""
        f = self._clock_ratio()
        if f == 1.0:
            return t
        return PortTiming(max(1, round(t.read_latency * f)), max(1, round(t.write_latency * f)),
                          min(cap, t.bytes_per_cycle / f), t.max_outstanding)

    def _apply_port_timing(self, i: int) -> None:
        t = self._at_memory_clock(self._timing[i], self.layout.ports[i].data_width / 8)
        self._lib.hbf_set_port_timing(self.handle, i, t.read_latency, t.write_latency, float(t.bytes_per_cycle),
                                      t.max_outstanding)

    def _apply_region(self, index: int) -> None:
        base, size, timing, traced = self._region_args[index]
        t = self._at_memory_clock(timing, 1024.0)
        self._lib.hbf_set_region(self.handle, index, base, size, t.read_latency, t.write_latency,
                                 float(t.bytes_per_cycle), int(traced))

    def _apply_memory_clock(self) -> None:
        """Every port's and region's timing at the current memory clock (the AXI ports' GB/s and
        the regions' ns and GB/s do not change with the kernel clock; their cycles do)."""
        for i in range(len(self._timing)):
            self._apply_port_timing(i)
        for index in self._region_args:
            self._apply_region(index)

    def set_memory_model(self, model: str = "calibrated", *, clock_mhz: float | None = None
                         ) -> dict[str, float] | None:
        """Select the main memory's timing (docs/hbm-model.md): ``"ideal"`` (each port its own
        latency and bandwidth, as ``set_port_timing`` sets them; the default) or ``"calibrated"``
        (the board file's DRAM: channels shared by the ports, banks and rows, refresh, bus
        turnaround, the HBM switch; each port bound to its channel in the config's port map).

        ``clock_mhz`` (calibrated only; default the config's clock) is the kernel clock the DRAM
        timing is converted to cycles of: the same RTL clocked at 225 MHz sees the memory's ns and
        GB/s as fewer cycles and more bytes per cycle than at 300. The RTL does not depend on it.
        The ports' own rate caps and the regions beside the channels (host memory, DDR; their
        counters restart) keep their ns and GB/s too: ``set_port_timing`` and ``set_region`` take
        cycles of the config's clock, converted here.
        Returns the calibrated parameters in kernel cycles (None for ``ideal``)."""
        model = check_memory_model(model)
        if clock_mhz is not None and model == "ideal":
            raise ValueError("clock_mhz applies to the calibrated memory model only (the ideal model's "
                             "timing is per port, in cycles: set_port_timing)")
        cfg = self.layout.config
        clock = cfg.clock if clock_mhz is None else clock_mhz
        params = None if model == "ideal" else dram_params(cfg.board, clock)   # ValueError before any change
        handle = self.handle
        if model == "ideal":
            self._lib.hbf_set_memory_model(handle, None, 0)
            self.memory_model = model
            self.memory_clock_mhz = None
            self._apply_memory_clock()
            return None
        values = (ctypes.c_double * len(DRAM_PARAM_NAMES))(*(params[n] for n in DRAM_PARAM_NAMES))
        if not self._lib.hbf_set_memory_model(handle, values, len(DRAM_PARAM_NAMES)):
            raise CoSimError(f"the co-simulation refused the calibrated memory model of {cfg.board}: {params}")
        channels = cfg.port_channels()
        devices = int(params["devices"])
        for p in self.layout.ports:
            self._lib.hbf_set_port_channel(handle, p.index, channels.get(p.name, 0) % devices)
        self.memory_model = model
        self.memory_clock_mhz = float(clock)
        self._apply_memory_clock()
        return params

    def memory_stats(self) -> MemoryStats:
        out = (ctypes.c_uint64 * 8)()
        self._lib.hbf_memory_stats(self.handle, out)
        return MemoryStats(*out)

    def port_stats(self, port: int | str) -> PortStats:
        out = (ctypes.c_uint64 * 6)()
        self._lib.hbf_port_stats(self.handle, self.port_index(port), out)
        return PortStats(*out)

    def protocol_errors(self) -> ProtocolReport:
        buf = ctypes.create_string_buffer(_ERROR_TEXT_BYTES)
        count = self._lib.hbf_protocol_errors(self.handle, buf, len(buf))
        return ProtocolReport(count, buf.value.decode(errors="replace"))

    def check_protocol(self) -> None:
        """Raise :class:`AxiProtocolError` listing the violations, if any were seen."""
        report = self.protocol_errors()
        if report.count:
            shown = "\n  ".join(report.messages[:20])
            raise AxiProtocolError(f"{report.count} AXI protocol violation(s):\n  {shown}")

    # -- memory regions beside the ports' channels (host memory, DDR) ----------------------
    def set_region(self, index: int, base: int, size: int, read_latency: int, write_latency: int,
                   bytes_per_cycle: float, *, traced: bool = False) -> None:
        """Region ``index`` (0..7) = ``[base, base + size)`` with its own latency (cycles) and a
        bandwidth shared by every port (``size`` 0 removes it); ``traced`` records its bursts."""
        index = _count("region index", index, 0, MAX_REGIONS - 1)
        base = _span(base, _count("region size", size, 0, _ADDRESS_SPACE - 1))
        timing = PortTiming(read_latency, write_latency, bytes_per_cycle)     # checks the ranges
        self._region_args[index] = (base, size, timing, bool(traced))
        self._apply_region(index)

    def region_stats(self, index: int) -> RegionStats:
        out = (ctypes.c_uint64 * 6)()
        self._lib.hbf_region_stats(self.handle, _count("region index", index, 0, MAX_REGIONS - 1), out)
        return RegionStats(*out)

    def region_trace(self) -> np.ndarray:
        """The traced bursts recorded since the last call (and forgets them), as a structured array
        with fields ``cycle``, ``addr``, ``bytes``, ``port``, ``write``, ``region``, oldest first."""
        chunks = []
        while True:
            buf = np.empty((1 << 16, 3), np.uint64)
            n = self._lib.hbf_region_trace(self.handle, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
                                           buf.shape[0])
            chunks.append(buf[:n])
            if n < buf.shape[0]:
                break
        raw = np.concatenate(chunks)
        out = np.empty(len(raw), TRACE_DTYPE)
        out["cycle"], out["addr"] = raw[:, 0], raw[:, 1]
        info = raw[:, 2]
        out["bytes"] = info & 0xFFFF_FFFF
        out["port"] = (info >> 32) & 0xFF
        out["write"] = (info >> 40) & 0xFF
        out["region"] = (info >> 48) & 0xFF
        return out

    def trace_open(self, path: str | Path) -> None:
        """Start a waveform trace (FST or VCD, see ``trace_format``); needs ``BuildOptions(trace=True)``."""
        if self.trace_format == "":
            raise CoSimError("this co-simulation was built without trace support; "
                             "build with BuildOptions(trace=True)")
        self._lib.hbf_trace_open(self.handle, str(path).encode())

    def coverage_write(self, path: str | Path) -> Path:
        """Write the code coverage counted so far to ``path`` (``coverage.dat``; read it with
        :mod:`hbmforge.sim.coverage`); needs ``BuildOptions(coverage=True)``."""
        if not self._lib.hbf_coverage_write(self.handle, str(path).encode()):
            raise CoSimError("this co-simulation was built without coverage; build with BuildOptions(coverage=True)")
        return Path(path)

    # -- AXI4-Stream ports (the network links; hbmforge.sim.network joins several designs) -------
    def stream_index(self, stream: int | str) -> int:
        """A stream port by manifest order or by name/prefix (``"m_axis_net"``)."""
        if isinstance(stream, str):
            return [s.prefix for s in self.layout.streams].index(self.layout.stream(stream).prefix)
        return _count("stream index", stream, 0, max(0, len(self.layout.streams) - 1))

    def num_streams(self) -> int:
        return self._lib.hbf_num_streams(self.handle)

    def stream_config(self, stream: int | str, bytes_per_cycle: float, buffer_beats: int = 4) -> None:
        """Pace an out stream at ``bytes_per_cycle`` through a buffer of ``buffer_beats`` beats."""
        if isinstance(bytes_per_cycle, bool) or not isinstance(bytes_per_cycle, (int, float)) \
                or not bytes_per_cycle > 0:
            raise ValueError(f"bytes_per_cycle must be a number > 0, got {bytes_per_cycle!r}")
        self._lib.hbf_stream_config(self.handle, self.stream_index(stream), float(bytes_per_cycle),
                                    _count("buffer_beats", buffer_beats, 1, 1 << 20))

    def stream_take(self, stream: int | str, max_beats: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Beats that left an out stream since the last call: (data [n, bytes] uint8, stamps, lasts)."""
        i = self.stream_index(stream)
        width = self.layout.streams[i].port.data_width // 8
        n = _count("max_beats", max_beats, 1, 1 << 24)
        data, stamps, lasts = np.empty((n, width), np.uint8), np.empty(n, np.uint64), np.empty(n, np.uint8)
        got = self._lib.hbf_stream_take(self.handle, i, data.ctypes.data, stamps.ctypes.data, lasts.ctypes.data, n)
        return data[:got], stamps[:got], lasts[:got]

    def stream_give(self, stream: int | str, data: np.ndarray, stamps, lasts) -> None:
        """Queue beats (``data`` [n, bytes] uint8) into an in stream, beat ``k`` seen from cycle ``stamps[k]``."""
        i = self.stream_index(stream)
        width = self.layout.streams[i].port.data_width // 8
        data = np.ascontiguousarray(data, np.uint8).reshape(-1, width)
        stamps = np.ascontiguousarray(stamps, np.uint64).reshape(-1)
        lasts = np.ascontiguousarray(lasts, np.uint8).reshape(-1)
        if not len(data) == len(stamps) == len(lasts):
            raise ValueError(f"data, stamps and lasts must have one entry per beat, got {len(data)}, "
                             f"{len(stamps)}, {len(lasts)}")
        self._lib.hbf_stream_give(self.handle, i, data.ctypes.data, stamps.ctypes.data, lasts.ctypes.data, len(data))

    def stream_stats(self, stream: int | str) -> tuple[int, int]:
        """(beats through, beats waiting) of a stream port."""
        out = (ctypes.c_uint64 * 2)()
        self._lib.hbf_stream_stats(self.handle, self.stream_index(stream), out)
        return int(out[0]), int(out[1])

    def interrupt(self) -> bool:
        return bool(self._lib.hbf_interrupt(self.handle))

    def c_functions(self) -> dict[str, int]:
        """Addresses of the C functions a network model drives this device with (step, cycles,
        stream take/give, interrupt), and the handle."""
        lib = self._lib
        names = ("hbf_step", "hbf_cycles", "hbf_stream_take", "hbf_stream_give", "hbf_interrupt")
        out = {n: ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names}
        out["handle"] = self.handle
        return out
