"""Board descriptions: the resource and memory figures every budget check and model uses.

Each board is one YAML file in ``boards/`` (shipped as ``hbmforge.board_files``);
:func:`load_board` validates it with the same strict pydantic rules as configs.
"""
from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Board", "BoardResources", "BoardMemory", "DramTiming", "MemorySwitch", "OtherMemory", "MEMORY_KINDS",
           "board_names", "load_board", "UnknownBoardError"]

#: the memories a buffer can live in (``Device.alloc(..., memory=...)``)
MEMORY_KINDS = ("hbm", "ddr", "host")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoardResources(_Strict):
    lut: int = Field(gt=0)
    ff: int = Field(gt=0)
    dsp: int = Field(gt=0)
    bram36: int = Field(ge=0)
    uram: int = Field(ge=0)


class MemorySwitch(_Strict):
    """The HBM switch between AXI ports and pseudo-channels (docs/hbm-model.md): a port reaches
    the channels of its own group directly; another group costs latency per boundary crossed
    and shares each boundary's lateral link."""

    group_channels: int = Field(gt=0)           # channels (and AXI ports) behind one switch group
    groups_per_stack: int = Field(gt=0)
    hop_latency_ns: float = Field(ge=0)         # per group boundary crossed
    stack_latency_ns: float = Field(ge=0)       # more when the access crosses to the other stack
    lateral_gbps: float = Field(gt=0)           # one boundary's lateral link, per direction


class DramTiming(_Strict):
    """The DRAM behind the board's memory ports, for the calibrated co-sim model (docs/hbm-model.md).

    ``devices`` independent channels (HBM pseudo-channels, or the one DDR4 channel the HP ports
    share) of ``banks`` banks with rows of ``page_bytes``; tRCD and tRP are the differences of
    the measured idle latencies (row closed - row hit, row miss - row closed)."""

    standard: str                               # "HBM2", "DDR4-2400", ...
    devices: int = Field(gt=0)
    device_size_mib: int = Field(gt=0)          # address span of one device (device d at d x this)
    banks: int = Field(gt=0, le=64)
    page_bytes: int = Field(gt=0)
    burst_bytes: int = Field(gt=0)              # one column access
    bus_gbps: float = Field(gt=0)               # one device's data bus
    hit_latency_ns: float = Field(gt=0)         # idle read latency at the port: row hit
    closed_latency_ns: float = Field(gt=0)      # bank precharged (activate first)
    miss_latency_ns: float = Field(gt=0)        # another row open (precharge, activate)
    t_ras_ns: float = Field(ge=0)
    t_rrd_ns: float = Field(ge=0)
    t_faw_ns: float = Field(ge=0)
    t_refi_ns: float = Field(gt=0)
    t_rfc_ns: float = Field(ge=0)
    t_wtr_ns: float = Field(ge=0)               # write data to the next read
    t_rtw_ns: float = Field(ge=0)               # read data to the next write data
    switch: MemorySwitch | None = None

    @model_validator(mode="after")
    def _order(self) -> "DramTiming":
        if not self.hit_latency_ns <= self.closed_latency_ns <= self.miss_latency_ns:
            raise ValueError("latencies must satisfy hit <= closed <= miss")
        if self.t_rfc_ns >= self.t_refi_ns:
            raise ValueError("t_rfc_ns must be below t_refi_ns")
        if self.page_bytes % self.burst_bytes:
            raise ValueError("page_bytes must be a multiple of burst_bytes")
        return self

    @property
    def t_rcd_ns(self) -> float:
        return self.closed_latency_ns - self.hit_latency_ns

    @property
    def t_rp_ns(self) -> float:
        return self.miss_latency_ns - self.closed_latency_ns

    @property
    def peak_gbps(self) -> float:
        return self.devices * self.bus_gbps


class BoardMemory(_Strict):
    kind: Literal["hbm", "ddr"]
    channels: int = Field(gt=0)
    channel_size_mib: int = Field(gt=0)
    axi_data_width: Literal[64, 128, 256, 512]
    axi_clock_mhz: float = Field(gt=0)
    channel_peak_gbps: float = Field(gt=0)
    read_latency_ns: float = Field(ge=0)
    write_latency_ns: float = Field(ge=0)
    sp_tag: str | None = None
    ps_ports: list[str] | None = None
    dram: DramTiming | None = None              # the calibrated model's figures (docs/hbm-model.md)


class OtherMemory(_Strict):
    """A memory beside the board's main one: host memory over PCIe, or DDR4 next to the HBM.

    Each has its own timing model (latency, bandwidth per channel and direction); every figure
    is cited in the board file. ``shared_with_board``: the same physical memory as ``memory``
    (the PS DDR of a Zynq board is both the PL's memory and the CPU's).
    """

    kind: Literal["host", "ddr"]
    channels: int = Field(gt=0)
    channel_size_mib: int = Field(gt=0)
    channel_peak_gbps: float = Field(gt=0)      # per channel and direction
    read_latency_ns: float = Field(ge=0)
    write_latency_ns: float = Field(ge=0)
    sp_tag: str | None = None                   # v++ --connectivity.sp bank tag (HOST, DDR)
    shared_with_board: bool = False


class Board(_Strict):
    name: str
    description: str
    part: str
    family: str
    host_stack: Literal["xrt", "pynq"]
    platform: str | None = None
    default_clock_mhz: float = Field(gt=0)
    resources: BoardResources
    memory: BoardMemory
    memories: list[OtherMemory] = Field(default_factory=list)

    def other_memory(self, kind: str) -> OtherMemory | None:
        """The ``host`` or ``ddr`` memory beside the main one, or None if the board has none."""
        return next((m for m in self.memories if m.kind == kind), None)

    def has_memory(self, kind: str) -> bool:
        """Whether a buffer can live in ``kind`` (one of :data:`MEMORY_KINDS`) on this board."""
        return kind == self.memory.kind or self.other_memory(kind) is not None

    def channel_bytes_per_cycle(self, clock_mhz: float) -> float:
        """Peak bytes one memory channel can deliver per kernel clock cycle."""
        return self.memory.channel_peak_gbps * 1e3 / clock_mhz

    def port_map(self, stream_ports: int) -> dict[str, int]:
        """Memory channel of each AXI master port (``data``, ``w0`` ...) of a design that streams
        from ``stream_ports`` ports: ``data`` on channel 0 and ``w<i>`` on ``i + 1`` while they fit;
        with as many stream ports as channels, ``w<i>`` on channel ``i`` and ``data`` shares
        channel 0 (on HBM through the switch: the two share that pseudo-channel)."""
        n = self.memory.channels
        if isinstance(stream_ports, bool) or not isinstance(stream_ports, int):
            raise TypeError(f"stream_ports must be an int, got {type(stream_ports).__name__}")
        if not 0 <= stream_ports <= n:
            raise ValueError(f"stream_ports must be in [0, {n}] on {self.name}, got {stream_ports}")
        first = 1 if stream_ports < n else 0
        return {"data": 0, **{f"w{i}": i + first for i in range(stream_ports)}}

    def latency_cycles(self, clock_mhz: float, *, write: bool = False) -> int:
        ns = self.memory.write_latency_ns if write else self.memory.read_latency_ns
        return max(1, math.ceil(ns * clock_mhz / 1e3))


class UnknownBoardError(ValueError):
    pass


def board_names() -> list[str]:
    files = resources.files("hbmforge.board_files").iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def load_board(name: str) -> Board:
    names = board_names()
    if name not in names:
        raise UnknownBoardError(f"unknown board {name!r}; known boards: {', '.join(names)}")
    text = resources.files("hbmforge.board_files").joinpath(f"{name}.yaml").read_text()
    return Board.model_validate(yaml.safe_load(text))
