"""The ``pynq`` backend: the device protocol on a Zynq/Kria board through ``pynq.Overlay``.

The overlay is the ``<kernel>.bit``/``<kernel>.hwh`` pair that package/bd.tcl
builds (PYNQ 4 drives Zynq, Kria and RFSoC boards, no longer Alveo). The
kernel is the IP of the block design whose type is the generated top module;
its control registers are reached through the IP's MMIO, buffers come from
``pynq.allocate`` (physically contiguous PS DDR, so ``device_address`` is what
the kernel's masters use), and ``sync_to_device``/``sync_from_device`` keep
the CPU caches coherent with what the kernel reads and writes.

``pynq_device`` selects the ``pynq.Device``: the board's default, or a
:class:`hbmforge.host.pynq_sim.SimPynqDevice` to run this very backend
against the co-simulation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hbmforge.kernel_interface import CONTROL_RANGE, pynq_registers
from hbmforge.layout import PortInfo
from hbmforge.manifest import read_manifest

from . import built_design
from ..checks import check_bool, check_str
from ..device import Buffer, Device
from ..errors import DesignMismatchError, DeviceError

__all__ = ["PynqDevice", "open_device", "find_kernel_ip", "import_pynq"]


def import_pynq():
    """The pynq module, or an ImportError that says how to get it."""
    try:
        import pynq
    except ImportError as err:
        raise ImportError(f"the pynq backend needs PYNQ, which is not importable here ({err}); "
                          "install it with: pip install 'hbmforge[pynq]' (on the board it comes "
                          "with the PYNQ image)") from None
    return pynq


def open_device(target, *, build_dir=None, bitfile=None, **options) -> "PynqDevice":
    """Open the design in ``target`` (a generated design directory or its manifest.json).

    ``bitfile`` defaults to ``<kernel>.bit`` in that directory or its
    ``package/`` subdirectory (where bd.tcl leaves it, next to the .hwh).
    """
    design, bitfile = built_design(target, backend="pynq", build_dir=build_dir, artifact="bit",
                                   artifact_path=bitfile)
    return PynqDevice(design, bitfile, **options)


def find_kernel_ip(ip_dict, design) -> str:
    """The overlay name of the kernel: the IP whose type is the generated top module
    (``design``: anything :func:`hbmforge.manifest.read_manifest` takes)."""
    design = read_manifest(design)
    top, kernel = design.top, design.layout.kernel
    matches = [name for name, ip in ip_dict.items()
               if str((ip or {}).get("type") or "").split(":")[2:3] == [top]]
    if len(matches) == 1:
        return matches[0]
    if f"{kernel}_0" in ip_dict:
        return f"{kernel}_0"
    found = {name: (ip or {}).get("type") for name, ip in ip_dict.items()}
    if not matches:
        raise DesignMismatchError(f"the overlay has no {top!r} kernel; its IP: {found}")
    raise DesignMismatchError(f"the overlay has {len(matches)} {top!r} kernels ({matches}); "
                              "pass ip_name= to choose one")


class PynqDevice(Device):
    """The kernel of an overlay. ``download=False`` attaches to an overlay already loaded."""

    backend = "pynq"

    def __init__(self, design, bitfile, *, pynq_device=None, download: bool = True,
                 ip_name: str | None = None):
        super().__init__(design)
        if not isinstance(bitfile, (str, os.PathLike)):
            raise TypeError(f"bitfile must be the path of the overlay's .bit file, got {type(bitfile).__name__}")
        download = check_bool("download", download)
        if ip_name is not None:
            check_str("ip_name", ip_name)
        bitfile = Path(bitfile)
        if not bitfile.is_file():
            raise FileNotFoundError(f"overlay {bitfile} not found; build it with the block design "
                                    "hbmforge gen wrote (vivado -mode batch -source package/bd.tcl)")
        if not bitfile.with_suffix(".hwh").is_file():
            raise FileNotFoundError(f"{bitfile.with_suffix('.hwh').name} is missing beside {bitfile.name}; "
                                    "pynq.Overlay needs both (bd.tcl writes them together)")
        self._pynq = import_pynq()
        if pynq_device is not None and not isinstance(pynq_device, self._pynq.Device):
            raise TypeError(f"pynq_device must be a pynq.Device (or None for the board's default), "
                            f"got {type(pynq_device).__name__}")
        try:
            self._overlay = self._pynq.Overlay(str(bitfile), download=download, device=pynq_device)
        except RuntimeError as err:
            if pynq_device is not None:
                raise
            raise DeviceError(f"PYNQ found no device to load {bitfile.name} on ({err}); run on the board, "
                              "or pass pynq_device= (e.g. a hbmforge.host.pynq_sim.SimPynqDevice)") from None
        ips = self._overlay.ip_dict
        mapped = sorted(name for name, ip in ips.items() if isinstance(ip, dict) and "phys_addr" in ip)
        if ip_name is not None and ip_name not in mapped:
            raise ValueError(f"ip_name {ip_name!r} is not a memory-mapped IP of the overlay; its memory-mapped "
                             f"IP: {mapped}")
        self._ip_name = ip_name or find_kernel_ip(ips, self.design)
        try:
            self._ip = getattr(self._overlay, self._ip_name)
        except (AttributeError, KeyError) as err:
            raise DesignMismatchError(f"the overlay cannot give a driver for {self._ip_name!r} ({err!r})") from None
        mmio = getattr(self._ip, "mmio", None)
        if mmio is None:
            raise DesignMismatchError(f"{self._ip_name} has no register interface (MMIO); it is not the kernel")
        if mmio.length < CONTROL_RANGE:
            raise DesignMismatchError(f"{self._ip_name} maps {mmio.length} bytes of registers; "
                                      f"the kernel needs {CONTROL_RANGE:#x}")
        self._mmio = mmio
        self._register_map = None
        self.check_identity()

    @property
    def overlay(self):
        return self._overlay

    @property
    def ip(self):
        """The kernel's PYNQ driver (``pynq.DefaultIP``)."""
        return self._ip

    @property
    def register_map(self):
        """A PYNQ RegisterMap of the kernel built from the manifest.

        Works on the board too, where the .hwh of a module reference carries
        no register descriptions (so ``ip.register_map`` is unavailable).
        """
        if self._register_map is None:
            from pynq.registers import RegisterMap

            cls = RegisterMap.create_subclass(self.layout.kernel, pynq_registers(self.design.data))
            self._register_map = cls(self._mmio.array)
        return self._register_map

    # -- primitives --------------------------------------------------------------------
    def _read32(self, offset: int) -> int:
        return int(self._mmio.read(offset)) & 0xFFFF_FFFF

    def _write32(self, offset: int, value: int) -> None:
        self._mmio.write(offset, int(value) & 0xFFFF_FFFF)

    def _allocate(self, port: PortInfo, nbytes: int, memory: str | None = None):
        # every memory of a Zynq board ("ddr", "host") is the PS DDR pynq.allocate places buffers in
        arr = self._pynq.allocate((nbytes,), np.uint8, target=self._overlay.device)
        return self._bank_region(port).name, int(arr.device_address), arr

    def _release(self, buf: Buffer) -> None:
        arr, buf.handle = buf.handle, None
        if arr is not None:
            arr.freebuffer()

    def _mem_write(self, buf: Buffer, offset: int, data: memoryview) -> None:
        view = buf.handle[offset:offset + data.nbytes]
        view[:] = np.frombuffer(data, dtype=np.uint8)
        view.sync_to_device()

    def _mem_read(self, buf: Buffer, offset: int, nbytes: int) -> bytes:
        view = buf.handle[offset:offset + nbytes]
        view.sync_from_device()
        return view.tobytes()
