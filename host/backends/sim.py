"""The ``sim`` backend: the device protocol over the Verilator co-simulation.

The kernel's RTL runs in C++ (``hbmforge.sim.cosim.CoSim``, the C ABI of
docs/architecture.md §7); memory is one sparse address space in which the bank
of HBM pseudo-channel ``c`` starts at ``c * channel_size_mib`` MiB, and every
AXI port gets the latency and bandwidth of one memory channel of the board at
the kernel clock (overridable). ``wait`` lets the model run in C++ in chunks
until the kernel's interrupt, checking the wall clock between chunks, so a
hung kernel raises DeviceTimeoutError instead of hanging Python.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import numpy as np

from hbmforge.layout import DesignLayout

from ..checks import check_bool, check_int
from ..device import Buffer, Device
from ..errors import DeviceError, ProtocolViolationError

__all__ = ["SimDevice", "port_timings", "check_sim_device_options", "SIM_OPTIONS", "MAX_CHUNK_CYCLES"]

_DONE = 0x1                 # GIE bit0, IER/ISR bit0: ap_done
_TIMING_OPTIONS = ("read_latency", "write_latency", "bytes_per_cycle", "max_outstanding")
#: the options SimDevice takes (open_device adds ``build_options`` and ``progress`` for the build)
SIM_OPTIONS = _TIMING_OPTIONS + ("chunk_cycles", "check_protocol", "trace")
#: cycles of one C call between two wall-clock checks
MAX_CHUNK_CYCLES = (1 << 32) - 1
_MAX_STEP = (1 << 63) - 1


def _timing_value(name: str, value, where: str = ""):
    """One timing override, checked (type and range) by :class:`hbmforge.sim.timing.PortTiming`."""
    from hbmforge.sim.timing import PortTiming

    if isinstance(value, np.integer):
        value = int(value)
    if name == "bytes_per_cycle" and isinstance(value, (int, np.floating)) and not isinstance(value, bool):
        try:                                    # a rate: ints and NumPy floats as float (beyond float64: inf)
            value = float(value)
        except OverflowError:
            value = math.inf
    try:
        replace(PortTiming(1, 1, 1.0), **{name: value})
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}{err}") from None
    return value


def _per_port(name: str, value, ports: tuple[str, ...] | None = None) -> dict:
    """An option given once for all ports or as {port: value} -> {port or None: checked value}."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        bad = [p for p in value if not isinstance(p, str) or (ports is not None and p not in ports)]
        if bad:
            known = f"; ports are {list(ports)}" if ports is not None else " (ports are named: data, w0, ...)"
            raise ValueError(f"{name}: unknown port(s) {bad}{known}")
        return {p: _timing_value(name, v, f"{name} for port {p}: ") for p, v in value.items() if v is not None}
    value = _timing_value(name, value)
    return {p: value for p in ports} if ports is not None else {None: value}


def check_sim_device_options(**options) -> dict:
    """The options of :class:`SimDevice` checked (names, types, ranges) without a design, so that
    ``open_device`` can refuse them before it generates or builds anything. Returns them with
    defaults filled in."""
    unknown = sorted(k for k in options if k not in SIM_OPTIONS)
    if unknown:
        raise TypeError(f"unknown sim backend option(s) {unknown}; options: {', '.join(SIM_OPTIONS)}")
    out = {"chunk_cycles": 100_000, "check_protocol": True, "trace": None, **options}
    for name in _TIMING_OPTIONS:
        _per_port(name, out.get(name))
    out["chunk_cycles"] = check_int("chunk_cycles", out["chunk_cycles"], 1, MAX_CHUNK_CYCLES)
    out["check_protocol"] = check_bool("check_protocol", out["check_protocol"])
    trace = out["trace"]
    if trace is not None:
        if not isinstance(trace, (str, os.PathLike)):
            raise TypeError(f"trace must be a file path (str or Path) or None, got {type(trace).__name__}")
        if not str(trace) or Path(trace).is_dir():
            raise ValueError(f"trace must be the path of a file to write, got {str(trace)!r}")
    return out


def port_timings(layout: DesignLayout, *, read_latency=None, write_latency=None, bytes_per_cycle=None,
                 max_outstanding=None) -> dict:
    """Timing of every port: one channel of the board at the kernel clock, with overrides.

    Latencies are in kernel cycles (board ns converted at ``clock_mhz``);
    bytes/cycle = min(port width, channel_peak_gbps * 1e3 / clock_mhz). Each
    override is a number for all ports or a ``{port: number}`` dict; every value is checked
    (type and range, :class:`hbmforge.sim.timing.PortTiming`) and errors name the port.
    """
    from hbmforge.sim.timing import board_port_timing

    names = layout.port_names
    given = {"read_latency": read_latency, "write_latency": write_latency, "bytes_per_cycle": bytes_per_cycle,
             "max_outstanding": max_outstanding}
    overrides = {k: _per_port(k, v, names) for k, v in given.items()}
    cfg = layout.config
    out = {}
    for p in layout.ports:
        t = board_port_timing(cfg.board, cfg.clock, p.data_width)
        changes = {k: v[p.name] for k, v in overrides.items() if p.name in v}
        out[p.name] = replace(t, **changes) if changes else t
    return out


class SimDevice(Device):
    """A co-simulated kernel. ``design``: anything :func:`hbmforge.manifest.read_manifest` takes;
    ``cosim``: a CoSim instance or the path of its shared library (the device owns it: it is
    closed with the device, or when this constructor fails). Options are checked before the
    co-simulation is touched (:func:`check_sim_device_options`, :func:`port_timings`)."""

    backend = "sim"

    def __init__(self, design, cosim, *, read_latency=None, write_latency=None, bytes_per_cycle=None,
                 max_outstanding=None, chunk_cycles: int = 100_000, check_protocol: bool = True,
                 trace: str | Path | None = None):
        try:
            super().__init__(design)
            opts = check_sim_device_options(chunk_cycles=chunk_cycles, check_protocol=check_protocol, trace=trace)
            timings = port_timings(self.layout, read_latency=read_latency, write_latency=write_latency,
                                   bytes_per_cycle=bytes_per_cycle, max_outstanding=max_outstanding)
            if isinstance(cosim, (str, os.PathLike)):
                from hbmforge.sim.cosim import CoSim

                cosim = CoSim(cosim, self.design.data)
            elif not all(hasattr(cosim, m) for m in ("reg_read", "reg_write", "mem_read", "mem_write",
                                                      "run_until_interrupt", "num_ports")):
                raise TypeError(f"cosim must be a hbmforge.sim.CoSim or the path of its library, "
                                f"got {type(cosim).__name__}")
        except BaseException:
            if hasattr(cosim, "close") and not isinstance(cosim, (str, os.PathLike)):
                cosim.close()
            raise
        self._sim = cosim
        self._chunk = opts["chunk_cycles"]
        self._check_protocol = opts["check_protocol"]
        self._protocol_errors_seen = 0
        self._timings = timings
        try:
            nports = self._sim.num_ports()
            if nports != len(self.layout.ports):
                raise DeviceError(f"co-simulation library has {nports} memory ports, the manifest of "
                                  f"{self.layout.kernel!r} lists {len(self.layout.ports)}; "
                                  "the library was built from another design")
            for p in self.layout.ports:
                t = self._timings[p.name]
                self._sim.set_port_timing(p.index, t.read_latency, t.write_latency, t.bytes_per_cycle,
                                          t.max_outstanding)
            self._regions = self._set_regions()
            if opts["trace"] is not None:
                self._sim.trace_open(str(opts["trace"]))
            self.check_identity()
        except BaseException:
            self._sim.close()
            raise

    @property
    def sim(self):
        """The underlying CoSim (step, cycles, port stats, traces)."""
        return self._sim

    @property
    def timings(self) -> dict:
        return dict(self._timings)

    # -- primitives --------------------------------------------------------------------
    def _read32(self, offset: int) -> int:
        return self._sim.reg_read(offset)

    def _write32(self, offset: int, value: int) -> None:
        self._sim.reg_write(offset, value)

    def _mem_write(self, buf: Buffer, offset: int, data: memoryview) -> None:
        self._sim.mem_write(buf.address + offset, data)

    def _mem_read(self, buf: Buffer, offset: int, nbytes: int) -> bytes:
        return self._sim.mem_read(buf.address + offset, nbytes)

    def _close(self) -> None:
        self._sim.close()

    # -- the run handshake -------------------------------------------------------------
    def _before_start(self) -> None:
        if self._read32(self._off("ISR")) & _DONE:
            self._write32(self._off("ISR"), _DONE)             # toggle a stale done off
        self._write32(self._off("GIE"), 1)
        self._write32(self._off("IER"), _DONE)

    def _wait_until_done(self, deadline: float) -> bool:
        chunk = self._chunk
        while True:
            t0 = time.monotonic()
            if self._sim.run_until_interrupt(chunk):
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            # aim for ~50 ms per chunk so the timeout is checked often but cheaply
            took = max(now - t0, 1e-4)
            chunk = int(min(max(chunk * 0.05 / took, 1_000), 50_000_000, MAX_CHUNK_CYCLES))

    def _after_done(self) -> None:
        if self._read32(self._off("ISR")) & _DONE:
            self._write32(self._off("ISR"), _DONE)
        self._read32(self._off("CTRL"))                        # clears ap_done / ap_ready
        if self._check_protocol:
            count, text = self._sim.protocol_errors()
            if count > self._protocol_errors_seen:
                self._protocol_errors_seen = count
                raise ProtocolViolationError(
                    f"{self.layout.kernel}: the co-simulation saw {count} AXI rule violation(s): {text}")

    # -- memories beside the ports' channels (host memory, DDR) ----------------------------
    def _set_regions(self, traced=()) -> tuple:
        """Give the co-simulation the board's host and DDR regions (hbmforge.memory_map)."""
        from hbmforge.memory_map import memory_regions

        regions = memory_regions(self.layout.config.board_info)
        if not hasattr(self._sim, "set_region"):           # a test double without the memory hierarchy
            return ()
        clock = self.layout.config.clock
        for i, r in enumerate(regions):
            self._sim.set_region(i, r.base, r.size, r.latency_cycles(clock), r.latency_cycles(clock, write=True),
                                 r.bytes_per_cycle(clock), traced=r.kind in traced)
        return regions

    @property
    def memory_regions(self) -> tuple:
        """The host and DDR regions of the simulated address map (:class:`hbmforge.memory_map.MemoryRegion`)."""
        return self._regions

    def trace_memory(self, memory: str = "host", enable: bool = True) -> None:
        """Record every burst the kernel makes into ``memory`` ("host" or "ddr") from now on
        (what an observer of that memory sees); :meth:`memory_trace` hands the records out."""
        self._check_open()
        if memory not in ("host", "ddr"):
            raise ValueError(f"memory must be 'host' or 'ddr' (the regions beside the main memory), got {memory!r}")
        if not any(r.kind == memory for r in self._regions):
            raise ValueError(f"{self.layout.config.board} has no separate {memory} region to trace")
        traced = {r.kind for i, r in enumerate(self._regions) if self._traced(i)} | {memory}
        if not check_bool("enable", enable):
            traced.discard(memory)
        self._traced_kinds = traced
        self._set_regions(traced)

    def _traced(self, index: int) -> bool:
        return self._regions[index].kind in getattr(self, "_traced_kinds", ())

    def memory_trace(self):
        """The traced bursts since the last call, oldest first: a NumPy structured array with
        ``cycle`` (AR/AW handshake), ``addr``, ``bytes``, ``port`` (index), ``write`` (0/1), ``region``."""
        self._check_open()
        return self._sim.region_trace()

    # -- extras ------------------------------------------------------------------------
    def counters(self) -> dict:
        out = super().counters()
        stats = {}
        for p in self.layout.ports:
            s = self._sim.port_stats(p.index)
            stats[p.name] = {"bytes_read": s[0], "bytes_written": s[1], "read_bursts": s[2],
                             "write_bursts": s[3], "r_beats": s[4], "crossings_4k": s[5]}
        out["sim"] = {"total_cycles": self._sim.cycles(), "ports": stats}
        if self._regions:
            out["sim"]["regions"] = {
                r.name: dict(zip(("bytes_read", "bytes_written", "read_bursts", "write_bursts"),
                                 self._sim.region_stats(i)[:4]))
                for i, r in enumerate(self._regions)}
        return out

    def step(self, cycles: int) -> None:
        """Advance the model ``cycles`` (0 <= cycles < 2**63) without waiting for anything."""
        self._check_open()
        self._sim.step(check_int("cycles", cycles, 0, _MAX_STEP))
