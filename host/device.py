"""The narrow device protocol every backend implements (sim, pynq, xrt).

Allocate, copy to and from device memory, read and write registers by
manifest name, start a descriptor program, wait for it with a timeout, read
the performance counters. A backend supplies four primitives (32-bit register
read/write, memory read/write) and may override allocation and waiting; the
checks, the error messages and the ap_ctrl_hs handshake live here once.

A device reads the RTL/host contract one way only: ``Device(design)`` takes anything
:func:`hbmforge.manifest.read_manifest` takes (a manifest.json path, a design directory,
a manifest mapping, a :class:`~hbmforge.layout.DesignLayout`, a ``DesignManifest``);
``device.layout`` is the checked layout every register offset, port, descriptor format
and byte count comes from, ``device.design`` the manifest it was read from.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from hbmforge.layout import FAMILY_REGISTERS_BASE, DesignLayout, PortInfo, Register
from hbmforge.manifest import DesignManifest, read_manifest
from hbmforge.memory_map import check_memory_kind, region_for

from .allocator import PAGE_BYTES, BankAllocator
from .checks import check_int, check_str, check_timeout
from .errors import (BufferStateError, DesignMismatchError, DeviceBusyError, DeviceClosedError,
                     DeviceError, DeviceRunError, DeviceTimeoutError, OutOfDeviceMemoryError)

__all__ = ["Device", "Buffer", "RunStatus", "BankRegion", "CTRL_BITS", "merge_counters", "check_device"]

AP_START, AP_DONE, AP_IDLE, AP_READY = 0x1, 0x2, 0x4, 0x8
CTRL_BITS = {"ap_start": AP_START, "ap_done": AP_DONE, "ap_idle": AP_IDLE, "ap_ready": AP_READY}
MIB = 1 << 20


@dataclass(frozen=True)
class BankRegion:
    """The address range of one memory bank, as the kernel's masters see it."""

    name: str
    base: int
    size: int


@dataclass(frozen=True)
class RunStatus:
    """What wait() returns for a run that finished without error."""

    count: int                  # descriptors requested
    descriptors_done: int
    cycles: int                 # kernel cycles from ap_start to ap_done
    elapsed_s: float            # wall-clock time from start() to the end of wait()


class Buffer:
    """A range of device memory in the bank of one port; free it with ``device.free``."""

    __slots__ = ("_device", "port", "bank", "_address", "nbytes", "handle", "_freed", "memory")

    def __init__(self, device: "Device", port: str, bank: str, address: int, nbytes: int, handle: Any = None,
                 memory: str | None = None):
        self._device = device
        self.port = port
        self.bank = bank
        self._address = address
        self.nbytes = nbytes
        self.handle = handle          # backend object (pynq buffer, xrt bo), if any
        self._freed = False
        self.memory = memory or device.layout.config.board_info.memory.kind    # "hbm", "ddr" or "host"

    @property
    def device(self) -> "Device":
        return self._device

    @property
    def address(self) -> int:
        """Device address of byte 0 (what descriptors and pointer registers hold)."""
        if self._freed:
            raise BufferStateError(f"{self!r} was freed; its address is no longer valid")
        return self._address

    @property
    def freed(self) -> bool:
        return self._freed

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        state = ", freed" if self._freed else ""
        return f"Buffer({self.nbytes} bytes at {self._address:#x}, port {self.port!r}, {self.bank}{state})"


def _payload(data) -> memoryview:
    """Bytes of ``data`` as the device stores them (little-endian, C order)."""
    if isinstance(data, (bytes, bytearray)):
        return memoryview(data)
    if isinstance(data, memoryview):
        if not data.c_contiguous:
            raise ValueError("memoryview data must be C-contiguous")
        return data.cast("B")
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biuf":
            raise TypeError(f"cannot copy a {data.dtype} array to the device; use a bool, integer "
                            "or float array (or bytes)")
        arr = data
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        return memoryview(arr.reshape(-1).view(np.uint8))
    raise TypeError(f"device data must be bytes, bytearray, memoryview or a NumPy array, "
                    f"got {type(data).__name__}")


#: counters that are ratios: recomputed after a sum, never added
_RATIOS = ("mac_utilization",)


def merge_counters(total: Mapping, new: Mapping) -> dict:
    """The counters of two runs added key by key, nested dicts (per port, per backend) included.

    Ratios (``mac_utilization``) keep the newest value; the caller recomputes them from the sums.
    """
    out = {k: (merge_counters({}, v) if isinstance(v, Mapping) else v) for k, v in total.items()}
    for key, value in new.items():
        if isinstance(value, Mapping):
            out[key] = merge_counters(out.get(key) or {}, value)
        elif key in _RATIOS or key not in out or isinstance(value, bool) \
                or not isinstance(value, (int, float, np.number)):
            out[key] = value
        else:
            out[key] = out[key] + value
    return out


def check_device(device, name: str = "device") -> "Device":
    """``device`` if it is an open hbmforge Device (what every layer is built on)."""
    if not isinstance(device, Device):
        raise TypeError(f"{name} must be an open hbmforge Device, got {type(device).__name__}")
    device._check_open()
    return device


def _ctrl_text(ctrl: int) -> str:
    bits = [name for name, bit in CTRL_BITS.items() if ctrl & bit]
    return f"{ctrl:#x} ({', '.join(bits) or 'no bits set'})"


class Device(abc.ABC):
    """Base of every backend. Subclasses implement the four ``_``-primitives and call
    :meth:`check_identity` at the end of their constructor."""

    backend = "abstract"
    #: polling interval bounds for the default wait (seconds)
    poll_min_s, poll_max_s = 20e-6, 2e-3

    def __init__(self, design):
        self._design: DesignManifest = read_manifest(design)
        self._layout: DesignLayout = self._design.layout
        self._allocators: dict[str, BankAllocator] = {}
        self._buffers: set[Buffer] = set()
        self._closed = False
        self._run: tuple[float, int] | None = None     # (start time, count) of the run in flight

    # -- backend primitives ------------------------------------------------------------
    @abc.abstractmethod
    def _read32(self, offset: int) -> int:
        """One AXI4-Lite read of the control interface."""

    @abc.abstractmethod
    def _write32(self, offset: int, value: int) -> None:
        """One AXI4-Lite write of the control interface."""

    @abc.abstractmethod
    def _mem_write(self, buf: Buffer, offset: int, data: memoryview) -> None:
        """Copy ``data`` to ``buf`` at ``offset`` (bounds already checked)."""

    @abc.abstractmethod
    def _mem_read(self, buf: Buffer, offset: int, nbytes: int) -> bytes:
        """Copy ``nbytes`` from ``buf`` at ``offset`` (bounds already checked)."""

    def _close(self) -> None:
        """Release backend resources (after every buffer was freed)."""

    def _bank_region(self, port: PortInfo, memory: str | None = None) -> BankRegion:
        """The bank a port is bound to: HBM pseudo-channel ``c`` at ``c * channel_size_mib`` MiB;
        with ``memory`` ("host", "ddr") the region of that memory (:mod:`hbmforge.memory_map`)."""
        board = self._layout.config.board_info
        memory = memory if memory is not None else port.memory
        region = None if memory is None else region_for(board, memory)
        if region is not None:
            return BankRegion(region.name, region.base, region.size)
        mem = board.memory
        size = mem.channel_size_mib * MIB
        if mem.kind == "hbm":
            return BankRegion(f"{mem.sp_tag or 'HBM'}[{port.channel}]", port.channel * size, size)
        return BankRegion("DDR", 0, size)           # all ports of a DDR board share one memory

    def _allocate(self, port: PortInfo, nbytes: int, memory: str | None = None) -> tuple[str, int, Any]:
        """(bank name, address, handle) of fresh memory; backends with their own allocator override."""
        region = self._bank_region(port, memory)
        alloc = self._allocators.get(region.name)
        if alloc is None:
            alloc = self._allocators[region.name] = BankAllocator(region.name, region.base, region.size)
        return region.name, alloc.allocate(nbytes, **self._bank_phase(port, region, nbytes)), None

    def _bank_phase(self, port: PortInfo, region: BankRegion, nbytes: int) -> dict:
        """Where in the DRAM's bank rotation a stream buffer starts, on a memory all ports share (the
        Zynq PS DDR): port ``w<p>``'s at bank ``p x banks / ports``, so that the ports' streams, which
        advance together, keep to banks of their own instead of taking each other's rows (row
        address | bank | column). Small buffers (under one rotation) keep page alignment."""
        board = self._layout.config.board_info
        dram = board.memory.dram
        if board.memory.kind == "hbm" or dram is None or region.name != "DDR" or port.role != "stream":
            return {}
        period = dram.banks * dram.page_bytes
        ports = self._layout.config.stream_ports
        if nbytes < period or ports < 2 or period % PAGE_BYTES:
            return {}
        step = max(dram.banks // ports, 1) * dram.page_bytes
        return {"period": period, "phase": (int(port.name[1:]) * step) % period}

    def _release(self, buf: Buffer) -> None:
        self._allocators[buf.bank].release(buf._address)

    def _before_start(self) -> None:
        """Hook run just before ap_start (the sim backend arms the interrupt here)."""

    def _wait_until_done(self, deadline: float) -> bool:
        """True once ap_done was seen, False if ``deadline`` (time.monotonic) passed first."""
        pause = self.poll_min_s
        while True:
            if self._read32(self._off("CTRL")) & AP_DONE:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, self.poll_max_s)

    def _after_done(self) -> None:
        """Hook run once a run finished (the sim backend acknowledges the interrupt here)."""

    # -- properties --------------------------------------------------------------------
    @property
    def design(self) -> DesignManifest:
        """The checked manifest of the design (its file path, top module, Verilog file)."""
        return self._design

    @property
    def layout(self) -> DesignLayout:
        """The DesignLayout of the design on this device: registers, ports, descriptor formats,
        engine parameters and byte counts."""
        return self._layout

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        return self._run is not None

    def live_buffers(self) -> list[Buffer]:
        return sorted(self._buffers, key=lambda b: b._address)

    # -- memory ------------------------------------------------------------------------
    def alloc(self, nbytes: int, port: str = "data", memory: str | None = None) -> Buffer:
        """A buffer of ``nbytes`` in the bank bound to ``port``, starting on a 4 KiB page.

        ``memory`` places it elsewhere in the board's hierarchy: ``"hbm"`` (or the board's main
        memory), ``"ddr"`` (the DDR4 beside the HBM, channel 0) or ``"host"`` (host memory the
        card reaches over PCIe: an XRT host-only buffer; the PS DDR on a Zynq board). The port's
        engines reach it there; on hardware the port must be linked to that memory.
        """
        self._check_open()
        nbytes = check_int("nbytes", nbytes, lo=1)
        if not isinstance(port, str):
            raise TypeError(f"port must be a port name ({', '.join(self._layout.port_names)}), "
                            f"got {type(port).__name__}")
        spec = self._layout.port(port)
        if memory is not None:
            memory = check_memory_kind(self._layout.config.board_info, memory)
        if spec.memory is not None:                  # the port is linked to that memory (data_memory: ddr)
            if memory not in (None, spec.memory):
                raise ValueError(f"port {port} is linked to {spec.memory} (config data_memory); it cannot "
                                 f"reach {memory} memory")
            memory = spec.memory
        region = self._bank_region(spec, memory)
        if nbytes > region.size:
            raise OutOfDeviceMemoryError(f"bank {region.name}: cannot allocate {nbytes} bytes for port {port}; "
                                         f"the bank holds {region.size} bytes")
        bank, address, handle = self._allocate(spec, nbytes) if memory is None else \
            self._allocate(spec, nbytes, memory)
        if address % PAGE_BYTES:
            raise DeviceError(f"{self.backend} backend returned address {address:#x} for port {port}, "
                              f"not {PAGE_BYTES}-byte aligned")
        buf = Buffer(self, port, bank, address, nbytes, handle, memory)
        self._buffers.add(buf)
        return buf

    def free(self, buf: Buffer) -> None:
        self._check_buffer(buf, "buf")
        self._release(buf)
        buf._freed = True
        self._buffers.discard(buf)

    def write(self, buf: Buffer, data, offset: int = 0) -> None:
        """Copy bytes or a NumPy array (its little-endian bytes, C order) into ``buf`` at ``offset``."""
        self._check_open()
        self._check_buffer(buf, "buf")
        offset = check_int("offset", offset, lo=0)
        payload = _payload(data)
        if offset + payload.nbytes > buf.nbytes:
            raise ValueError(f"buffer too small: writing {payload.nbytes} bytes at offset {offset} "
                             f"needs {offset + payload.nbytes} bytes, {buf!r} has {buf.nbytes}")
        if payload.nbytes:
            self._mem_write(buf, offset, payload)

    def read(self, buf: Buffer, nbytes: int | None = None, offset: int = 0) -> bytes:
        """``nbytes`` (default: the rest of the buffer) from ``buf`` at ``offset``."""
        self._check_open()
        self._check_buffer(buf, "buf")
        offset = check_int("offset", offset, lo=0, hi=buf.nbytes)
        nbytes = buf.nbytes - offset if nbytes is None else check_int("nbytes", nbytes, lo=0)
        if offset + nbytes > buf.nbytes:
            raise ValueError(f"read past the end of the buffer: {nbytes} bytes at offset {offset} "
                             f"needs {offset + nbytes} bytes, {buf!r} has {buf.nbytes}")
        return bytes(self._mem_read(buf, offset, nbytes)) if nbytes else b""

    # -- registers ---------------------------------------------------------------------
    def _off(self, name: str) -> int:
        return self._layout.reg(name).offset

    def _reg(self, name) -> Register:
        return self._layout.reg(check_str("register name", name))

    def read_reg(self, name: str) -> int:
        """Value of a manifest register (64-bit ones read low word first).

        Reading CTRL clears ap_done and ap_ready (clear on read), as on hardware.
        """
        self._check_open()
        spec = self._reg(name)
        value = self._read32(spec.offset)
        if spec.width == 64:
            value |= self._read32(spec.offset + 4) << 32
        return value

    def write_reg(self, name: str, value: int) -> None:
        self._check_open()
        spec = self._reg(name)
        if not spec.writable:
            raise ValueError(f"register {name} is read-only ({spec.description})")
        value = check_int(f"value for {name}", value, lo=0, hi=(1 << spec.width) - 1)
        self._write32(spec.offset, value & 0xFFFF_FFFF)
        if spec.width == 64:
            self._write32(spec.offset + 4, value >> 32)

    # -- runs --------------------------------------------------------------------------
    def start(self, program: Buffer, count: int) -> None:
        """Point the kernel at ``count`` descriptors in ``program`` and raise ap_start."""
        self._check_open()
        self._check_buffer(program, "program")
        if program.port != "data":
            raise ValueError(f"the descriptor program must be in a 'data' port buffer, got port {program.port!r}")
        count = check_int("count", count, lo=1, hi=0xFFFF_FFFF)
        size = self._layout.descriptor_bytes
        need = count * size
        if need > program.nbytes:
            raise ValueError(f"count={count} descriptors need {need} bytes; the program buffer holds "
                             f"{program.nbytes} ({program.nbytes // size} descriptors)")
        if self._run is not None:
            raise DeviceBusyError("a run is still in flight; call wait() before starting another")
        ctrl = self._read32(self._off("CTRL"))
        if not ctrl & AP_IDLE:
            raise DeviceBusyError(f"kernel is not idle (CTRL={_ctrl_text(ctrl)}); cannot start")
        self._before_start()
        self.write_reg("program", program.address)
        self.write_reg("count", count)
        self._run = (time.monotonic(), count)
        try:
            self._write32(self._off("CTRL"), AP_START)
        except BaseException:
            self._run = None                # ap_start never reached the kernel
            raise

    def wait(self, timeout: float = 10.0) -> RunStatus:
        """Block until ap_done; raise DeviceTimeoutError after ``timeout`` seconds, DeviceRunError
        if the kernel stopped on a bad descriptor.

        After a timeout (or Ctrl-C) the run is still in flight: ``wait()`` again. Any other
        failure while waiting ends the run on the host side, so the device stays usable.
        """
        self._check_open()
        timeout = check_timeout(timeout)
        if self._run is None:
            raise DeviceError("wait() with no run in flight; call start() first")
        started, count = self._run
        try:
            finished = self._wait_until_done(time.monotonic() + timeout)
            if not finished:
                ctrl = self._read32(self._off("CTRL"))
                if not ctrl & AP_DONE:
                    status = self.read_reg("STATUS")
                    done = self.read_reg("DESC_DONE")
                    raise DeviceTimeoutError(
                        f"{self._layout.kernel}: run of {count} descriptor(s) did not finish within "
                        f"{timeout} s; last CTRL={_ctrl_text(ctrl)}, STATUS={status:#x}, "
                        f"DESC_DONE={done}; the run may still be in flight (wait() again or reset the device)")
        except (DeviceTimeoutError, KeyboardInterrupt):
            raise                           # still in flight: wait() again
        except BaseException:
            self._run = None
            raise
        self._run = None
        self._after_done()
        elapsed = time.monotonic() - started
        status = self.read_reg("STATUS")
        done = self.read_reg("DESC_DONE")
        if status & 1:
            code, index = (status >> 8) & 0xFF, status >> 16
            raise DeviceRunError(
                f"{self._layout.kernel}: descriptor {index} failed: "
                f"{self._layout.error_text(code)} (error code {code}); "
                f"{done} of {count} descriptor(s) completed",
                code=code, index=index, descriptors_done=done)
        return RunStatus(count=count, descriptors_done=done, cycles=self.read_reg("CYCLES"), elapsed_s=elapsed)

    def run(self, program: Buffer, count: int, timeout: float = 10.0) -> RunStatus:
        """start() then wait(); ``timeout`` is checked before the run starts."""
        timeout = check_timeout(timeout)
        self.start(program, count)
        return self.wait(timeout)

    def counters(self) -> dict:
        """Performance counters of the last run: totals and per-port bytes."""
        self._check_open()
        ports = {p.name: {"bytes_read": self.read_reg(f"{p.name.upper()}_BYTES_READ"),
                          "bytes_written": self.read_reg(f"{p.name.upper()}_BYTES_WRITTEN")}
                 for p in self._layout.ports}
        cycles = self.read_reg("CYCLES")
        mac_ops = self.read_reg("MAC_OPS")
        peak = self._layout.macs_per_cycle
        return {
            "cycles": cycles,
            "stall_cycles": self.read_reg("STALL_CYCLES"),
            "mac_ops": mac_ops,
            "bytes_read": sum(p["bytes_read"] for p in ports.values()),
            "bytes_written": sum(p["bytes_written"] for p in ports.values()),
            "descriptors_done": self.read_reg("DESC_DONE"),
            "mac_utilization": mac_ops / (cycles * peak) if cycles else 0.0,
            "ports": ports,
            # the registers engine families add (FamilyRegister): CACHE_HITS -> "cache_hits", ...
            **{r.name.lower(): self.read_reg(r.name) for r in self._layout.registers
               if r.offset >= FAMILY_REGISTERS_BASE},
        }

    # -- identity ----------------------------------------------------------------------
    def check_identity(self) -> None:
        """Refuse a kernel that is not the design of this manifest (ID, VERSION, HASH)."""
        m = self._layout
        kid = self.read_reg("ID")
        if kid != m.kernel_id:
            raise DesignMismatchError(
                f"no hbmforge kernel answers on this control interface: ID reads {kid:#010x}, "
                f"expected {m.kernel_id:#010x}")
        version = self.read_reg("VERSION")
        if version != m.layout_version:
            raise DesignMismatchError(
                f"kernel layout version {version >> 16}.{version & 0xFFFF} differs from the manifest's "
                f"{m.layout_version >> 16}.{m.layout_version & 0xFFFF}; regenerate the design or use "
                "the matching hbmforge")
        h = self.read_reg("HASH")
        if h != m.hash64:
            raise DesignMismatchError(
                f"design hash mismatch: the device's HASH register reads {h:#018x}, the manifest of "
                f"{m.kernel!r} expects {m.hash64:#018x} (design_hash {m.design_hash[:16]}...); the "
                "loaded kernel was built from another config or hbmforge version")

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        for buf in list(self._buffers):
            try:
                self._release(buf)
            finally:
                buf._freed = True
        self._buffers.clear()
        self._closed = True
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- checks ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DeviceClosedError(f"{self.backend} device for {self._layout.kernel!r} is closed")

    def _check_buffer(self, buf, what: str) -> None:
        if not isinstance(buf, Buffer):
            raise TypeError(f"{what} must be a Buffer from device.alloc(), got {type(buf).__name__}")
        if buf._device is not self:
            raise BufferStateError(f"{what} {buf!r} belongs to another device")
        if buf._freed:
            raise BufferStateError(f"{what} {buf!r} was freed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._buffers)} buffers"
        return f"<{type(self).__name__} {self._layout.kernel!r} ({self.backend}), {state}>"
