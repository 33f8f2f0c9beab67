"""The attention engine's job record and signature (the engine contract, docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data

from hbmforge.engines import FAMILIES

from ...engines.attention import ATTENTION_FIELDS, JOB_WIDTHS
from ..engine import EngineSignature

__all__ = ["attention_job_layout", "attention_signature"]


def attention_job_layout() -> data.StructLayout:
    """One validated ATTENTION descriptor: every field of ``ATTENTION_FIELDS`` (low bits of its slot)."""
    return data.StructLayout({name: JOB_WIDTHS[name] for name in ATTENTION_FIELDS})


def attention_signature(layout) -> EngineSignature:
    """``act``: Q records; ``scale``: block-table words; ``w_*[0]``: K pages,
    ``w_*[kv_ports-1]``: V pages; ``out``: output rows."""
    fam = FAMILIES["attention"]
    return EngineSignature(job_layout=attention_job_layout(), data_width=layout.config.data_width,
                           channels=fam.channels(layout), max_mac_inc=fam.max_mac_inc(layout))
