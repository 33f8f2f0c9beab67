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

import time
from pathlib import Path
from typing import Mapping

from ..device import Buffer, Device
from ..errors import DeviceError, ProtocolViolationError

__all__ = ["SimDevice", "port_timings"]

_DONE = 0x1                 # GIE bit0, IER/ISR bit0: ap_done


def _per_port(name: str, value, ports: tuple[str, ...]) -> dict:
    """An option given once for all ports or as {port: value}."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = [p for p in value if p not in ports]
        if unknown:
            raise ValueError(f"{name}: unknown port(s) {unknown}; ports are {list(ports)}")
        return dict(value)
    return {p: value for p in ports}


def port_timings(manifest, *, read_latency=None, write_latency=None, bytes_per_cycle=None,
                 max_outstanding=None) -> dict:
    """Timing of every port: one channel of the board at the kernel clock, with overrides.

    Latencies are in kernel cycles (board ns converted at ``clock_mhz``);
    bytes/cycle = min(port width, channel_peak_gbps * 1e3 / clock_mhz). Each
    override is a number for all ports or a ``{port: number}`` dict.
    """
    from dataclasses import replace

    from hbmforge.sim.timing import board_port_timing

    names = manifest.port_names
    overrides = {"read_latency": _per_port("read_latency", read_latency, names),
                 "write_latency": _per_port("write_latency", write_latency, names),
                 "bytes_per_cycle": _per_port("bytes_per_cycle", bytes_per_cycle, names),
                 "max_outstanding": _per_port("max_outstanding", max_outstanding, names)}
    out = {}
    for p in manifest.ports:
        t = board_port_timing(manifest.board, manifest.clock_mhz, p.data_width)
        changes = {k: v[p.name] for k, v in overrides.items() if p.name in v}
        out[p.name] = replace(t, **changes) if changes else t
    return out


class SimDevice(Device):
    """A co-simulated kernel. ``cosim``: a CoSim instance or the path of its shared library."""

    backend = "sim"

    def __init__(self, manifest, cosim, *, read_latency=None, write_latency=None, bytes_per_cycle=None,
                 max_outstanding=None, chunk_cycles: int = 100_000, check_protocol: bool = True,
                 trace: str | Path | None = None):
        super().__init__(manifest)
        if isinstance(cosim, (str, Path)):
            from hbmforge.sim.cosim import CoSim

            cosim = CoSim(cosim, self.manifest.data)
        self._sim = cosim
        self._chunk = int(chunk_cycles)
        self._check_protocol = check_protocol
        self._protocol_errors_seen = 0
        try:
            nports = self._sim.num_ports()
            if nports != len(self.manifest.ports):
                raise DeviceError(f"co-simulation library has {nports} memory ports, the manifest of "
                                  f"{self.manifest.kernel!r} lists {len(self.manifest.ports)}; "
                                  "the library was built from another design")
            self._timings = port_timings(self.manifest, read_latency=read_latency, write_latency=write_latency,
                                         bytes_per_cycle=bytes_per_cycle, max_outstanding=max_outstanding)
            for p in self.manifest.ports:
                t = self._timings[p.name]
                self._sim.set_port_timing(p.index, t.read_latency, t.write_latency, t.bytes_per_cycle,
                                          t.max_outstanding)
            if trace is not None:
                self._sim.trace_open(str(trace))
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
            chunk = int(min(max(chunk * 0.05 / took, 1_000), 50_000_000))

    def _after_done(self) -> None:
        if self._read32(self._off("ISR")) & _DONE:
            self._write32(self._off("ISR"), _DONE)
        self._read32(self._off("CTRL"))                        # clears ap_done / ap_ready
        if self._check_protocol:
            count, text = self._sim.protocol_errors()
            if count > self._protocol_errors_seen:
                self._protocol_errors_seen = count
                raise ProtocolViolationError(
                    f"{self.manifest.kernel}: the co-simulation saw {count} AXI rule violation(s): {text}")

    # -- extras ------------------------------------------------------------------------
    def counters(self) -> dict:
        out = super().counters()
        stats = {}
        for p in self.manifest.ports:
            s = self._sim.port_stats(p.index)
            stats[p.name] = {"bytes_read": s[0], "bytes_written": s[1], "read_bursts": s[2],
                             "write_bursts": s[3], "r_beats": s[4], "crossings_4k": s[5]}
        out["sim"] = {"total_cycles": self._sim.cycles(), "ports": stats}
        return out

    def step(self, cycles: int) -> None:
        """Advance the model without waiting for anything (for tests and traces)."""
        self._check_open()
        self._sim.step(cycles)
