"""The accelerator config: the single source of truth every other artefact derives from.

A YAML file validated by these pydantic models (``extra="forbid"``) names the
board, the clock, the engines and the memory port map. :func:`load_config`
returns a validated :class:`AcceleratorConfig` or raises :class:`ConfigError`
whose message names each bad field and what it allows.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .boards import Board, board_names, load_board

__all__ = [
    "CONFIG_VERSION",
    "AxiParams",
    "MatmulEngine",
    "AttentionEngine",
    "CopyEngine",
    "NetworkEngine",
    "MemoryEngine",
    "TileCacheParams",
    "OmapParams",
    "VectorEngine",
    "ENGINE_KINDS",
    "AcceleratorConfig",
    "ConfigError",
    "load_config",
    "read_yaml",
    "parse_config",
    "starter_config",
    "config_hash",
]

CONFIG_VERSION = 1
#: ``w<i>`` ports one engine may stream from: every pseudo-channel of a 32-channel HBM board
MAX_STREAM_PORTS = 32
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


class ConfigError(ValueError):
    """A config that cannot be built; the message names the field and the allowed values."""


def _power_of_two(value: int, field: str, lo: int, hi: int) -> int:
    if value < lo or value > hi or value & (value - 1):
        allowed = ", ".join(str(1 << i) for i in range(lo.bit_length() - 1, hi.bit_length()))
        raise ValueError(f"{field} must be a power of two in [{lo}, {hi}] ({allowed}), got {value}")
    return value


class _Strict(BaseModel):
    # strict: a YAML ``true`` is not a number, ``4.0`` is not an int (no silent coercion)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AxiParams(_Strict):
    """AXI4 master parameters shared by every memory port."""

    data_width: Literal[64, 128, 256, 512] | None = Field(
        None, description="bits per beat; default: the board's memory AXI width")
    id_width: int = Field(4, ge=2, le=8, description="AXI ID bits (ARID/AWID/RID/BID); the data port uses 4 read IDs")
    max_burst_beats: Literal[2, 4, 8, 16, 32, 64, 128, 256] = Field(
        32, description="longest INCR burst issued (bursts never cross 4 KiB)")
    max_outstanding: int = Field(8, ge=1, le=32, description="read bursts in flight per reader")


class _EngineBase(_Strict):
    """What every engine entry has: a ``kind`` tag (set by the subclass) and an instance name."""

    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"name must match {_IDENT.pattern}, got {v!r}")
        return v

    def exclusive_ports(self, config) -> tuple[int, ...]:
        """Stream ports (``i`` of ``w<i>``) only this engine reaches in ``config`` (the other
        engines stream from fewer)."""
        return ()


class MatmulEngine(_EngineBase):
    """Low-bit matmul: int8 activations x int4/int8 weights with per-group scales.

    An array of ``rows`` x ``lanes`` multipliers: each cycle it takes ``lanes``
    weights of one output column and applies them to ``rows`` activation rows
    (GEMM weight reuse); weights stream from ``weight_ports`` memory ports.
    """

    kind: Literal["matmul"] = "matmul"
    name: str = Field("mm0", description="engine instance name (identifier)")
    rows: int = Field(4, ge=1, le=64, description="activation rows computed in parallel (weight reuse)")
    lanes: int = Field(64, description="K elements multiplied per cycle per row (power of two)")
    weight_ports: int = Field(1, description="memory ports that stream weights (power of two, at most 32: "
                                             "one per HBM pseudo-channel of a U280/U55C)")
    weight_bits: list[Literal[2, 4, 8, "ternary"]] = Field(
        default_factory=lambda: [4, 8],
        description="weight formats this engine accepts at run time: 2, 4, 8 (two's complement) "
                    "and 'ternary' ({-1, 0, +1}, packed as `ternary_packing` says)")
    ternary_packing: Literal["2bit", "5trit"] = Field(
        "2bit", description="ternary weights in memory: '2bit' (one 2-bit code per weight) or "
                            "'5trit' (five base-3 digits per byte, 1.6 bits per weight)")
    sparse24: bool | list[Literal[2, 4, 8, "ternary"]] = Field(
        False, description="also accept 2:4 structured-sparse weights (2 values + two 2-bit indexes per 4 "
                           "weights; wbits | 0x10): true for every weight format, or a list of them (each "
                           "format's 2:4 unpacker costs LUTs: about 27 a lane for int4 and int8)")
    sparse24_pairs: bool = Field(
        False, description="the 2:4 pair fire: 2:4 jobs of a 2-bit format (2, 'ternary') with N even skip the "
                           "zeros, two output columns per fire (needs sparse24, a 2-bit and a 4- or 8-bit "
                           "format, max_k == lanes and arch 'mac'; about 10 LUTs more per lane and row)")
    dense_pairs: bool = Field(
        False, description="the dense pair fire: dense jobs of a 2-bit format (2, 'ternary') with N even fire "
                           "two output columns at once, two products a lane (dense W2 decode is otherwise "
                           "array-bound at half a 512-bit beat of every port a cycle); needs a 2-bit and a 4- "
                           "or 8-bit format, max_k == lanes and arch 'mac', and shares the pair fire's "
                           "datapath with sparse24_pairs")
    weight_prefetch: int = Field(
        0, ge=0, description="read-ahead words per weight port: 0 (off) or a power of two 512..8192. The matmul "
                             "reads its weights through a reader of its own on each weight port, with a FIFO "
                             "this deep (URAM: 8 blocks per 4096 words of 512 bits), and the command processor "
                             "hands it a MATMUL descriptor while the VECTOR or ATTENTION descriptor before it "
                             "runs: the weights stream during that descriptor (docs/engines/matmul.md, "
                             "\"Weight prefetch\")")
    arch: Literal["mac", "tlmm"] = Field(
        "mac", description="'mac': multiplier array (sign-select for ternary); 'tlmm': ternary "
                           "table-lookup matmul (weight_bits must be ['ternary'])")
    tlmm_group: int = Field(4, ge=2, le=5, description="tlmm: activations per lookup-table group (g)")
    int4_products: Literal["dsp", "lut"] = Field(
        "dsp", description="how int4 weight lanes multiply: 'dsp' (one DSP slice per lane) or 'lut' "
                           "(shift-and-add, about 33 LUTs per lane, no DSP); 'lut' needs weight_bits without 8")
    group_size: int = Field(128, description="K elements sharing one weight scale (power of two)")
    scale_bits: int = Field(16, ge=4, le=16, description="bits of each unsigned group-scale mantissa (stored as u16)")
    max_k: int = Field(4096, description="largest K one pass accumulates on chip (activation buffer depth)")
    split_k: int = Field(16, ge=1, le=64, description="K slices of max_k one descriptor accumulates exactly "
                                                      "(int64 partial sums in memory): K up to split_k x max_k")
    scale_stream: Literal["data", "inline"] = Field(
        "data", description="where the group-scale mantissas stream from: 'data' (their own buffer at the "
                            "descriptor's s_addr, read on the data port) or 'inline' (interleaved with the "
                            "weights in the weight stripes, spread over every weight port; s_addr is ignored)")
    tile_n: int | None = Field(None, description="output columns per on-chip weight tile (power of two; the "
                                                 "buffer holds two tiles); default 16")
    tile_m: int | None = Field(None, description="activation rows held on chip at K = max_k (rows x a power of "
                                                 "two >= 2; more at smaller K); GEMM reads each weight once per "
                                                 "chunk of these rows; default 8 x rows")

    @field_validator("tile_n")
    @classmethod
    def _tile_n(cls, v):
        return v if v is None else _power_of_two(v, "tile_n", 1, 1024)

    @field_validator("lanes")
    @classmethod
    def _lanes(cls, v: int) -> int:
        return _power_of_two(v, "lanes", 8, 4096)

    @field_validator("weight_ports")
    @classmethod
    def _ports(cls, v: int) -> int:
        return _power_of_two(v, "weight_ports", 1, MAX_STREAM_PORTS)

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        return _power_of_two(v, "group_size", 16, 8192)

    @field_validator("weight_bits")
    @classmethod
    def _wbits(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("weight_bits must list at least one of 2, 4, 8, 'ternary'")
        if len(set(v)) != len(v):
            raise ValueError(f"weight_bits has duplicates: {v}")
        return sorted(v, key=lambda b: 0 if b == "ternary" else b)

    @property
    def stream_ports(self) -> int:
        """``w<i>`` ports this engine streams from."""
        return self.weight_ports

    @property
    def dense_pair_formats(self) -> tuple:
        """The 2-bit formats whose dense jobs can run as pair fires: int2, and ternary in 2-bit codes
        (the pair lane reads two 2-bit codes side by side)."""
        return tuple(b for b in self.weight_bits if b == 2 or (b == "ternary" and self.ternary_packing == "2bit"))

    @property
    def sparse24_formats(self) -> tuple:
        """The formats with a 2:4 sparse code: every one of ``weight_bits`` for ``sparse24: true``."""
        if self.sparse24 is True:
            return tuple(self.weight_bits)
        return tuple(b for b in self.weight_bits if b in (self.sparse24 or ()))

    @model_validator(mode="after")
    def _k(self) -> "MatmulEngine":
        if self.arch == "tlmm" and list(self.weight_bits) != ["ternary"]:
            raise ValueError(f"arch 'tlmm' computes ternary weights only: weight_bits must be "
                             f"['ternary'], got {list(self.weight_bits)}")
        align = max(self.lanes, self.group_size)
        if self.max_k < align or self.max_k % align or self.max_k > 1 << 20:
            raise ValueError(
                f"max_k must be a multiple of max(lanes, group_size) = {align} and at most 1048576, "
                f"got {self.max_k}")
        if self.scale_stream == "inline" and "ternary" in self.weight_bits and self.ternary_packing == "5trit":
            raise ValueError(
                "scale_stream: inline needs a whole number of weight words per scale word (group_size x bits "
                "per weight / 16); 'ternary' with ternary_packing '5trit' stores 1.6 bits per weight: use "
                "ternary_packing '2bit' (or drop 'ternary' from weight_bits, or scale_stream 'data')")
        if self.tile_m is not None:
            per = self.tile_m // self.rows if self.tile_m % self.rows == 0 else 0
            if per < 2 or per & (per - 1) or self.tile_m > 1 << 16:
                raise ValueError(f"tile_m must be rows ({self.rows}) x a power of two >= 2 and at most 65536, "
                                 f"got {self.tile_m}")
        if isinstance(self.sparse24, list):
            extra = [b for b in self.sparse24 if b not in self.weight_bits]
            if not self.sparse24 or extra or len(set(self.sparse24)) != len(self.sparse24):
                raise ValueError(f"sparse24 must be true, false or a list of distinct formats of weight_bits "
                                 f"{list(self.weight_bits)}, got {self.sparse24}")
        if self.sparse24_pairs:
            two = [b for b in self.sparse24_formats if b in (2, "ternary")]
            wide = [b for b in self.weight_bits if b in (4, 8)]
            if not self.sparse24 or not two or not wide or self.max_k != self.lanes or self.arch != "mac":
                raise ValueError(
                    f"sparse24_pairs needs sparse24 with a 2-bit format (2 or 'ternary'), weight_bits with a "
                    f"4- or 8-bit format (lanes wide enough for a value and its index), max_k == lanes (one "
                    f"line per column) and arch 'mac'; got sparse24={self.sparse24}, weight_bits="
                    f"{list(self.weight_bits)}, max_k={self.max_k}, lanes={self.lanes}, arch={self.arch!r}")
        if self.dense_pairs:
            two = self.dense_pair_formats
            wide = [b for b in self.weight_bits if b in (4, 8)]
            if not two or not wide or self.max_k != self.lanes or self.arch != "mac":
                raise ValueError(
                    f"dense_pairs needs weight_bits with a 2-bit format (2, or 'ternary' with ternary_packing "
                    f"'2bit') and a 4- or 8-bit one (lanes wide enough for two 2-bit weights), max_k == lanes "
                    f"(one line per column) and arch 'mac'; got weight_bits={list(self.weight_bits)}, "
                    f"ternary_packing={self.ternary_packing!r}, max_k={self.max_k}, lanes={self.lanes}, "
                    f"arch={self.arch!r}")
        if self.int4_products == "lut" and 8 in self.weight_bits:
            raise ValueError(f"int4_products 'lut' builds lanes of at most 4 bits: weight_bits must not hold 8, "
                             f"got {list(self.weight_bits)} (or int4_products 'dsp')")
        return self


class AttentionEngine(_EngineBase):
    """Attention over a paged int8/int4 KV cache: decode (GQA) and tiled causal prefill.

    Each tile holds ``rows`` query rows that share one KV head (the query heads of a
    GQA group in decode, consecutive positions in prefill); every K/V word read from
    memory serves all rows. K pages stream on port ``w0``, V pages on ``w<kv_ports-1>``.
    With ``head_parallel`` the engine also runs head-parallel decode (descriptor ``kv_layout``
    1): the rows of a tile are different heads, row r reading K on ``w<2r>`` and V on ``w<2r+1>``
    (docs/engines/attention.md).
    """

    kind: Literal["attention"] = "attention"
    name: str = Field("attn0", description="engine instance name (identifier)")
    head_dim: int = Field(128, description="elements per head (power of two)")
    rows: int = Field(8, description="query rows per tile sharing each K/V read (power of two)")
    kv_bits: list[Literal[4, 8]] = Field(default_factory=lambda: [4, 8],
                                         description="KV cache widths this engine accepts at run time")
    kv_group_size: int = Field(32, description="head_dim elements sharing one K/V scale (power of two)")
    page_tokens: int = Field(16, description="tokens per KV cache page (power of two)")
    max_context: int = Field(8192, description="longest context a sequence may reach, in tokens")
    head_parallel: bool = Field(False, description="also run head-parallel decode jobs (kv_layout 1): the rows "
                                                   "of a tile are different heads, each reading its own K/V "
                                                   "ports; needs kv_ports = 2 x rows")
    kv_ports: int = Field(1, description="1: K and V share port w0; 2: K on w0, V on w1; "
                                         "2 x rows with head_parallel (K of row r on w<2r>, V on w<2r+1>)")
    int4_products: Literal["dsp", "lut", "qk_lut"] = Field(
        "dsp", description="how the q x k and mantissa x value products by int4 K/V lanes are built: 'dsp' "
                           "(one DSP slice each), 'lut' (shift-and-add, 42 / 79 LUTs each, no DSP) or "
                           "'qk_lut' (q x k in LUTs, the mantissa x value products, 79 LUTs as "
                           "shift-and-add, in DSPs); 'lut' and 'qk_lut' need kv_bits [4]")

    @model_validator(mode="after")
    def _int4_products(self) -> "AttentionEngine":
        if self.int4_products != "dsp" and 8 in self.kv_bits:
            raise ValueError(f"int4_products {self.int4_products!r} builds int4 K/V lanes only: kv_bits must "
                             f"be [4], got {list(self.kv_bits)} (or int4_products 'dsp')")
        return self

    @field_validator("kv_ports")
    @classmethod
    def _kv_ports(cls, v: int, info) -> int:
        rows, hp = info.data.get("rows"), info.data.get("head_parallel", False)
        if rows is None:
            return v                    # rows itself failed; reported there
        if hp:
            if rows < 2:
                raise ValueError(f"head_parallel needs rows >= 2 (one head per row), got rows {rows}; "
                                 f"set head_parallel: false for kv_ports 1 or 2")
            if v != 2 * rows:
                raise ValueError(f"Input should be 2 x rows = {2 * rows} with head_parallel (K of row r on w<2r>, "
                                 f"V on w<2r+1>; needs rows >= 2), got {v} (rows {rows})")
        elif v not in (1, 2):
            raise ValueError(f"Input should be 1 or 2, got {v} (or 2 x rows = {2 * rows} with head_parallel: true)")
        return v

    @field_validator("head_dim")
    @classmethod
    def _head_dim(cls, v: int) -> int:
        return _power_of_two(v, "head_dim", 16, 256)

    @field_validator("rows")
    @classmethod
    def _rows(cls, v: int) -> int:
        return _power_of_two(v, "rows", 1, 32)

    @field_validator("kv_group_size")
    @classmethod
    def _kv_group(cls, v: int) -> int:
        return _power_of_two(v, "kv_group_size", 8, 256)

    @field_validator("page_tokens")
    @classmethod
    def _page(cls, v: int) -> int:
        return _power_of_two(v, "page_tokens", 4, 1024)

    @field_validator("kv_bits")
    @classmethod
    def _kv_bits(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("kv_bits must list at least one of 4, 8")
        if len(set(v)) != len(v):
            raise ValueError(f"kv_bits has duplicates: {v}")
        return sorted(v)

    @property
    def stream_ports(self) -> int:
        return self.kv_ports

    @model_validator(mode="after")
    def _shape(self) -> "AttentionEngine":
        if self.kv_group_size > self.head_dim:
            raise ValueError(f"kv_group_size {self.kv_group_size} must divide head_dim {self.head_dim}")
        if self.max_context < self.page_tokens or self.max_context % self.page_tokens \
                or self.max_context > 1 << 20:
            raise ValueError(f"max_context must be a multiple of page_tokens = {self.page_tokens} "
                             f"and at most 1048576, got {self.max_context}")
        return self


class CopyEngine(_EngineBase):
    """COPY/FILL: copy a buffer between any two memory ports, or fill one with a 64-bit pattern.

    Whole-model programs use it for residual copies and KV-cache moves without a host round
    trip. Words stream from the source port's reader through a FIFO of ``buffer_words`` to
    the destination port's writer; with it, every ``w<i>`` port of the design can be written.
    """

    kind: Literal["copy"] = "copy"
    name: str = Field("copy0", description="engine instance name (identifier)")
    buffer_words: int = Field(32, description="port words buffered between reader and writer (power of two)")

    @field_validator("buffer_words")
    @classmethod
    def _buffer(cls, v: int) -> int:
        return _power_of_two(v, "buffer_words", 2, 1024)

    @property
    def stream_ports(self) -> int:
        return 0                # it uses whatever ports the other engines bring


class VectorEngine(_EngineBase):
    """Row-wise and element-wise ops between layers: norms, GELU/SiLU, SwiGLU, residual and bias
    adds, RoPE, requantization to int8 rows, Q records and KV-cache appends.

    It holds ``rows`` (the matmul's) rows of up to ``max_dim`` int32 elements on chip, so a whole
    block of activations is read once, computed and written in the next layer's format. Q records
    and KV appends need an attention engine in the same design (they use its geometry).
    """

    kind: Literal["vector"] = "vector"
    name: str = Field("vec0", description="engine instance name (identifier)")
    max_dim: int = Field(4096, description="longest row (hidden or MLP size) the engine holds (power of two)")
    activations: list[Literal["gelu", "silu"]] = Field(
        default_factory=lambda: ["gelu", "silu"],
        description="activation tables built into the engine: 'gelu' (exact erf) and/or 'silu'")
    table_port: bool = Field(
        False, description="read the per-column tables (column multipliers, biases, norm gammas and betas) "
                           "through the stream port after the attention engine's KV ports (w0 without one), "
                           "beside the operands on the data port: the two loads overlap. The host puts the "
                           "tables in that port's memory")
    store_words: Literal[1, 4] = Field(
        4, description="tile words an ACT8 or Q-record store quantizes a cycle: 4 (a whole port word of "
                       "int8 a cycle; the quantizer has 4 x lanes lanes, about 395 LUTs and 2 DSPs each) or 1 "
                       "(a quarter word a cycle; for LUT-poor boards)")

    @field_validator("max_dim")
    @classmethod
    def _max_dim(cls, v: int) -> int:
        return _power_of_two(v, "max_dim", 16, 65536)

    @field_validator("activations")
    @classmethod
    def _activations(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"activations has duplicates: {v}")
        return sorted(v)

    @property
    def stream_ports(self) -> int:
        return 0                # it writes the KV pools on the attention engine's ports


class NetworkEngine(_EngineBase):
    """The all-reduce endpoint: the ALLREDUCE opcode over the aggregation switch.

    It cuts a buffer into packets of ``packet_words`` port words, keeps up to ``window``
    switch slots in flight, retransmits on timeout and writes the reduced blocks back in
    place (docs/engines/network.md). The kernel gets an AXI4-Stream pair ``s_axis_net`` /
    ``m_axis_net`` of the port width; the switch (``hbmforge.generators.network``) must be
    generated with the same width and ``packet_words``, at least ``window`` slots and ``jobs`` jobs.
    """

    kind: Literal["network"] = "network"
    name: str = Field("net0", description="engine instance name (identifier)")
    packet_words: int = Field(32, description="payload port words per packet (power of two)")
    window: int = Field(16, description="switch slots a job keeps in flight (power of two)")
    jobs: int = Field(4, description="job ids whose slot versions the endpoint keeps (power of two)")
    read_ahead: int = Field(4, ge=1, le=16,
                            description="packets whose payload reads are in flight ahead of the link")

    @field_validator("packet_words")
    @classmethod
    def _packet(cls, v: int) -> int:
        return _power_of_two(v, "packet_words", 1, 256)

    @field_validator("window")
    @classmethod
    def _window(cls, v: int) -> int:
        return _power_of_two(v, "window", 1, 256)

    @field_validator("jobs")
    @classmethod
    def _jobs(cls, v: int) -> int:
        return _power_of_two(v, "jobs", 1, 16)

    @property
    def stream_ports(self) -> int:
        return 0


class TileCacheParams(_Strict):
    """A set-associative tile cache in front of the memory engine's backing port.

    Lines (a weight tile, a KV page) live in an HBM store on port ``w<store_port>``, tags on
    chip. Engines reading or writing the backing port go through it; misses fill in the
    background (up to ``mshrs`` at once) while hits keep flowing.
    """

    line_bytes: int = Field(4096, description="bytes per line, a power of two in [1024, 65536]")
    ways: int = Field(4, description="lines per set (power of two, 1-16)")
    sets: int = Field(64, description="sets (power of two, 1-4096)")
    replacement: Literal["lru", "random", "lfu"] = Field(
        "lru", description="victim choice: least recently used, random (LFSR), or frequency-aware "
                           "(least frequently used, halved when a count saturates; LRU breaks ties)")
    write_policy: Literal["write_back", "write_through"] = Field(
        "write_back", description="write_back: a write hit stays in HBM (dirty) until evicted or flushed; "
                                  "write_through: every write also goes to the backing memory")
    mshrs: int = Field(4, ge=1, le=16, description="line fills in flight at once (misses in flight)")
    store_port: int | None = Field(None, ge=1, le=31,
                                   description="stream port index of the HBM store, kept by the cache "
                                               "(default: the one after every port the engines stream from)")

    @field_validator("line_bytes")
    @classmethod
    def _line(cls, v: int) -> int:
        return _power_of_two(v, "line_bytes", 1024, 65536)

    @field_validator("ways")
    @classmethod
    def _ways(cls, v: int) -> int:
        return _power_of_two(v, "ways", 1, 16)

    @field_validator("sets")
    @classmethod
    def _sets(cls, v: int) -> int:
        return _power_of_two(v, "sets", 1, 4096)

    @property
    def store_bytes(self) -> int:
        return self.line_bytes * self.ways * self.sets


class OmapParams(_Strict):
    """The oblivious map: encrypted bins in host memory, its trusted state in HBM."""

    bin_slots: int = Field(4, ge=2, le=16, description="entries per host bin (Z)")
    value_bytes: int = Field(8, description="largest value in bytes (a multiple of 8, at most 224)")
    dir_ways: int = Field(8, description="ways of each directory bucket in HBM (power of two, 4-16)")
    max_records: int = Field(1 << 20, description="records one descriptor may carry (power of two)")

    @field_validator("value_bytes")
    @classmethod
    def _value(cls, v: int) -> int:
        if v < 8 or v > 224 or v % 8:
            raise ValueError(f"value_bytes must be a multiple of 8 in [8, 224], got {v}")
        return v

    @field_validator("dir_ways")
    @classmethod
    def _dir_ways(cls, v: int) -> int:
        return _power_of_two(v, "dir_ways", 4, 16)

    @field_validator("max_records")
    @classmethod
    def _max_records(cls, v: int) -> int:
        return _power_of_two(v, "max_records", 1, 1 << 24)


class MemoryEngine(_EngineBase):
    """HBM-backed caches: a tile cache in front of host/DDR memory and an oblivious map.

    Port ``w<port>`` reaches the backing memory (host memory over PCIe, or the board's DDR):
    with a ``cache`` every other engine's reads and writes of that port go through the cache,
    whose lines live in HBM on the last stream port; the ``omap`` keeps its encrypted bins
    there and its trusted state (position map, stash, bin versions) in HBM on the data port.
    """

    kind: Literal["memory"] = "memory"
    name: str = Field("mem0", description="engine instance name (identifier)")
    port: int = Field(0, ge=0, le=30, description="stream port w<port> that reaches the backing memory")
    backing: Literal["host", "ddr"] = Field("host", description="the memory port w<port> is linked to")
    cache: TileCacheParams | None = Field(None, description="the tile cache (omit for none)")
    omap: OmapParams | None = Field(None, description="the oblivious map (omit for none)")

    @model_validator(mode="after")
    def _units(self) -> "MemoryEngine":
        if self.cache is None and self.omap is None:
            raise ValueError("a memory engine needs a cache, an omap or both")
        if self.cache is not None and self.cache.store_port is not None and self.cache.store_port <= self.port:
            raise ValueError(f"cache.store_port {self.cache.store_port} must be above port {self.port}")
        return self

    @property
    def stream_ports(self) -> int:
        return self.port + 1            # the store port comes from the config (exclusive_ports)

    def exclusive_ports(self, config) -> tuple[int, ...]:
        """The cache's HBM store port: given, or the one after every port the engines stream from."""
        if self.cache is None:
            return ()
        if self.cache.store_port is not None:
            return (self.cache.store_port,)
        return (max(e.stream_ports for e in config.engines),)


Engine = Annotated[Union[MatmulEngine, AttentionEngine, CopyEngine, VectorEngine, NetworkEngine, MemoryEngine],
                   Field(discriminator="kind")]
ENGINE_KINDS = ("matmul", "attention", "copy", "vector", "network", "memory")


class AcceleratorConfig(_Strict):
    """One accelerator: a board, a clock, its engines and its memory port map."""

    version: Literal[1] = Field(description="config format version; this release reads 1")
    name: str = Field(description="kernel name: the Verilog top module and XRT kernel (identifier)")
    board: str = Field(description="board name, one of `hbmforge boards`")
    clock_mhz: float | None = Field(None, gt=0, le=1000, description="kernel clock; default: the board's")
    axi: AxiParams = Field(default_factory=AxiParams)
    engines: list[Engine] = Field(min_length=1, max_length=len(ENGINE_KINDS),
                                  description="engines in the kernel: one matmul, optionally one "
                                              "attention and one copy engine")
    ports: dict[str, int] | None = Field(
        None, description="memory channel of each AXI master port (data, w0, w1, ...); default: the board's "
                          "port map (data 0, w<i> i + 1; with as many stream ports as channels, w<i> i "
                          "and data shares channel 0)")
    data_memory: Literal["main", "ddr"] = Field(
        "main", description="where the data port's buffers live (the descriptor program, activations, "
                            "outputs, per-layer tables): `main`, the board's memory (HBM: channel 0, beside "
                            "w0), or `ddr`, the DDR4 beside the HBM (U280): the data port then leaves "
                            "pseudo-channel 0 to its weight port")
    max_utilization: float = Field(0.8, gt=0, le=1.0,
                                   description="fraction of each board resource the kernel may use "
                                               "(the rest is left to the platform shell and routing)")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v):
        if isinstance(v, bool):
            raise ValueError(f"version must be the integer 1, got {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"name must match {_IDENT.pattern} (a Verilog identifier), got {v!r}")
        return v

    @field_validator("board")
    @classmethod
    def _board(cls, v: str) -> str:
        names = board_names()
        if v not in names:
            raise ValueError(f"board must be one of {', '.join(names)}, got {v!r}")
        return v

    # -- derived views -----------------------------------------------------------------
    @property
    def board_info(self) -> Board:
        return load_board(self.board)

    @property
    def clock(self) -> float:
        return self.clock_mhz if self.clock_mhz is not None else self.board_info.default_clock_mhz

    @property
    def data_width(self) -> int:
        return self.axi.data_width or self.board_info.memory.axi_data_width

    @property
    def matmul(self) -> MatmulEngine:
        return next(e for e in self.engines if e.kind == "matmul")

    @property
    def attention(self) -> AttentionEngine | None:
        return self.engine("attention")

    def engine(self, kind: str):
        """The engine of ``kind`` in this config, or None."""
        return next((e for e in self.engines if e.kind == kind), None)

    @property
    def stream_ports(self) -> int:
        """``w<i>`` ports: as many as the engine that streams from most of them uses (and the
        ports an engine keeps to itself)."""
        excl = self.exclusive_ports
        return max(max(e.stream_ports for e in self.engines), excl[-1] + 1 if excl else 0)

    @property
    def exclusive_ports(self) -> tuple[int, ...]:
        """Stream ports one engine keeps to itself (a tile cache's HBM store), ascending."""
        return tuple(sorted({i for e in self.engines for i in e.exclusive_ports(self)}))

    @property
    def shared_stream_ports(self) -> int:
        """Stream ports every engine may use: those below the first one an engine keeps to itself."""
        excl = self.exclusive_ports
        return excl[0] if excl else self.stream_ports

    def port_names(self) -> list[str]:
        """AXI master ports, in order: ``data`` then ``w0``, ``w1``, ... (weights and KV pages)."""
        return ["data"] + [f"w{i}" for i in range(self.stream_ports)]

    @field_validator("engines")
    @classmethod
    def _engine_kinds(cls, v: list) -> list:
        kinds = [e.kind for e in v]
        if kinds.count("matmul") != 1:
            raise ValueError(f"engines must hold exactly one matmul engine, got kinds {kinds}")
        doubled = sorted({k for k in kinds if kinds.count(k) > 1})
        if doubled:
            raise ValueError(f"engines may hold at most one engine of each kind; more than one "
                             f"{', '.join(doubled)} in {kinds}")
        names = [e.name for e in v]
        if len(set(names)) != len(names):
            raise ValueError(f"engine names must be unique, got {names}")
        return v

    def port_channels(self) -> dict[str, int]:
        if self.ports is None:
            return self.board_info.port_map(self.stream_ports)
        return dict(self.ports)

    @model_validator(mode="after")
    def _data_memory(self) -> "AcceleratorConfig":
        """``data_memory: ddr`` needs a DDR beside the board's main memory."""
        b = self.board_info
        if self.data_memory == "ddr" and (b.memory.kind == "ddr" or b.other_memory("ddr") is None):
            raise ValueError(f"data_memory: {b.name} has no DDR beside its {b.memory.kind} memory; allowed: main")
        return self

    @model_validator(mode="after")
    def _vector_table_port(self) -> "AcceleratorConfig":
        """A vector engine's ``table_port`` is a stream port another engine already streams from."""
        att = self.attention
        port = att.kv_ports if att is not None else 0
        for i, e in enumerate(self.engines):
            if e.kind == "vector" and e.table_port and port >= self.shared_stream_ports:
                raise ValueError(f"engines.{i}.table_port: the tables need the stream port w{port} (after the "
                                 f"attention engine's KV ports), but the design streams from "
                                 f"{self.shared_stream_ports} shared port(s); allowed: false, or more weight ports")
        return self

    @model_validator(mode="after")
    def _weight_prefetch(self) -> "AcceleratorConfig":
        """``weight_prefetch``: a power of two that holds the reader's bursts in flight, and no
        memory engine (whose cache may stand between the weight ports and memory)."""
        i = next(j for j, e in enumerate(self.engines) if e.kind == "matmul")
        depth = self.engines[i].weight_prefetch
        if depth:
            credit = self.axi.max_burst_beats * self.axi.max_outstanding
            lo = max(512, credit)
            if depth & (depth - 1) or not lo <= depth <= 8192:
                raise ValueError(f"engines.{i}.weight_prefetch: must be 0 (off) or a power of two in [{lo}, 8192] "
                                 f"(at least axi.max_burst_beats x max_outstanding = {credit}), got {depth}")
            if any(e.kind == "memory" for e in self.engines):
                raise ValueError(f"engines.{i}.weight_prefetch: a design with a memory engine reads its weights "
                                 "through that engine's ports; allowed: 0")
        return self

    @model_validator(mode="after")
    def _attention_ports(self) -> "AcceleratorConfig":
        """An attention engine's kv_ports (2 x rows with head_parallel) fit the board's memory channels."""
        have = self.board_info.memory.channels
        for i, e in enumerate(self.engines):
            if e.kind == "attention" and e.kv_ports > have:
                why = (f" (2 x rows {e.rows} with head_parallel; use rows <= {have // 2})" if e.head_parallel
                       else "")
                raise ValueError(f"engines.{i}.kv_ports: {e.kv_ports} exceeds the {have} memory channels of "
                                 f"{self.board_info.name}{why}")
        return self

    @model_validator(mode="after")
    def _exclusive_ports(self) -> "AcceleratorConfig":
        """A port an engine keeps to itself (a tile cache's store) is above every port the other
        engines stream from; a memory engine's store fits one bank of the board's memory."""
        shared = self.shared_stream_ports
        if list(self.exclusive_ports) != list(range(shared, self.stream_ports)):
            raise ValueError(f"the stream ports an engine keeps to itself ({self.exclusive_ports}) must be the last "
                             f"ones, w{shared}..w{self.stream_ports - 1}")
        for i, e in enumerate(self.engines):
            if e.stream_ports > shared:
                raise ValueError(f"engines.{i}: the {e.kind} engine streams from {e.stream_ports} ports, but w{shared} "
                                 f"is kept by another engine (a tile cache's store); move the store_port up")
            if e.kind == "memory":
                board = self.board_info
                if not board.has_memory(e.backing):
                    raise ValueError(f"engines.{i}.backing: {board.name} has no {e.backing} memory")
                if e.cache is not None:
                    bank = board.memory.channel_size_mib << 20
                    if e.cache.store_bytes > bank:
                        raise ValueError(
                            f"engines.{i}.cache: ways x sets x line_bytes = {e.cache.ways} x {e.cache.sets} x "
                            f"{e.cache.line_bytes} = {e.cache.store_bytes} bytes does not fit the "
                            f"{bank}-byte {board.memory.kind} bank of its store port")
        return self

    @model_validator(mode="after")
    def _ports(self) -> "AcceleratorConfig":
        names = self.port_names()
        board = self.board_info
        if self.ports is not None:
            missing = [n for n in names if n not in self.ports]
            extra = [n for n in self.ports if n not in names]
            if missing or extra:
                raise ValueError(
                    f"ports must map exactly {names} to memory channels; "
                    f"missing {missing}, unexpected {extra}")
        if self.stream_ports > board.memory.channels:
            raise ValueError(f"port budget exceeded on {board.name}: the engines stream from {self.stream_ports} "
                             f"memory ports, the board has {board.memory.channels} channels "
                             f"(over by {self.stream_ports - board.memory.channels})")
        channels = self.port_channels()
        for port, ch in channels.items():
            if not 0 <= ch < board.memory.channels:
                raise ValueError(f"ports.{port}: channel must be in [0, {board.memory.channels - 1}] "
                                 f"on {board.name}, got {ch}")
        if board.memory.kind == "hbm":
            # each stream port has a pseudo-channel of its own; the data port (descriptors,
            # activations, outputs) may share one through the HBM switch (they split its bandwidth)
            used: dict[int, str] = {}
            for port, ch in channels.items():
                if port == "data":
                    continue
                if ch in used:
                    raise ValueError(f"ports.{port}: HBM channel {ch} is already bound to port "
                                     f"{used[ch]!r}; each stream port needs its own pseudo-channel")
                used[ch] = port
        mm = self.matmul
        word = self.data_width // 8
        if mm.tile_n is not None and (mm.tile_n * 4) % word:
            raise ValueError(f"engines.0.tile_n: {mm.tile_n} columns of int32 bias must fill whole {word}-byte "
                             f"words: use a multiple of {word // 4}")
        from .engines.matmul import MatmulGeometry          # widths: the contract derives them
        acc_bits = MatmulGeometry(mm, word).widths.acc_bits
        if acc_bits > 62:
            raise ValueError(f"engines.0.split_k: accumulators of {acc_bits} bits (split_k {mm.split_k} x max_k "
                             f"{mm.max_k}) exceed the 62 the output stage computes; lower split_k or max_k")
        for fmt in mm.weight_bits:
            if fmt == "ternary" and mm.ternary_packing == "5trit":
                continue                    # a trit gearbox adapts any lane count
            bits = 2 if fmt == "ternary" else fmt
            chunk = mm.lanes * bits
            port_bits = mm.weight_ports * self.data_width
            if max(chunk, port_bits) % min(chunk, port_bits):
                raise ValueError(
                    f"engines.0: lanes x weight bits ({mm.lanes} x {bits}, format {fmt!r}) and weight_ports x data "
                    f"width ({mm.weight_ports} x {self.data_width}) must divide one another")
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        # drop the union tag pydantic inserts after a list index (engines.0.matmul.lanes)
        loc_ = e["loc"]
        parts = [str(p) for i, p in enumerate(loc_)
                 if not (loc_[0] == "engines" and i == 2 and p in ENGINE_KINDS)]
        loc = ".".join(parts) or "(top level)"
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif e["type"] == "missing":
            msg = "field required"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, *, source: str = "<dict>") -> AcceleratorConfig:
    """Validate a config mapping against the schema; raise :class:`ConfigError` naming each bad field.

    The board budget is checked by :func:`hbmforge.design.load_design`, which builds the layout.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, "
                          f"got {type(data).__name__}")
    try:
        cfg = AcceleratorConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    return cfg


#: configs are small; a larger file is a mistake (and YAML of that size is slow to parse)
MAX_CONFIG_BYTES = 1 << 20


def read_yaml(path: str | Path, what: str = "config"):
    """The YAML document of a file (UTF-8, at most :data:`MAX_CONFIG_BYTES`); :class:`ConfigError`
    naming ``what`` and the path when it cannot be read or parsed."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"cannot read {what} {path}: it is a directory")
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is {len(raw)} bytes; a {what} is at most {MAX_CONFIG_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    except (ValueError, RecursionError) as err:     # e.g. an integer too long to convert
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None


def load_config(path: str | Path) -> AcceleratorConfig:
    """Read and validate a YAML config file (schema only; see :func:`hbmforge.design.load_design`)."""
    return parse_config(read_yaml(path), source=str(path))


def starter_config(board: str, name: str = "starter") -> dict:
    """A small config that simulates in seconds; what ``hbmforge init`` writes."""
    b = load_board(board)
    width = b.memory.axi_data_width
    lanes = max(16, width // 4)           # int4 weights fill one port word per cycle
    return {
        "version": CONFIG_VERSION,
        "name": name,
        "board": board,
        "clock_mhz": b.default_clock_mhz,
        "axi": {"max_burst_beats": 32, "max_outstanding": 8, "id_width": 4},
        "engines": [{
            "kind": "matmul",
            "name": "mm0",
            "rows": 4,
            "lanes": lanes,
            "weight_ports": 1,
            "weight_bits": [4, 8],
            "group_size": 128,
            "scale_bits": 16,
            "max_k": 4096,
        }],
    }


def config_hash(cfg: AcceleratorConfig) -> str:
    """SHA-256 of the canonical JSON of the config (defaults filled in); the design's identity."""
    canon = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def json_schema() -> dict:
    schema = AcceleratorConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hbmforge accelerator config"
    return schema


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
