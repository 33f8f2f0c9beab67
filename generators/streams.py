"""Payload layouts shared between the shell and the engines.

The command processor hands an engine a :func:`matmul_job_layout` record; an
engine asks the shell's DMA blocks for memory with :data:`DmaCommand` records
and reports completion with :data:`JobDone`.
"""
# No `from __future__ import annotations` here: data.Struct reads its field shapes from
# real annotations, and string annotations would silently give empty structs.

from amaranth.lib import data, stream

__all__ = ["DmaCommand", "JobDone", "matmul_job_layout", "word_stream", "dma_command_stream",
           "engine_dma_members"]


class DmaCommand(data.Struct):
    """Move ``bytes`` bytes starting at ``addr``; both multiples of the port word."""

    addr: 64
    bytes: 32


class JobDone(data.Struct):
    """An engine finished its job (all outputs written and acknowledged)."""

    error: 1        # an AXI error response was seen on one of the engine's transfers


def matmul_job_layout(weight_ports: int) -> data.StructLayout:
    """The fields of a validated MATMUL descriptor, as the engine receives them."""
    return data.StructLayout({
        "m": 32, "k": 32, "n": 32,
        "wbits": 4,                 # 4 or 8
        "out_mode": 1,              # hbmforge.layout.OutMode
        "out_shift": 6,             # int32 mode
        "x_addr": 64, "s_addr": 64, "q_addr": 64, "y_addr": 64,
        "w_addr": data.ArrayLayout(64, weight_ports),
    })


def word_stream(width: int) -> stream.Signature:
    return stream.Signature(width)


def dma_command_stream() -> stream.Signature:
    return stream.Signature(DmaCommand)


def engine_dma_members(stream_ports: int, data_width: int) -> dict:
    """The DMA side every engine shares (docs/architecture.md §6), as wiring members.

    ``done`` <- one record per job; the data port's three readers (``act``, ``scale``,
    ``rq``) and its writer (``out``, with ``out_done``); one reader per ``w<i>`` port.
    """
    from amaranth.lib.wiring import In, Out

    return {
        "done": Out(stream.Signature(JobDone)),
        "act_cmd": Out(dma_command_stream()),
        "act_data": In(word_stream(data_width)),
        "scale_cmd": Out(dma_command_stream()),
        "scale_data": In(word_stream(data_width)),
        "rq_cmd": Out(dma_command_stream()),
        "rq_data": In(word_stream(data_width)),
        "w_cmd": Out(dma_command_stream()).array(stream_ports),
        "w_data": In(word_stream(data_width)).array(stream_ports),
        "out_cmd": Out(dma_command_stream()),
        "out_data": Out(word_stream(data_width)),
        "out_done": In(stream.Signature(JobDone)),
    }
