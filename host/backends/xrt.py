"""The ``xrt`` backend: the device protocol on an Alveo card through XRT's ``pyxrt``.

The xclbin comes from the Vitis flow of ``hbmforge gen`` (kernel.xml,
package_xo.tcl, link.cfg). Buffers are XRT buffer objects allocated in the
bank of each port: ``kernel.group_id(arg)`` of the pointer argument bound to
that port (hbmforge.kernel_interface numbers the arguments exactly as
kernel.xml does), so a buffer for ``w1`` lands in the HBM pseudo-channel that
``link.cfg`` connected to ``m_axi_w1``.

The kernel is driven by its registers (ap_ctrl_hs, polled with a timeout), so
the compute unit is opened for exclusive access. pyxrt's register access
changed across XRT releases; :func:`open_control` picks what the installed
one offers (an ``ip`` class, ``kernel.read_register`` up to XRT 2.14, or the
C API of libxrt_coreutil, which every XRT since 2020.2 exports).

pyxrt ships with XRT and is not on PyPI; it is imported only when a device
is opened, so the rest of hbmforge works without it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import uuid as uuidlib
from pathlib import Path

from hbmforge.kernel_interface import compute_unit, pointer_arg_of_port
from hbmforge.layout import PortInfo

from . import built_design
from ..device import Buffer, Device
from ..errors import DesignMismatchError, DeviceError

__all__ = ["XrtDevice", "open_device", "import_pyxrt", "PYXRT_HINT"]

PYXRT_HINT = "pyxrt ships with XRT (source /opt/xilinx/xrt/setup.sh); it is not on PyPI"
_BDF = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


def import_pyxrt():
    """The pyxrt module, or an ImportError that says where it comes from."""
    try:
        import pyxrt
    except ImportError as err:
        raise ImportError(f"the xrt backend needs the pyxrt module, which is not importable here "
                          f"({err}); {PYXRT_HINT}") from None
    return pyxrt


def open_device(target, *, build_dir=None, xclbin=None, device=0, **options) -> "XrtDevice":
    """Open the design in ``target`` (a generated design directory or its manifest.json).

    ``xclbin`` defaults to ``<kernel>.xclbin`` in that directory or its
    ``package/`` subdirectory (where the Vitis flow leaves it).
    """
    design, xclbin = built_design(target, backend="xrt", build_dir=build_dir, artifact="xclbin",
                                  artifact_path=xclbin)
    return XrtDevice(design, xclbin, device=device, **options)


class XrtDevice(Device):
    """A kernel in an xclbin on an XRT device (``device``: index or PCIe BDF such as '0000:65:00.1')."""

    backend = "xrt"

    def __init__(self, design, xclbin, *, device: int | str = 0):
        super().__init__(design)
        self._device_spec = _check_device_spec(device)
        if not isinstance(xclbin, (str, os.PathLike)):
            raise TypeError(f"xclbin must be the path of the .xclbin file, got {type(xclbin).__name__}")
        self._xclbin_path = Path(xclbin)
        if not self._xclbin_path.is_file():
            raise FileNotFoundError(
                f"xclbin {self._xclbin_path} not found; build it with the Vitis flow hbmforge gen wrote "
                f"(package/package_xo.tcl, then v++ --link --config package/link.cfg)")
        pyxrt = import_pyxrt()
        self._xrt = pyxrt
        self._control = None
        self._xclbin_obj = None
        try:
            self._device = pyxrt.device(self._device_spec)
            xclbin_obj = pyxrt.xclbin(str(self._xclbin_path))
            kernels = [k.get_name() for k in xclbin_obj.get_kernels()]
            top = self.design.top
            if top not in kernels:
                raise DesignMismatchError(
                    f"{self._xclbin_path} holds kernel(s) {kernels}, not {top!r} of this "
                    "manifest; link the xclbin from this design")
            self._uuid = self._device.load_xclbin(xclbin_obj)
            self._xclbin_obj = xclbin_obj
            cu_name = f"{top}:{{{compute_unit(self.design.data)}}}"
            self._control = open_control(pyxrt, self._device, self._uuid, cu_name, self._device_spec)
            self._groups = {p.name: self._control.group_id(pointer_arg_of_port(self.design.data, p.name).index)
                            for p in self.layout.ports}
            self.check_identity()
        except BaseException:
            self._close()
            raise

    @property
    def control_access(self) -> str:
        """How registers are reached: 'ip', 'kernel' or 'c-api'."""
        return self._control.kind

    # -- primitives --------------------------------------------------------------------
    def _read32(self, offset: int) -> int:
        return self._control.read32(offset)

    def _write32(self, offset: int, value: int) -> None:
        self._control.write32(offset, value)

    def _allocate(self, port: PortInfo, nbytes: int, memory: str | None = None):
        flags, group = self._xrt.bo.flags.normal, self._groups[port.name]
        if memory == "host":                    # an XRT host-only buffer, reached over the slave bridge
            flags = self._xrt.bo.flags.host_only
        elif memory == "ddr":                   # a buffer in the card's DDR bank DDR[0]
            group = self._memory_index("DDR[0]")
        bo = self._xrt.bo(self._device, nbytes, flags, group)
        return self._bank_region(port, memory).name, int(bo.address()), bo

    def _memory_index(self, tag: str) -> int:
        """The memory-topology index of bank ``tag`` in the loaded xclbin."""
        mems = self._xclbin_obj.get_mems() if self._xclbin_obj is not None else []
        for mem in mems:
            if mem.get_tag() == tag and hasattr(mem, "get_index"):
                return int(mem.get_index())
        tags = [m.get_tag() for m in mems]
        raise DeviceError(f"{self._xclbin_path} has no memory bank {tag} (banks: {tags}); link a port of the "
                          f"kernel to {tag} in link.cfg")

    def _release(self, buf: Buffer) -> None:
        buf.handle = None                     # the last reference: XRT frees the buffer object

    def _mem_write(self, buf: Buffer, offset: int, data: memoryview) -> None:
        buf.handle.write(data, offset)
        buf.handle.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, data.nbytes, offset)

    def _mem_read(self, buf: Buffer, offset: int, nbytes: int) -> bytes:
        buf.handle.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, nbytes, offset)
        return buf.handle.read(nbytes, offset).tobytes()

    def _close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        self._device = None


def _check_device_spec(device) -> int | str:
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise TypeError(f"device must be an index or a PCIe BDF string, got {type(device).__name__}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device index must be >= 0, got {device}")
        return device
    if not _BDF.match(device):
        raise ValueError(f"device {device!r} is not a PCIe BDF like '0000:65:00.1' (see xbutil examine)")
    return device


# -- register access across pyxrt versions ---------------------------------------------------
def open_control(pyxrt, device, xclbin_uuid, cu_name: str, device_spec):
    """Exclusive register access to one compute unit, with whatever this XRT offers."""
    if hasattr(pyxrt, "ip"):
        return _IpControl(pyxrt, device, xclbin_uuid, cu_name)
    kernel = pyxrt.kernel(device, xclbin_uuid, cu_name, pyxrt.kernel.cu_access_mode.exclusive)
    if hasattr(kernel, "read_register"):
        return _KernelControl(kernel)
    del kernel                                # release the exclusive context for the C API
    return _CApiControl(device_spec, xclbin_uuid, cu_name)


class _KernelControl:
    """pyxrt up to XRT 2.14: ``kernel.read_register`` on an exclusively opened kernel."""

    kind = "kernel"

    def __init__(self, kernel):
        self._kernel = kernel

    def read32(self, offset):
        return int(self._kernel.read_register(offset)) & 0xFFFF_FFFF

    def write32(self, offset, value):
        self._kernel.write_register(offset, value)

    def group_id(self, arg):
        return self._kernel.group_id(arg)

    def close(self):
        self._kernel = None


class _IpControl:
    """A pyxrt with an ``ip`` class (xrt::ip, exclusive); bank groups from a context-less kernel."""

    kind = "ip"

    def __init__(self, pyxrt, device, xclbin_uuid, cu_name):
        self._ip = pyxrt.ip(device, xclbin_uuid, cu_name)
        self._kernel = pyxrt.kernel(device, xclbin_uuid, cu_name, pyxrt.kernel.cu_access_mode.none)

    def read32(self, offset):
        return int(self._ip.read_register(offset)) & 0xFFFF_FFFF

    def write32(self, offset, value):
        self._ip.write_register(offset, value)

    def group_id(self, arg):
        return self._kernel.group_id(arg)

    def close(self):
        self._ip = self._kernel = None


class _CApiControl:
    """XRT 2.15+ pyxrt has no register access; XRT's C API (libxrt_coreutil) still has.

    ``xrtPLKernelOpenExclusive`` + ``xrtKernelRead/WriteRegister`` on the
    device and xclbin pyxrt already loaded (XRT shares one device object per
    process), ``xrtKernelArgGroupId`` for the banks.
    """

    kind = "c-api"

    def __init__(self, device_spec, xclbin_uuid, cu_name):
        lib = _load_coreutil()
        self._lib = lib
        if isinstance(device_spec, int):
            self._dev = lib.xrtDeviceOpen(device_spec)
        else:
            self._dev = lib.xrtDeviceOpenByBDF(device_spec.encode())
        if not self._dev:
            raise DeviceError(f"XRT C API: xrtDeviceOpen({device_spec!r}) failed (errno {ctypes.get_errno()})")
        uid = (ctypes.c_ubyte * 16)(*uuidlib.UUID(xclbin_uuid.to_string()).bytes)
        self._kernel = lib.xrtPLKernelOpenExclusive(self._dev, uid, cu_name.encode())
        if not self._kernel:
            lib.xrtDeviceClose(self._dev)
            raise DeviceError(f"XRT C API: cannot open {cu_name} for exclusive access (errno "
                              f"{ctypes.get_errno()}); is another process using the kernel?")

    def read32(self, offset):
        value = ctypes.c_uint32()
        rc = self._lib.xrtKernelReadRegister(self._kernel, offset, ctypes.byref(value))
        if rc:
            raise DeviceError(f"XRT C API: reading register {offset:#x} failed ({rc})")
        return value.value

    def write32(self, offset, value):
        rc = self._lib.xrtKernelWriteRegister(self._kernel, offset, value)
        if rc:
            raise DeviceError(f"XRT C API: writing register {offset:#x} failed ({rc})")

    def group_id(self, arg):
        gid = self._lib.xrtKernelArgGroupId(self._kernel, arg)
        if gid < 0:
            raise DeviceError(f"XRT C API: no memory bank for kernel argument {arg} ({gid})")
        return gid

    def close(self):
        if self._kernel:
            self._lib.xrtKernelClose(self._kernel)
            self._kernel = None
        if self._dev:
            self._lib.xrtDeviceClose(self._dev)
            self._dev = None


def _load_coreutil():
    root = os.environ.get("XILINX_XRT", "/opt/xilinx/xrt")
    names = [os.path.join(root, "lib", "libxrt_coreutil.so"), ctypes.util.find_library("xrt_coreutil")]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError:
            continue
    else:
        raise ImportError(f"this pyxrt has no register access and libxrt_coreutil.so was not found "
                          f"under {root}/lib; {PYXRT_HINT}")
    handle = ctypes.c_void_p
    lib.xrtDeviceOpen.restype = handle
    lib.xrtDeviceOpen.argtypes = [ctypes.c_uint]
    lib.xrtDeviceOpenByBDF.restype = handle
    lib.xrtDeviceOpenByBDF.argtypes = [ctypes.c_char_p]
    lib.xrtDeviceClose.argtypes = [handle]
    lib.xrtPLKernelOpenExclusive.restype = handle
    lib.xrtPLKernelOpenExclusive.argtypes = [handle, ctypes.c_ubyte * 16, ctypes.c_char_p]
    lib.xrtKernelClose.argtypes = [handle]
    lib.xrtKernelArgGroupId.argtypes = [handle, ctypes.c_int]
    lib.xrtKernelReadRegister.argtypes = [handle, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
    lib.xrtKernelWriteRegister.argtypes = [handle, ctypes.c_uint32, ctypes.c_uint32]
    return lib
