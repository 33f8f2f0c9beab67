"""Payload layouts shared between the shell and the engines.

An engine asks the shell's DMA blocks for memory with :data:`DmaCommand` records and
reports completion with :data:`JobDone` (see :class:`~hbmforge.generators.engine.EngineSignature`).
"""
# No `from __future__ import annotations` here: data.Struct reads its field shapes from
# real annotations, and string annotations would silently give empty structs.

from amaranth.lib import data, stream

__all__ = ["DmaCommand", "JobDone", "word_stream", "dma_command_stream"]


class DmaCommand(data.Struct):
    """Move ``bytes`` bytes starting at ``addr``; both multiples of the port word."""

    addr: 64
    bytes: 32


class JobDone(data.Struct):
    """An engine finished its job (all outputs written and acknowledged)."""

    error: 1        # an AXI error response was seen on one of the engine's transfers


def word_stream(width: int) -> stream.Signature:
    return stream.Signature(width)


def dma_command_stream() -> stream.Signature:
    return stream.Signature(DmaCommand)
