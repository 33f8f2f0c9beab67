"""Test helpers, not a backend: the kernel's register interface in Python over the golden model.

:class:`GoldenKernel` behaves like the RTL at the AXI4-Lite level (ap_ctrl_hs
handshake, clear-on-read ap_done, toggle-on-write ISR, level interrupt,
STATUS/DESC_DONE/counters cleared at start) and executes programs with
:func:`hbmforge.numerics.program.execute`. :class:`GoldenDevice` runs the host
protocol over it in-process; :class:`FakeCoSim` gives it the CoSim interface
so the sim backend's handshake can be tested without Verilator.
"""
from __future__ import annotations

import time

from hbmforge.config import parse_config
from hbmforge.layout import KERNEL_ID, LAYOUT_VERSION, DesignLayout
from hbmforge.numerics.program import SparseMemory, execute
from hbmforge.host.device import Device

from designs import tiny_config_dict

AXI_LITE_CYCLES = 4          # what one register access costs in the model


def tiny_copy_layout(**copy) -> DesignLayout:
    """The tiny design plus a COPY/FILL engine (with it every port is writable)."""
    cfg = tiny_config_dict()
    cfg["name"] = "tiny_copy"
    cfg["engines"].append({"kind": "copy", **copy})
    return DesignLayout(parse_config(cfg))


class GoldenKernel:
    def __init__(self, layout: DesignLayout, *, hash64: int | None = None, kernel_id: int = KERNEL_ID,
                 version: int = LAYOUT_VERSION, hang: bool = False, min_cycles: int = 50):
        self.layout = layout
        self.memory = SparseMemory()
        self.hash64 = layout.hash64 if hash64 is None else hash64
        self.kernel_id, self.version = kernel_id, version
        self.hang = hang
        self.min_cycles = min_cycles
        self.cycle = 0
        self.clock_hz = layout.config.clock * 1e6
        self._last_access = time.monotonic()
        self.args: dict[int, int] = {}                  # stored rw words by offset
        self.gie = self.ier = self.isr = 0
        self.done = self.ready = False
        self.finish_at: int | None = None               # cycle at which the run in flight ends
        self.ro: dict[str, int] = {}                    # read-only registers by name
        self.runs = 0
        self._off = {r.name: r for r in layout.registers}
        self._by_offset = {}
        for r in layout.registers:
            self._by_offset[r.offset] = (r, 0)
            if r.width == 64:
                self._by_offset[r.offset + 4] = (r, 1)

    # -- AXI4-Lite ---------------------------------------------------------------------
    def _tick(self) -> None:
        """A register access costs a few cycles; the kernel also ran while the host slept."""
        now = time.monotonic()
        self.step(max(AXI_LITE_CYCLES, int((now - self._last_access) * self.clock_hz)))
        self._last_access = now

    def reg_read(self, addr: int) -> int:
        self._tick()
        hit = self._by_offset.get(addr)
        if hit is None:
            return 0
        reg, half = hit
        if reg.name == "CTRL":
            # ap_start reads 0: the model accepts a start in the cycle it is written
            value = self.done << 1 | (self.finish_at is None) << 2 | self.ready << 3
            self.done = self.ready = False
            return value
        if reg.name == "GIE":
            return self.gie
        if reg.name == "IER":
            return self.ier
        if reg.name == "ISR":
            return self.isr
        if reg.access != "ro":
            return self.args.get(addr, 0)
        value = {"ID": self.kernel_id, "VERSION": self.version, "HASH": self.hash64}.get(reg.name)
        if value is None:
            value = self.ro.get(reg.name, 0)
        return (value >> (32 * half)) & 0xFFFF_FFFF

    def reg_write(self, addr: int, data: int) -> None:
        self._tick()
        hit = self._by_offset.get(addr)
        if hit is None:
            return
        reg, _ = hit
        if reg.name == "CTRL":
            if data & 1 and self.finish_at is None:
                self._start()
        elif reg.name == "GIE":
            self.gie = data & 1
        elif reg.name == "IER":
            self.ier = data & 3
        elif reg.name == "ISR":
            self.isr ^= data & 3
        elif reg.access != "ro":
            self.args[addr] = data & 0xFFFF_FFFF

    def _arg(self, name: str) -> int:
        reg = self._off[name]
        value = self.args.get(reg.offset, 0)
        if reg.width == 64:
            value |= self.args.get(reg.offset + 4, 0) << 32
        return value

    def _start(self) -> None:
        self.runs += 1
        self.ro = {}
        result = execute(self.memory, self._arg("program"), self._arg("count"), self.layout)
        cycles = max(self.min_cycles, result.mac_ops // self.layout.macs_per_cycle)
        self.last_result = result
        self.ro = {"STATUS": result.status, "DESC_DONE": result.descriptors_done, "CYCLES": cycles,
                   "MAC_OPS": result.mac_ops}
        for port, nbytes in zip(self.layout.ports, result.bytes_written):
            self.ro[f"{port.name.upper()}_BYTES_WRITTEN"] = nbytes
        for i, nbytes in enumerate(result.weight_bytes_read):
            self.ro[f"W{i}_BYTES_READ"] = nbytes
        self.finish_at = (1 << 62) if self.hang else self.cycle + cycles

    # -- time --------------------------------------------------------------------------
    def step(self, cycles: int) -> None:
        self.cycle += cycles
        if self.finish_at is not None and self.cycle >= self.finish_at:
            self.finish_at = None
            self.done = self.ready = True
            self.isr |= self.ier & 1

    @property
    def interrupt(self) -> bool:
        return bool(self.gie and (self.ier & self.isr))

    def run_until_interrupt(self, max_cycles: int) -> bool:
        if self.interrupt:
            return True
        if self.finish_at is not None and self.finish_at - self.cycle <= max_cycles:
            self.step(self.finish_at - self.cycle)
            return self.interrupt
        self.step(max_cycles)
        return self.interrupt


class GoldenDevice(Device):
    """The host protocol over an in-process GoldenKernel (tests only); ``design``: anything
    :func:`hbmforge.manifest.read_manifest` takes."""

    backend = "golden"

    def __init__(self, design, **kernel_options):
        super().__init__(design)
        self.kernel = GoldenKernel(self.layout, **kernel_options)
        self.check_identity()

    def _read32(self, offset):
        return self.kernel.reg_read(offset)

    def _write32(self, offset, value):
        self.kernel.reg_write(offset, value)

    def _mem_write(self, buf, offset, data):
        self.kernel.memory.write(buf.address + offset, data)

    def _mem_read(self, buf, offset, nbytes):
        return self.kernel.memory.read(buf.address + offset, nbytes)


class FakeCoSim:
    """The CoSim interface (C ABI names without ``hbf_``) over a GoldenKernel."""

    def __init__(self, layout: DesignLayout, **kernel_options):
        self.kernel = GoldenKernel(layout, **kernel_options)
        self.timings: dict[int, tuple] = {}
        self.closed = False
        self.protocol = (0, "")

    def num_ports(self) -> int:
        return len(self.kernel.layout.ports)

    def set_port_timing(self, port, read_latency, write_latency, bytes_per_cycle, max_outstanding):
        self.timings[port] = (read_latency, write_latency, bytes_per_cycle, max_outstanding)

    def reg_read(self, addr):
        return self.kernel.reg_read(addr)

    def reg_write(self, addr, data):
        self.kernel.reg_write(addr, data)

    def mem_write(self, addr, data):
        self.kernel.memory.write(addr, data)

    def mem_read(self, addr, n):
        return self.kernel.memory.read(addr, n)

    def step(self, cycles):
        self.kernel.step(cycles)

    def run_until_interrupt(self, max_cycles):
        return self.kernel.run_until_interrupt(max_cycles)

    def cycles(self):
        return self.kernel.cycle

    def port_stats(self, port):
        return (0, 0, 0, 0, 0, 0)

    def protocol_errors(self):
        return self.protocol

    def trace_open(self, path):
        pass

    def close(self):
        self.closed = True
