"""The host runtime: one device protocol, three backends (sim, pynq, xrt), layers on top.

    from hbmforge.host import open_device, Linear
    with open_device("examples/u280_small.yaml") as dev:          # Verilator co-simulation
        lin = Linear.from_float(w, bits=4, device=dev)
        y = lin(x)
        copy_buffer(dev, dst, src)                # one COPY run (designs with a `kind: copy` engine)

Every host object reads the design one way: ``device.layout`` (a checked
:class:`hbmforge.layout.DesignLayout`, from :func:`read_manifest`).
"""
from hbmforge.manifest import DesignManifest, read_manifest

from .attention import Attention, AttentionRun
from .blocks import BlockConfig, BlockWeights, ModelProgram, TransformerBlock
from .device import Buffer, Device, RunStatus
from .errors import (BufferStateError, DesignMismatchError, DeviceBusyError, DeviceClosedError, DeviceError,
                     DeviceRunError, DeviceTimeoutError, ManifestError, OutOfDeviceMemoryError,
                     ProtocolViolationError)
from .cluster import Cluster, ClusterError, open_cluster
from .kvcache import KVCache, KVCacheError, KVCacheFullError, KVSequence
from .linear import Linear, LinearRun
from .memory import TileCache
from .moe import MoE, MoERun
from .models import Model
from .omap import ObliviousMap, ObliviousMapFullError, TamperError
from .open import BACKENDS, open_device
from .program import ProgramBuilder, copy_buffer, fill_buffer
from .vector import Vector

__all__ = [
    "open_device", "BACKENDS", "DesignManifest", "read_manifest", "open_cluster", "Cluster", "ClusterError",
    "Device", "Buffer", "RunStatus", "ProgramBuilder", "copy_buffer", "fill_buffer", "Linear", "LinearRun", "Model",
    "Attention", "AttentionRun", "Vector", "BlockConfig", "BlockWeights", "ModelProgram", "TransformerBlock",
    "KVCache", "KVSequence", "KVCacheError", "KVCacheFullError", "TileCache", "MoE", "MoERun", "ObliviousMap",
    "ObliviousMapFullError", "TamperError",
    "DeviceError", "ManifestError", "DesignMismatchError", "DeviceTimeoutError", "DeviceRunError",
    "DeviceBusyError", "DeviceClosedError", "OutOfDeviceMemoryError", "BufferStateError",
    "ProtocolViolationError",
]
