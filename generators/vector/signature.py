"""The vector engine's job record and signature (the engine contract, docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data

from hbmforge.encodings import VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from hbmforge.engines import FAMILIES

from ...engines.vector import JOB_WIDTHS, VECTOR_FIELDS, vector_geometry
from ..engine import EngineSignature

__all__ = ["vector_job_layout", "vector_signature"]


def vector_job_layout(layout) -> data.StructLayout:
    """One validated VECTOR descriptor: formats as their enums, sizes as wide as the checks allow."""
    g = vector_geometry(layout)
    shapes = {"dim": range(g.max_dim + 1), "a_fmt": VectorIn, "b_fmt": VectorIn, "out_fmt": VectorOut,
              "act": VectorAct, "combine": VectorCombine, "norm": VectorNorm, "port": range(len(layout.ports))}
    return data.StructLayout({name: shapes.get(name, JOB_WIDTHS.get(name)) for name in VECTOR_FIELDS})


def vector_signature(layout) -> EngineSignature:
    """``src``: every read on the data port; ``out``: RES32/ACT8/QREC writes; ``w_*[i]``/``sw_*[i]``:
    KV-pool reads (mantissa words) and writes on the attention engine's ports."""
    fam = FAMILIES["vector"]
    return EngineSignature(job_layout=vector_job_layout(layout), data_width=layout.config.data_width,
                           channels=fam.channels(layout), max_mac_inc=fam.max_mac_inc(layout))
