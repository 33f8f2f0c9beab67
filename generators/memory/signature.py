"""The memory engine's job record and signature (the engine contract, docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data

from hbmforge.encodings import Opcode
from hbmforge.engines import FAMILIES

from ..engine import EngineSignature

__all__ = ["memory_job_layout", "memory_signature"]


def memory_job_layout() -> data.StructLayout:
    """A validated CACHE or OMAP descriptor: the union of their slots, ``op`` telling which."""
    return data.StructLayout({
        "op": Opcode, "action": 3,
        "addr": 64, "bytes": 64, "store_addr": 64,                                    # CACHE
        "ctrl_addr": 64, "src_addr": 64, "dst_addr": 64, "count": 32,                 # OMAP
    })


def memory_signature(layout) -> EngineSignature:
    """Reader ``src`` and writer ``out`` on the data port; the backing port (and with a cache its
    HBM store) on ``w<i>``; with a cache, the backing port's channels of the other engines."""
    fam = FAMILIES["memory"]
    return EngineSignature(job_layout=memory_job_layout(), data_width=layout.config.data_width,
                           channels=fam.channels(layout), max_mac_inc=0, registers=fam.registers(layout),
                           faults=True)
