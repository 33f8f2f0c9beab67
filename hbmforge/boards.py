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
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Board", "BoardResources", "BoardMemory", "OtherMemory", "MEMORY_KINDS", "board_names", "load_board",
           "UnknownBoardError"]

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
