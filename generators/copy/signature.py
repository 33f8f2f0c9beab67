"""The copy engine's job record and signature (the engine contract, docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data

from hbmforge.encodings import CopyMode
from hbmforge.engines import FAMILIES

from ..engine import EngineSignature

__all__ = ["copy_job_layout", "copy_signature"]


def copy_job_layout(ports: int) -> data.StructLayout:
    """A validated COPY descriptor: port indexes fit the design's ports, ``bytes`` fits 32 bits."""
    return data.StructLayout({
        "mode": CopyMode,
        "src_port": range(ports), "src_addr": 64,
        "dst_port": range(ports), "dst_addr": 64,
        "bytes": 32,
        "value": 64,
    })


def copy_signature(layout) -> EngineSignature:
    """Reader ``src`` and writer ``out`` on the data port; a reader and a writer on every ``w<i>``."""
    fam = FAMILIES["copy"]
    return EngineSignature(job_layout=copy_job_layout(1 + layout.config.shared_stream_ports), data_width=layout.config.data_width,
                           channels=fam.channels(layout), max_mac_inc=fam.max_mac_inc(layout))
