"""Golden model of one COPY/FILL descriptor (hbmforge.engines.copy): memory in, memory out.

All ranges are checked before anything is written, so a descriptor that would touch memory
outside the model leaves it unchanged (``MemoryAccessError``, the hardware's AXI_RESP).
"""
from __future__ import annotations

from ..encodings import CopyMode

__all__ = ["fill_pattern", "run_copy"]


def fill_pattern(value: int, nbytes: int) -> bytes:
    """``nbytes`` of the 64-bit ``value`` repeated little-endian (byte ``i`` = byte ``i % 8``)."""
    word = (value & ((1 << 64) - 1)).to_bytes(8, "little")
    return (word * -(-nbytes // 8))[:nbytes]


def run_copy(mem, d: dict) -> None:
    """Run a validated COPY descriptor ``d`` (slot values) against ``mem`` (read/write/check)."""
    n = d["bytes"]
    check = getattr(mem, "check", None)
    if check is not None:
        check(d["dst_addr"], n)
        if d["mode"] == CopyMode.COPY:
            check(d["src_addr"], n)
    data = mem.read(d["src_addr"], n) if d["mode"] == CopyMode.COPY else fill_pattern(d["value"], n)
    mem.write(d["dst_addr"], data)
