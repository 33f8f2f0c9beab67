"""The attention engine's ports: the same contract as the matmul engine (docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...attention_layout import ATTENTION_FIELDS, JOB_WIDTHS
from ..streams import engine_dma_members

__all__ = ["attention_job_layout", "attention_job_layout_for", "AttentionEngineSignature"]


def attention_job_layout() -> data.StructLayout:
    """One validated ATTENTION descriptor: every field of ``ATTENTION_FIELDS`` (low bits of its slot)."""
    return data.StructLayout({name: JOB_WIDTHS[name] for name in ATTENTION_FIELDS})


def attention_job_layout_for(layout) -> data.StructLayout:
    """The job layout for a :class:`~hbmforge.layout.DesignLayout` (the same for every config)."""
    return attention_job_layout()


class AttentionEngineSignature(wiring.Signature):
    """Engine side of the shell/engine contract.

    * ``job`` -> one validated ATTENTION descriptor; ``done`` <- after every output row is written
      and acknowledged.
    * ``act_*``: Q records; ``scale_*``: block-table words; ``rq_*``: unused (never commanded);
      ``w_*[0]``: K pages, ``w_*[kv_ports-1]``: V pages; ``out_*``: output rows.
    * ``busy``/``stall``/``mac_inc`` feed the performance counters.
    """

    def __init__(self, *, stream_ports: int, data_width: int, max_mac_inc: int):
        self._ports, self._width, self._max_mac = stream_ports, data_width, max_mac_inc
        super().__init__({
            "job": In(stream.Signature(attention_job_layout())),
            **engine_dma_members(stream_ports, data_width),
            "busy": Out(1),
            "stall": Out(1),
            "mac_inc": Out(range(max_mac_inc + 1)),
        })

    def __eq__(self, other):
        return (isinstance(other, AttentionEngineSignature) and other._ports == self._ports
                and other._width == self._width and other._max_mac == self._max_mac)
