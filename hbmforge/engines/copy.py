"""The COPY/FILL family: move a buffer between any two memory ports, or fill one.

Descriptor (u64 slots after ``op`` = ``Opcode.COPY``), :data:`COPY_FIELDS`:

==========  ===================================================================
mode        ``CopyMode``: COPY (0) or FILL (1)
src_port    source port index in manifest order (0 = ``data``, 1 + i = ``w<i>``); COPY only
src_addr    source address (a multiple of the port word); COPY only
dst_port    destination port index
dst_addr    destination address (a multiple of the port word)
bytes       bytes to move: a whole number of port words, at most 2**32 - word
value       FILL: the 64-bit pattern, repeated (little-endian) over every 8 bytes
==========  ===================================================================

Source and destination of a COPY may not overlap (every port reaches the same memory, so
the check compares addresses whatever the ports).
"""
from __future__ import annotations

from ..encodings import CopyMode, ErrorCode, Opcode
from .base import Channels, Check, EngineFamily

__all__ = ["COPY_FIELDS", "CopyFamily", "copy_checks", "max_copy_bytes"]

COPY_FIELDS = ("mode", "src_port", "src_addr", "dst_port", "dst_addr", "bytes", "value")
_U32 = (1 << 32) - 1


def max_copy_bytes(word_bytes: int) -> int:
    """One DMA command moves at most ``2**32 - 1`` bytes; copies are whole words."""
    return _U32 // word_bytes * word_bytes


def copy_checks(layout) -> tuple[Check, ...]:
    """COPY descriptor rules in hardware order: mode, ports, length, alignment, overlap."""
    ports = 1 + layout.config.shared_stream_ports      # not a port an engine keeps to itself (a cache's store)
    word = layout.word_bytes
    top = max_copy_bytes(word)

    def is_copy(f):
        return f["mode"] == CopyMode.COPY

    def why_port(f):
        if f["dst_port"] >= ports:
            return f"dst_port {f['dst_port']}, the design has ports 0..{ports - 1} ({layout.port_names[:ports]})"
        return f"src_port {f['src_port']}, the design has ports 0..{ports - 1} ({layout.port_names[:ports]})"

    def why_align(f):
        names = ["dst_addr"] + (["src_addr"] if f["mode"] == CopyMode.COPY else [])
        bad = next(a for a in names if f[a] % word)
        return f"{bad} {f[bad]:#x} not a multiple of {word}"

    return (
        Check(ErrorCode.BAD_COPY_MODE, lambda f, ops: ops.not_(ops.one_of(f["mode"], list(CopyMode))),
              lambda f: f"mode {f['mode']}, allowed {[f'{m.name}={int(m)}' for m in CopyMode]}"),
        Check(ErrorCode.BAD_PORT,
              lambda f, ops: ops.any_(f["dst_port"] >= ports, is_copy(f) & (f["src_port"] >= ports)),
              why_port),
        Check(ErrorCode.BAD_LENGTH,
              lambda f, ops: ops.any_(f["bytes"] == 0, f["bytes"] > top, ops.misaligned(f["bytes"], word)),
              lambda f: f"bytes {f['bytes']}, must be a multiple of {word} in [{word}, {top}]"),
        Check(ErrorCode.MISALIGNED,
              lambda f, ops: ops.any_(ops.misaligned(f["dst_addr"], word),
                                      is_copy(f) & ops.misaligned(f["src_addr"], word)),
              why_align),
        Check(ErrorCode.OVERLAP,
              lambda f, ops: is_copy(f) & (f["src_addr"] < f["dst_addr"] + f["bytes"])
              & (f["dst_addr"] < f["src_addr"] + f["bytes"]),
              lambda f: f"[{f['src_addr']:#x}, +{f['bytes']}) and [{f['dst_addr']:#x}, +{f['bytes']}) overlap"),
    )


class CopyFamily(EngineFamily):
    kind = "copy"
    opcodes = (Opcode.COPY,)
    errors = (ErrorCode.BAD_COPY_MODE, ErrorCode.BAD_PORT, ErrorCode.BAD_LENGTH, ErrorCode.MISALIGNED,
              ErrorCode.OVERLAP)

    def fields(self, layout, opcode):
        return COPY_FIELDS

    def checks(self, layout, opcode):
        return copy_checks(layout)

    def channels(self, layout):
        n = layout.config.shared_stream_ports
        return Channels(data_readers=("src",), data_writer=True, stream_readers=n, stream_writers=n)

    def manifest(self, layout):
        eng = layout.config.engine("copy")
        return {"buffer_words": eng.buffer_words, "modes": {m.name: int(m) for m in CopyMode},
                "max_bytes": max_copy_bytes(layout.word_bytes)}
