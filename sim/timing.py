"""Memory timing of one AXI port in kernel cycles, derived from the board file.

The co-simulation needs latencies and bandwidth in cycles of the kernel clock,
while boards state them in ns and GB/s; the conversion lives here so that the
generated harness header and the Python wrapper agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PortTiming", "DEFAULT_MAX_OUTSTANDING", "MAX_LATENCY_CYCLES", "board_port_timing"]

#: Bursts in flight per port and direction that the memory controller accepts.
#: The board files state no figure; 32 is in the range of HBM/DDR AXI ports and
#: above every kernel reader's own limit (config ``axi.max_outstanding`` <= 32).
DEFAULT_MAX_OUTSTANDING = 32
#: Latencies beyond this (about 56 ms at 300 MHz) are not a memory model but a mistake.
MAX_LATENCY_CYCLES = 1 << 24


def _int_in(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of cycles, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class PortTiming:
    read_latency: int           # cycles from AR handshake to the first R beat
    write_latency: int          # cycles from the last W beat to the B response
    bytes_per_cycle: float      # per direction, at most the port width
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING

    def __post_init__(self):
        _int_in("read_latency", self.read_latency, 1, MAX_LATENCY_CYCLES)
        _int_in("write_latency", self.write_latency, 1, MAX_LATENCY_CYCLES)
        _int_in("max_outstanding", self.max_outstanding, 1, 256)
        bpc = self.bytes_per_cycle
        if isinstance(bpc, bool) or not isinstance(bpc, (int, float)):
            raise TypeError(f"bytes_per_cycle must be a number, got {type(bpc).__name__} {bpc!r}")
        if isinstance(bpc, int) and bpc > 1024:              # math.isfinite overflows on huge ints
            raise ValueError(f"bytes_per_cycle must be a finite number in (0, 1024], got {bpc}")
        if not (math.isfinite(bpc) and 0 < bpc <= 1024):
            raise ValueError(f"bytes_per_cycle must be a finite number in (0, 1024], got {bpc!r}")


def board_port_timing(board: str | None, clock_mhz: float, data_width: int) -> PortTiming:
    """Latency and bandwidth of one memory channel of ``board`` seen from a kernel at ``clock_mhz``."""
    width_bytes = data_width // 8
    if board is None:
        return PortTiming(32, 32, float(width_bytes))
    from hbmforge.boards import load_board
    b = load_board(board)
    return PortTiming(
        read_latency=b.latency_cycles(clock_mhz),
        write_latency=b.latency_cycles(clock_mhz, write=True),
        bytes_per_cycle=min(float(width_bytes), b.channel_bytes_per_cycle(clock_mhz)),
    )
