"""The matmul datapath's geometry: the contract's sizes plus the records between the sub-blocks.

:class:`EngineGeometry` collects what the sequencer, the buffers and the scheduler share: array
shape (``rows`` x ``lanes``), K slice and line stride, the two on-chip buffers (activation ring of
``act_depth`` lines per row bank, weight ring of ``2 x tile_n`` column slots) and the *pass* record
that tells every consumer what one (K slice, row chunk) pass holds
(:mod:`hbmforge.engines.matmul` has the loop nest).
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.lib import data

from ...encodings import WeightFormat
from ...engines.matmul import MatmulGeometry
from ...mathutil import exact_log2
from ...numerics.tlmm import table_entries

__all__ = ["EngineGeometry", "pass_layout"]


@dataclass(frozen=True)
class EngineGeometry:
    """Constants of one matmul engine (every field a plain int or bool)."""

    rows: int
    lanes: int
    weight_ports: int
    data_width: int
    group_size: int
    scale_bits: int
    k_slice: int
    line_stride: int
    act_depth: int
    tile_n: int
    lane_bits: int
    tlmm: bool
    tlmm_entries: int
    acc_bits: int
    max_bias_shift: int
    pairs: bool = False
    #: 2:4 jobs of a 2-bit format run as pair fires (``sparse24_pairs``)
    sparse_pairs: bool = False
    #: descriptor codes of the dense 2-bit formats that run as pair fires (``dense_pairs``)
    dense_pair_codes: tuple = ()

    @classmethod
    def of(cls, layout) -> "EngineGeometry":
        geom: MatmulGeometry = layout.matmul
        mm = layout.mm
        return cls(rows=mm.rows, lanes=mm.lanes, weight_ports=mm.weight_ports, data_width=layout.config.data_width,
                   group_size=mm.group_size, scale_bits=mm.scale_bits, k_slice=geom.k_slice,
                   line_stride=geom.line_stride, act_depth=geom.act_depth, tile_n=geom.tile_n,
                   lane_bits=max(geom.lane_bits(f) for f in mm.weight_bits), tlmm=geom.tlmm,
                   tlmm_entries=table_entries(mm.tlmm_group) if geom.tlmm else 1,
                   acc_bits=geom.widths.acc_bits, max_bias_shift=geom.widths.max_bias_shift,
                   pairs=bool(getattr(mm, "sparse24_pairs", False) or getattr(mm, "dense_pairs", False)),
                   sparse_pairs=bool(getattr(mm, "sparse24_pairs", False)),
                   dense_pair_codes=tuple(int(WeightFormat.from_config(f)) for f in mm.dense_pair_formats)
                   if getattr(mm, "dense_pairs", False) else ())

    # -- derived -------------------------------------------------------------------------
    @property
    def word_bytes(self) -> int:
        return self.data_width // 8

    @property
    def kc_max(self) -> int:
        """Lines (array fires) per column of one K slice at most: ``k_slice / lanes``."""
        return self.k_slice // self.lanes

    @property
    def line_bits(self) -> int:
        """Address bits of a line within a row block or a weight column."""
        return exact_log2(self.line_stride)

    @property
    def groups(self) -> int:
        """Weight groups one fire covers (``lanes / group_size``, at least 1)."""
        return max(1, self.lanes // self.group_size)

    @property
    def fires_per_group(self) -> int:
        return max(1, self.group_size // self.lanes)

    @property
    def weight_slots(self) -> int:
        """Column slots of the weight ring: two tiles."""
        return 2 * self.tile_n

    @property
    def weight_depth(self) -> int:
        return self.weight_slots * self.line_stride

    @property
    def weight_lane_bits(self) -> int:
        return self.lanes * self.lane_bits

    @property
    def scale_slots(self) -> int:
        """Group scales a weight-ring line holds: a fire's groups, twice that for the pair fire
        (two columns a line)."""
        return self.groups * (2 if self.pairs else 1)

    @property
    def weight_line_bits(self) -> int:
        """One weight-ring line: the lanes, then the group scale mantissa(s) the line ends."""
        return self.weight_lane_bits + self.scale_slots * self.scale_bits

    @property
    def max_blocks(self) -> int:
        """Row blocks the activation ring holds at most (one line per row, K = lanes)."""
        return self.act_depth


def pass_layout(geom: EngineGeometry) -> data.StructLayout:
    """One pass (a K slice over a chunk of rows) as its consumers see it.

    ``kc``: lines per column in this slice; ``nblk``/``rows``: row blocks and rows of the chunk;
    ``first``/``last``: the slice is K's first/last; ``final``: the job's last pass.
    """
    return data.StructLayout({"kc": range(geom.kc_max + 1), "nblk": range(geom.max_blocks + 1), "rows": 32,
                              "first": 1, "last": 1, "final": 1})
