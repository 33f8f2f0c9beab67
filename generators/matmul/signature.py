"""The matmul engine's job record and signature (the engine contract, docs/architecture.md §6)."""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.lib import data

from hbmforge.encodings import BiasMode, OutMode
from hbmforge.engines import FAMILIES

from ..engine import EngineSignature

__all__ = ["matmul_job_layout", "matmul_signature"]


def matmul_job_layout(weight_ports: int) -> data.StructLayout:
    """The fields of a validated MATMUL descriptor, as the engine receives them."""
    return data.StructLayout({
        "m": 32, "k": 32, "n": 32,
        "wbits": 5,                 # WeightFormat code, | SPARSE24 (bit 4) for 2:4 sparse weights
        "out_mode": OutMode,
        "out_shift": 6,             # int32 mode
        "x_addr": 64, "s_addr": 64, "q_addr": 64, "y_addr": 64,
        "bias": BiasMode,
        "bias_shift": 6,            # at most MatmulWidths.max_bias_shift (< 62 - 32)
        "b_addr": 64, "p_addr": 64,
        "w_addr": data.ArrayLayout(64, weight_ports),
    })


def matmul_signature(layout) -> EngineSignature:
    """``job`` as above; readers ``act`` (activations, split-K partials), ``scale`` (group scales)
    and ``rq`` (requant parameters, bias) and the writer ``out`` on the data port, one weight
    reader per ``w<i>``; ``mac_inc`` is ``rows x lanes`` per full fire."""
    fam = FAMILIES["matmul"]
    return EngineSignature(job_layout=matmul_job_layout(layout.mm.weight_ports),
                           data_width=layout.config.data_width, channels=fam.channels(layout),
                           max_mac_inc=fam.max_mac_inc(layout))
