"""The host runtime: one device protocol, three backends (sim, pynq, xrt), layers on top.

    from hbmforge.host import open_device, Linear
    with open_device("examples/u280_small.yaml") as dev:          # Verilator co-simulation
        lin = Linear.from_float(w, bits=4, device=dev)
        y = lin(x)
"""
from .attention import Attention, AttentionRun
from .device import Buffer, Device, RunStatus
from .errors import (BufferStateError, DesignMismatchError, DeviceBusyError, DeviceClosedError, DeviceError,
                     DeviceRunError, DeviceTimeoutError, ManifestError, OutOfDeviceMemoryError,
                     ProtocolViolationError)
from .kvcache import KVCache, KVCacheError, KVCacheFullError, KVSequence
from .linear import Linear, LinearRun
from .manifest import Manifest
from .open import BACKENDS, open_device
from .program import ProgramBuilder

__all__ = [
    "open_device", "BACKENDS",
    "Device", "Buffer", "RunStatus", "Manifest", "ProgramBuilder", "Linear", "LinearRun",
    "Attention", "AttentionRun", "KVCache", "KVSequence", "KVCacheError", "KVCacheFullError",
    "DeviceError", "ManifestError", "DesignMismatchError", "DeviceTimeoutError", "DeviceRunError",
    "DeviceBusyError", "DeviceClosedError", "OutOfDeviceMemoryError", "BufferStateError",
    "ProtocolViolationError",
]
