"""The endpoint's job record and signature (the engine contract, docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data

from hbmforge.encodings import NetMode
from hbmforge.engines import FAMILIES
from hbmforge.engines.network import MAX_TIMEOUT

from ..engine import EngineSignature

__all__ = ["network_job_layout", "network_signature"]


def network_job_layout(layout) -> data.StructLayout:
    """A validated ALLREDUCE descriptor: every field within the ranges its checks allow."""
    eng = layout.config.engine("network")
    return data.StructLayout({
        "mode": NetMode,
        "job": range(eng.jobs),
        "worker": 4,
        "members": 16,
        "epoch": 8,
        "addr": 64,
        "bytes": 32,
        "window": range(eng.window + 1),
        "inflight": range(eng.window + 1),
        "timeout": range(MAX_TIMEOUT + 1),
        "retries": 8,
    })


def network_signature(layout) -> EngineSignature:
    """Reader ``src`` and writer ``out`` on the data port, the ``net`` stream pair, the counters
    and a run-time fault code."""
    fam = FAMILIES["network"]
    return EngineSignature(job_layout=network_job_layout(layout), data_width=layout.config.data_width,
                           channels=fam.channels(layout), max_mac_inc=fam.max_mac_inc(layout),
                           registers=fam.registers(layout), faults=True)
