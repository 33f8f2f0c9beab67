"""Memory timing of one AXI port in kernel cycles, derived from the board file.

The co-simulation needs latencies and bandwidth in cycles of the kernel clock,
while boards state them in ns and GB/s; the conversion lives here so that the
generated harness header and the Python wrapper agree.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PortTiming", "DEFAULT_MAX_OUTSTANDING", "board_port_timing"]

#: Bursts in flight per port and direction that the memory controller accepts.
#: The board files state no figure; 32 is in the range of HBM/DDR AXI ports and
#: above every kernel reader's own limit (config ``axi.max_outstanding`` <= 32).
DEFAULT_MAX_OUTSTANDING = 32


@dataclass(frozen=True)
class PortTiming:
    read_latency: int           # cycles from AR handshake to the first R beat
    write_latency: int          # cycles from the last W beat to the B response
    bytes_per_cycle: float      # per direction, at most the port width
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING

    def __post_init__(self):
        if self.read_latency < 1 or self.write_latency < 1:
            raise ValueError(f"latencies must be >= 1 cycle, got read {self.read_latency}, "
                             f"write {self.write_latency}")
        if not self.bytes_per_cycle > 0:
            raise ValueError(f"bytes_per_cycle must be > 0, got {self.bytes_per_cycle}")
        if not 1 <= self.max_outstanding <= 256:
            raise ValueError(f"max_outstanding must be in [1, 256], got {self.max_outstanding}")


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
