"""Where each memory of a board lives in the simulated address space, and how fast it is.

The co-simulation has one 64-bit address space (docs/architecture.md §7). The board's main
memory (HBM pseudo-channels, or the PS DDR of a Zynq board) starts at 0, pseudo-channel
``c`` at ``c * channel_size_mib`` MiB; the memories beside it (:attr:`Board.memories
<hbmforge.boards.Board.memories>`) get regions of their own further up:

==========  ======================  =================================================
memory      simulated base          timing (per region, shared by every port)
==========  ======================  =================================================
hbm / PS    0                       each port's own channel (board ``memory``)
ddr[i]      ``DDR_BASE + i * size``  DDR4 channel ``i``: latency, bandwidth per direction
host        ``HOST_BASE``            the PCIe link: ~1 µs round trip, Gen3 x16 bandwidth
==========  ======================  =================================================

A burst into a region takes that region's latency, and the region's bandwidth is shared by
every port that reaches it (one PCIe link, one DDR channel), while HBM keeps its per-port
channel model. On a board whose host memory *is* its main memory (``shared_with_board``,
the Zynq PS DDR) ``host`` and ``ddr`` name the main memory. The real backends allocate
where XRT or PYNQ put buffers; only the simulation uses these bases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .boards import MEMORY_KINDS, Board, load_board

__all__ = ["DDR_BASE", "HOST_BASE", "GOLDEN_SCRATCH_BASE", "golden_scratch", "MemoryRegion", "main_region_kind", "memory_regions", "region_for",
           "check_memory_kind"]

MIB = 1 << 20
#: simulated base of the DDR channels beside HBM (64 GiB: above the 16 GiB of the largest HBM part)
DDR_BASE = 1 << 36
#: simulated base of host memory reached over PCIe (1 TiB)
HOST_BASE = 1 << 40
#: where the golden models put the scratch buffers of a step they replay on a snapshot of the device
#: memory (256 TiB): no device buffer is there. (At 64 GiB they sat on the DDR's first buffers.)
GOLDEN_SCRATCH_BASE = 1 << 48


def golden_scratch(names) -> dict:
    """A golden replay's scratch addresses: 4 GiB apart from :data:`GOLDEN_SCRATCH_BASE`, one per name."""
    return {name: GOLDEN_SCRATCH_BASE + i * (1 << 32) for i, name in enumerate(names)}


@dataclass(frozen=True)
class MemoryRegion:
    """One memory region of the simulated address space beside the main memory."""

    name: str               # bank name as XRT spells it: HOST, DDR[0], DDR[1]
    kind: str               # "host" or "ddr"
    channel: int
    base: int
    size: int
    peak_gbps: float        # per direction, shared by every port that reaches the region
    read_latency_ns: float
    write_latency_ns: float

    def contains(self, addr: int, nbytes: int = 1) -> bool:
        return self.base <= addr and addr + nbytes <= self.base + self.size

    def latency_cycles(self, clock_mhz: float, *, write: bool = False) -> int:
        ns = self.write_latency_ns if write else self.read_latency_ns
        return max(1, math.ceil(ns * clock_mhz / 1e3))

    def bytes_per_cycle(self, clock_mhz: float) -> float:
        return self.peak_gbps * 1e3 / clock_mhz


def _board(board) -> Board:
    return load_board(board) if isinstance(board, str) else board


def main_region_kind(board) -> str:
    """The kind of the board's main memory: "hbm" (Alveo) or "ddr" (Zynq PS DDR)."""
    return _board(board).memory.kind


def check_memory_kind(board, memory) -> str:
    """``memory`` if a buffer can live there on ``board``; a named ValueError otherwise."""
    b = _board(board)
    if not isinstance(memory, str):
        raise TypeError(f"memory must be one of {', '.join(MEMORY_KINDS)}, got {type(memory).__name__}")
    if memory not in MEMORY_KINDS:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_KINDS)}, got {memory!r}")
    if not b.has_memory(memory):
        have = [k for k in MEMORY_KINDS if b.has_memory(k)]
        raise ValueError(f"{b.name} has no {memory} memory; it has {', '.join(have)}")
    return memory


def memory_regions(board) -> tuple[MemoryRegion, ...]:
    """The regions beside the main memory, in the simulated address map (none on Zynq boards,
    whose host memory is the main memory)."""
    b = _board(board)
    out = []
    for m in b.memories:
        if m.shared_with_board:
            continue
        size = m.channel_size_mib * MIB
        for ch in range(m.channels):
            if m.kind == "host":
                base, name = HOST_BASE + ch * size, "HOST" if m.channels == 1 else f"HOST[{ch}]"
            else:
                base, name = DDR_BASE + ch * size, f"{m.sp_tag or 'DDR'}[{ch}]"
            out.append(MemoryRegion(name, m.kind, ch, base, size, m.channel_peak_gbps,
                                    m.read_latency_ns, m.write_latency_ns))
    main_end = b.memory.channels * b.memory.channel_size_mib * MIB
    for r in out:                   # the bases above must leave the main memory and each other alone
        assert r.base >= main_end, f"{b.name}: region {r.name} overlaps the main memory"
    return tuple(out)


def region_for(board, memory: str, channel: int = 0) -> MemoryRegion | None:
    """The region of ``memory`` channel ``channel``; None when ``memory`` is the main memory."""
    b = _board(board)
    check_memory_kind(b, memory)
    if memory == b.memory.kind:
        return None
    regions = [r for r in memory_regions(b) if r.kind == memory]
    if not regions:                 # host memory shared with the board's own (Zynq)
        return None
    if not 0 <= channel < len(regions):
        raise ValueError(f"{b.name} has {len(regions)} {memory} channel(s), got channel {channel}")
    return regions[channel]
