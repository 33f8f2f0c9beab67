"""Memory timing of one AXI port in kernel cycles, derived from the board file.

The co-simulation needs latencies and bandwidth in cycles of the kernel clock,
while boards state them in ns and GB/s; the conversion lives here so that the
generated harness header and the Python wrapper agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PortTiming", "DEFAULT_MAX_OUTSTANDING", "MAX_LATENCY_CYCLES", "board_port_timing", "MEMORY_MODELS",
           "DRAM_PARAM_NAMES", "check_memory_model", "dram_params"]

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


#: the memory models a co-simulation offers (docs/hbm-model.md): ``ideal`` (each port its own
#: fixed latency and bandwidth, the default) and ``calibrated`` (the board's DRAM: shared
#: channels, banks and rows, refresh, turnaround, the HBM switch)
MEMORY_MODELS = ("ideal", "calibrated")

#: field order of the harness's DramParams (sim/harness/dram_model.h)
DRAM_PARAM_NAMES = ("devices", "device_bytes", "banks", "page_bytes", "burst_bytes", "burst_cycles", "hit_latency",
                    "t_rcd", "t_rp", "t_ras", "t_rrd", "t_faw", "t_refi", "t_rfc", "t_wtr", "t_rtw",
                    "group_channels", "groups_per_stack", "hop_latency", "stack_latency",
                    "lateral_bytes_per_cycle")


def check_memory_model(model) -> str:
    if not isinstance(model, str) or model not in MEMORY_MODELS:
        raise ValueError(f"memory model must be one of {', '.join(MEMORY_MODELS)}, got {model!r}")
    return model


def dram_params(board: str, clock_mhz: float) -> dict[str, float]:
    """The calibrated model's parameters of ``board`` in cycles of a ``clock_mhz`` kernel clock
    (``DRAM_PARAM_NAMES`` order); ValueError if the board file has no ``memory.dram`` section."""
    from hbmforge.boards import load_board
    b = load_board(board)
    d = b.memory.dram
    if d is None:
        raise ValueError(f"board {board} states no DRAM timing (memory.dram): only the ideal memory model")
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not 0 < clock_mhz <= 1000:
        raise ValueError(f"clock_mhz must be a number in (0, 1000], got {clock_mhz!r}")
    cyc = clock_mhz / 1e3                                   # cycles per ns
    sw = d.switch

    def per_cycle(gbps: float) -> float:                    # GB/s -> bytes per kernel cycle
        return gbps * 1e3 / clock_mhz
    return {
        "devices": float(d.devices),
        "device_bytes": float(d.device_size_mib << 20),
        "banks": float(d.banks),
        "page_bytes": float(d.page_bytes),
        "burst_bytes": float(d.burst_bytes),
        "burst_cycles": d.burst_bytes / per_cycle(d.bus_gbps),
        "hit_latency": d.hit_latency_ns * cyc,
        "t_rcd": d.t_rcd_ns * cyc,
        "t_rp": d.t_rp_ns * cyc,
        "t_ras": d.t_ras_ns * cyc,
        "t_rrd": d.t_rrd_ns * cyc,
        "t_faw": d.t_faw_ns * cyc,
        "t_refi": d.t_refi_ns * cyc,
        "t_rfc": d.t_rfc_ns * cyc,
        "t_wtr": d.t_wtr_ns * cyc,
        "t_rtw": d.t_rtw_ns * cyc,
        "group_channels": float(sw.group_channels) if sw else 0.0,
        "groups_per_stack": float(sw.groups_per_stack) if sw else 0.0,
        "hop_latency": sw.hop_latency_ns * cyc if sw else 0.0,
        "stack_latency": sw.stack_latency_ns * cyc if sw else 0.0,
        "lateral_bytes_per_cycle": per_cycle(sw.lateral_gbps) if sw else 0.0,
    }
