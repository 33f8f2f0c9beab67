"""A ``pynq.Device`` whose programmable logic is the hbmforge co-simulation.

Ordinary PYNQ code then runs against the simulated kernel, unchanged::

    sim = hbmforge.host.open_device(config)                 # the sim backend
    dev = SimPynqDevice(sim)
    bit = dev.write_overlay("overlay/")                     # <kernel>.bit + <kernel>.hwh
    ol = pynq.Overlay(str(bit), device=dev)
    ip = getattr(ol, f"{kernel}_0")                         # the name bd.tcl gives it on a board
    buf = pynq.allocate((n,), np.uint8, target=dev)
    buf[:] = data; buf.sync_to_device()
    ip.register_map.program = buf.device_address
    ip.register_map.CTRL.AP_START = 1
    while not ip.register_map.CTRL.AP_DONE: pass

PYNQ is not patched. The device supplies what PYNQ asks a device for: the
metadata of a bitstream (the .hwh beside it, parsed by PYNQ's own parser;
``write_overlay`` renders one from the manifest, describing the system
bd.tcl builds on a Zynq UltraScale+), register access (the ``REGISTER_RW``
capability, as PYNQ's XRT devices have), and memory (``pynq.allocate``
buffers whose ``device_address`` is an address in the simulated memory;
``sync_to_device``/``sync_from_device`` copy into and out of it).

Time: the simulation advances only when asked. Each read of CTRL (what a
polling loop does) first lets the kernel run ``poll_cycles`` cycles, as wall
time passes between two polls on a board. A CTRL read that shows ap_done
also checks the co-simulation's AXI protocol monitors, so a kernel that broke
an AXI rule fails the PYNQ code that ran it (``check_protocol=False`` to
only count violations).
"""
from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np

from hbmforge.kernel_interface import CONTROL_RANGE
from hbmforge.package_templates import CONTROL_BASE, package_context, render_template

from hbmforge.manifest import DesignManifest, read_manifest

from .backends.pynq import import_pynq
from .checks import check_bool, check_int, check_str
from .device import Device
from .errors import DesignMismatchError, ProtocolViolationError

__all__ = ["SimPynqDevice", "write_sim_overlay", "SIM_BIT_MAGIC"]

SIM_BIT_MAGIC = b"hbmforge co-simulation overlay"

_pynq = import_pynq()            # this module is PYNQ-specific: fail here, with the install hint


def write_sim_overlay(design, directory) -> Path:
    """Write ``<kernel>.bit`` (a stand-in naming the design) and ``<kernel>.hwh``; return the .bit.

    The pair is what ``pynq.Overlay`` needs to find; the .hwh is rendered
    from rtl/templates/pynq/overlay.hwh.j2 and places the kernel where
    bd.tcl places it on a board (instance ``<kernel>_0``, s_axi_control at
    0xA0000000).
    """
    m = read_manifest(design)
    kernel, design_hash = m.layout.kernel, m.layout.design_hash
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or Path, got {type(directory).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    bit = out / f"{kernel}.bit"
    bit.write_bytes(SIM_BIT_MAGIC + f"\nkernel {kernel}\ndesign_hash {design_hash}\n".encode())
    bit.with_suffix(".hwh").write_text(render_template("pynq/overlay.hwh.j2", package_context(m.data)))
    return bit


def _sim_bit_hash(path: Path) -> str | None:
    data = Path(path).read_bytes()
    if not data.startswith(SIM_BIT_MAGIC):
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("design_hash "):
            return line.split(" ", 1)[1].strip()
    return None


class _SimMemory:
    """The memory ``pynq.allocate`` draws from: the bank of one kernel port in the simulation."""

    def __init__(self, device: "SimPynqDevice", port: str = "data"):
        self.device = device
        self.port = port

    def allocate(self, shape, dtype, port: str | None = None, **kwargs):
        try:
            dtype = np.dtype(dtype)
        except TypeError as err:
            raise TypeError(f"dtype must be a NumPy dtype, got {dtype!r} ({err})") from None
        dims = (shape,) if not isinstance(shape, (tuple, list)) else tuple(shape)
        dims = tuple(check_int(f"shape[{i}]", d, 0) for i, d in enumerate(dims))
        count = 1
        for d in dims:
            count *= d
        nbytes = max(1, count * dtype.itemsize)
        shape = dims
        sim_buf = self.device.sim_device.alloc(nbytes, port or self.port)
        host = bytearray(nbytes)
        arr = _pynq.buffer.PynqBuffer(shape, dtype, buffer=host, device=self.device,
                                     device_address=sim_buf.address, bo=sim_buf, coherent=False)
        # PYNQ frees through these: PynqBuffer.freebuffer() -> return_to.return_pointer(pointer)
        arr.memory = self
        arr.pointer = sim_buf
        arr.return_to = self
        arr.freed = True            # nothing for PYNQ to munmap: the host side is a Python bytearray
        return arr

    def return_pointer(self, sim_buf):
        if not sim_buf.freed and not self.device.sim_device.closed:
            self.device.sim_device.free(sim_buf)


class SimPynqDevice(_pynq.Device):
    """``pynq.Device`` over an hbmforge sim-backend device (``hbmforge.host.backends.sim.SimDevice``).

    ``sim_device`` is any open hbmforge Device that can ``step(cycles)``;
    ``poll_cycles`` is how far the kernel runs on each read of CTRL.
    """

    AP_DONE = 0x2

    def __init__(self, sim_device, *, poll_cycles: int = 1000, check_protocol: bool = True,
                 tag: str = "hbmforge_sim"):
        if not isinstance(sim_device, Device) or not hasattr(sim_device, "step"):
            raise TypeError(f"sim_device must be a simulated hbmforge device (with step()), got "
                            f"{type(sim_device).__name__}")
        sim_device._check_open()
        poll_cycles = check_int("poll_cycles", poll_cycles, 0, (1 << 32) - 1)
        check_protocol = check_bool("check_protocol", check_protocol)
        super().__init__(check_str("tag", tag))
        self.sim_device = sim_device
        self.poll_cycles = poll_cycles
        self.name = f"hbmforge co-simulation of {sim_device.layout.kernel}"
        self.capabilities = {"REGISTER_RW": True, "MEMORY_MAPPED": False, "CALLABLE": False}
        self.timestamp = ""
        self.bitfile_name = None
        self.control_base = CONTROL_BASE
        self.check_protocol = check_protocol
        self._violations_seen = 0
        self.clear_dict()

    @property
    def design(self) -> DesignManifest:
        """The design of the simulated kernel (``sim_device.design``)."""
        return self.sim_device.design

    def write_overlay(self, directory) -> Path:
        """The .bit/.hwh pair of this design for ``pynq.Overlay`` (see :func:`write_sim_overlay`)."""
        return write_sim_overlay(self.design, directory)

    # -- what pynq.Overlay asks of a device ----------------------------------------------
    def get_bitfile_metadata(self, bitfile_name, partial: bool = False):
        from pynqmetadata.frontends import Metadata
        from pynqmetadata.views.runtime import RuntimeMetadataParser

        hwh = Path(bitfile_name).with_suffix(".hwh")
        if not hwh.is_file():
            raise RuntimeError(f"no {hwh.name} beside {bitfile_name}; write the pair with "
                               "SimPynqDevice.write_overlay(directory)")
        parser = RuntimeMetadataParser(Metadata(input=str(hwh)))
        for name, ip in parser.ip_dict.items():
            theirs = ip.get("parameters", {}).get("HBMFORGE_DESIGN_HASH")
            lay = self.sim_device.layout
            if theirs is not None and theirs != lay.design_hash:
                raise DesignMismatchError(
                    f"{hwh} describes design {theirs[:16]}..., the simulated kernel is "
                    f"{lay.design_hash[:16]}... ({lay.kernel}); write the overlay "
                    "from this design")
        parser.clock_dict = {}          # no PS clock generator to program in a simulation
        parser.bin_data = None
        parser.xclbin_data = None
        parser.dtbo_data = None
        return parser

    def download(self, bitstream, parser=None):
        theirs = _sim_bit_hash(bitstream.bitfile_name)
        if theirs is None:
            raise DesignMismatchError(f"{bitstream.bitfile_name} is not a co-simulation overlay; a "
                                      "simulated device loads the .bit written by write_overlay()")
        lay = self.sim_device.layout
        if theirs != lay.design_hash:
            raise DesignMismatchError(
                f"{bitstream.bitfile_name} is the overlay of design {theirs[:16]}..., the simulated "
                f"kernel is {lay.design_hash[:16]}... ({lay.kernel})")
        if parser is None:
            parser = self.get_bitfile_metadata(bitstream.bitfile_name)
        self.post_download(bitstream, parser, self.name)

    def gen_cache(self, bitstream, parser=None):
        """Nothing to cache: the metadata comes from the .hwh every time."""

    # -- registers (MMIO with the REGISTER_RW capability) --------------------------------
    def _control_offset(self, address: int, length: int) -> int:
        address = check_int("address", address, 0)
        length = check_int("length", length, 0)
        offset = address - self.control_base
        if offset < 0 or offset + length > CONTROL_RANGE or offset % 4:
            raise ValueError(f"address {address:#x} (+{length} bytes) is outside the kernel's "
                             f"s_axi_control window [{self.control_base:#x}, "
                             f"{self.control_base + CONTROL_RANGE:#x}) or not word aligned")
        return offset

    def read_registers(self, address, length):
        offset = self._control_offset(address, length)
        words = []
        for word in range(offset, offset + length, 4):
            if word == 0 and self.poll_cycles:
                self.sim_device.step(self.poll_cycles)
            value = self.sim_device._read32(word)
            if word == 0 and value & self.AP_DONE and self.check_protocol:
                self._raise_on_new_violations()
            words.append(value)
        return struct.pack(f"<{len(words)}I", *words)[:length]

    def protocol_errors(self) -> tuple[int, str]:
        """(count, text) of the AXI rule violations the co-simulation has seen so far."""
        cosim = getattr(self.sim_device, "sim", None)
        if cosim is None or not hasattr(cosim, "protocol_errors"):
            return 0, ""
        count, text = cosim.protocol_errors()
        return int(count), str(text)

    def _raise_on_new_violations(self) -> None:
        count, text = self.protocol_errors()
        if count > self._violations_seen:
            self._violations_seen = count
            raise ProtocolViolationError(
                f"{self.sim_device.layout.kernel}: the co-simulation saw {count} AXI rule violation(s) during "
                f"the run: {text}")

    def write_registers(self, address, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"register data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) % 4:
            raise ValueError(f"s_axi_control takes 32-bit writes; got {len(data)} bytes")
        offset = self._control_offset(address, len(data))
        for i, value in enumerate(struct.unpack(f"<{len(data) // 4}I", data)):
            self.sim_device._write32(offset + 4 * i, value)

    # -- memory --------------------------------------------------------------------------
    @property
    def default_memory(self):
        return _SimMemory(self, "data")

    def get_memory(self, description):
        return _SimMemory(self, description.get("port", "data") if isinstance(description, dict) else "data")

    def flush(self, bo, offset, ptr, size):
        """sync_to_device: host bytes -> simulated memory."""
        if size:
            self.sim_device.write(bo, ctypes.string_at(ptr, size), offset)

    def invalidate(self, bo, offset, ptr, size):
        """sync_from_device: simulated memory -> host bytes."""
        if size:
            ctypes.memmove(ptr, self.sim_device.read(bo, size, offset), size)

    def __repr__(self) -> str:
        return f"<SimPynqDevice {self.sim_device.layout.kernel!r} over {self.sim_device!r}>"
