"""Errors the host runtime raises when the device, not the caller, is at fault.

Bad arguments raise the usual ``TypeError``/``ValueError`` naming the bad
value; these classes are for conditions a caller may want to catch: a design
that does not match its manifest, a run that failed or did not finish.
:class:`ManifestError` is the contract's own (:mod:`hbmforge.layout`), re-exported.
"""
from __future__ import annotations

from hbmforge.layout import ManifestError

__all__ = [
    "DeviceError",
    "ManifestError",
    "DesignMismatchError",
    "DeviceTimeoutError",
    "DeviceRunError",
    "DeviceBusyError",
    "DeviceClosedError",
    "OutOfDeviceMemoryError",
    "BufferStateError",
    "ProtocolViolationError",
]


class DeviceError(RuntimeError):
    """Base class of every device-side failure."""


class DesignMismatchError(DeviceError):
    """The kernel on the device is not the design the manifest describes."""


class DeviceTimeoutError(DeviceError, TimeoutError):
    """A run did not raise ap_done within the timeout; the run may still be in flight."""


class DeviceRunError(DeviceError):
    """The kernel stopped a program on a bad descriptor (STATUS.error = 1)."""

    def __init__(self, message: str, *, code: int, index: int, descriptors_done: int):
        super().__init__(message)
        self.code = code
        self.index = index
        self.descriptors_done = descriptors_done


class DeviceBusyError(DeviceError):
    """start() while a run is still in flight."""


class DeviceClosedError(DeviceError):
    """Any use of a device after close()."""


class OutOfDeviceMemoryError(DeviceError, MemoryError):
    """No free range large enough in the memory bank of the requested port."""


class BufferStateError(ValueError):
    """A buffer that was freed, or that belongs to another device."""


class ProtocolViolationError(DeviceError):
    """The co-simulation saw the kernel break an AXI rule (a hardware bug, not a usage error)."""
