"""The matmul engine's ports: how the shell feeds it jobs, memory streams and back-pressure."""
from __future__ import annotations

from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..streams import engine_dma_members, matmul_job_layout

__all__ = ["MatmulEngineSignature"]


class MatmulEngineSignature(wiring.Signature):
    """Engine side of the shell/engine contract (see docs/architecture.md, "Engine contract").

    * ``job`` -> one validated MATMUL descriptor; ``done`` <- one record when its
      outputs are written and acknowledged.
    * ``*_cmd`` -> DMA commands to the shell's readers/writer; ``*_data`` the words.
      Readers deliver exactly ``bytes / word_bytes`` words per command, in order.
    * ``out_done`` <- the writer finished one ``out_cmd`` (all B responses seen).
    * ``fire``/``fire_rows``/``busy`` feed the performance counters.
    """

    def __init__(self, *, rows: int, weight_ports: int, data_width: int):
        self._rows, self._weight_ports, self._data_width = rows, weight_ports, data_width
        super().__init__({
            "job": In(stream.Signature(matmul_job_layout(weight_ports))),
            **engine_dma_members(weight_ports, data_width),
            "busy": Out(1),
            "fire": Out(1),
            "fire_rows": Out(range(rows + 1)),
        })

    @property
    def rows(self):
        return self._rows

    @property
    def weight_ports(self):
        return self._weight_ports

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return (isinstance(other, MatmulEngineSignature) and other.rows == self.rows
                and other.weight_ports == self.weight_ports and other.data_width == self.data_width)
