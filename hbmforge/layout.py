"""Everything derived from a config that hardware and host must agree on.

The RTL generators, the manifest, the host driver, the co-simulation harness
and the tests all read widths, register offsets, the descriptor formats and the
memory layouts from a :class:`DesignLayout`; nothing is hard-coded twice.
The layout is generic over the engine families of :mod:`hbmforge.engines`:
each family states its opcodes, descriptor slots, checks and DMA channels once.

The host reads a generated design the same way, one way only:
:meth:`DesignLayout.from_manifest` rebuilds the layout from the config embedded in
``manifest.json`` and refuses the manifest if any number it states differs from
what that config derives. See docs/architecture.md for the prose version.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from . import __version__
from .config import AcceleratorConfig, ConfigError, config_hash, parse_config
from .encodings import ErrorCode, Opcode, describe_error
from .engines import FAMILIES, Channels, EngineFamily, StreamPort, first_error
from .engines.matmul import MatmulGeometry

__all__ = [
    "KERNEL_ID",
    "LAYOUT_VERSION",
    "CTRL_ADDR_WIDTH",
    "MANIFEST_EXTRAS",
    "ManifestError",
    "Register",
    "PortInfo",
    "StreamInfo",
    "DesignLayout",
    "FAMILY_REGISTERS_BASE",
]

KERNEL_ID = 0x48424D46          # "HBMF"
LAYOUT_VERSION = 0x0002_0000    # major.minor of this register/descriptor contract
CTRL_ADDR_WIDTH = 12            # s_axi_control address bits (4 KiB window)

#: offset of the first register a family adds (after the shell's per-port counters)
FAMILY_REGISTERS_BASE = 0x300
#: AXI ports the classic map holds (w<i> pointers end below ID at 0x100, port counters below
#: the family registers at 0x300); a design with more (up to 32 stream ports) places its w<i>
#: pointers at WIDE_ARGS_BASE + 8i and its port counters at WIDE_COUNTERS_BASE + 16p instead
CLASSIC_MAX_PORTS = 28
WIDE_ARGS_BASE = 0x800
WIDE_COUNTERS_BASE = 0x900

#: top-level manifest keys that the emitter adds beside ``DesignLayout.to_json()``
MANIFEST_EXTRAS = ("top", "verilog", "generator", "generator_version")


class ManifestError(ValueError):
    """A manifest that is malformed or disagrees with the config it embeds; the message names the field."""


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    width: int          # bits: 32 or 64 (64-bit registers span two words, low word first)
    access: str         # "rw", "ro", "rw1s" (ap_start), "cor" (clear on read), "tow" (toggle on write)
    description: str

    @property
    def writable(self) -> bool:
        return self.access != "ro"

    def to_json(self) -> dict:
        return {"name": self.name, "offset": self.offset, "width": self.width,
                "access": self.access, "description": self.description}


@dataclass(frozen=True)
class PortInfo:
    name: str           # data, w0, w1, ...
    index: int          # position in manifest order (descriptor port index, co-sim port number)
    role: str           # "data" (program, activations, outputs) or "stream" (weights, KV pages)
    channel: int        # memory channel (HBM pseudo-channel or PS HP port)
    data_width: int
    id_width: int
    addr_width: int
    reads: bool
    writes: bool
    memory: str | None = None   # "ddr": linked to the DDR beside the main memory (config data_memory)

    @property
    def verilog_prefix(self) -> str:
        return f"m_axi_{self.name}"

    @property
    def word_bytes(self) -> int:
        return self.data_width // 8

    def to_json(self) -> dict:
        out = {"name": self.name, "prefix": self.verilog_prefix, "role": self.role,
               "channel": self.channel, "data_width": self.data_width, "id_width": self.id_width,
               "addr_width": self.addr_width, "reads": self.reads, "writes": self.writes}
        if self.memory is not None:
            out["memory"] = self.memory
        return out


@dataclass(frozen=True)
class StreamInfo:
    """A top-level AXI4-Stream port of the kernel and the engine that owns it."""

    port: StreamPort
    engine: str         # the owning engine's config name
    kind: str           # its family

    @property
    def name(self) -> str:
        return self.port.name

    @property
    def prefix(self) -> str:
        return self.port.prefix

    def to_json(self) -> dict:
        return {"name": self.port.name, "prefix": self.port.prefix, "direction": self.port.direction,
                "data_width": self.port.data_width, "engine": self.engine, "kind": self.kind}


@dataclass(frozen=True)
class DesignLayout:
    config: AcceleratorConfig
    ports: tuple[PortInfo, ...] = field(init=False)

    def __post_init__(self):
        if not isinstance(self.config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(self.config).__name__}")
        cfg = self.config
        readers = max(len(self.channels(f.kind).data_readers) for f in self.families)
        if 1 + readers > 1 << cfg.axi.id_width:
            raise ConfigError(f"axi.id_width {cfg.axi.id_width} is too narrow: the data port needs "
                              f"{1 + readers} read IDs (descriptor fetch + {readers} engine readers)")
        chans = cfg.port_channels()
        ports = [PortInfo("data", 0, "data", chans["data"], cfg.data_width, cfg.axi.id_width, 64,
                          True, any(self.channels(f.kind).data_writer for f in self.families),
                          "ddr" if cfg.data_memory == "ddr" else None)]
        for i in range(cfg.stream_ports):
            reads = any(self.channels(f.kind).stream_readers > i for f in self.families)
            writes = any(self.channels(f.kind).stream_writers > i for f in self.families)
            ports.append(PortInfo(f"w{i}", i + 1, "stream", chans[f"w{i}"], cfg.data_width,
                                  cfg.axi.id_width, 64, reads, writes))
        object.__setattr__(self, "ports", tuple(ports))
        prefixes: dict[str, str] = {}
        for s in self.streams:
            if s.prefix in prefixes:
                raise ConfigError(f"engines {prefixes[s.prefix]!r} and {s.engine!r} both declare the stream "
                                  f"port {s.prefix}; a kernel has one port of each name")
            prefixes[s.prefix] = s.engine

    # -- identity ----------------------------------------------------------------------
    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.config)

    @cached_property
    def design_hash(self) -> str:
        """Hash of config + hbmforge version + layout version: what the kernel's HASH register holds."""
        return hashlib.sha256(f"{self.config_hash}:hbmforge-{__version__}:{LAYOUT_VERSION:#x}"
                              .encode()).hexdigest()

    @property
    def hash64(self) -> int:
        return int(self.design_hash[:16], 16)

    @property
    def kernel(self) -> str:
        return self.config.name

    @property
    def kernel_id(self) -> int:
        return KERNEL_ID

    @property
    def layout_version(self) -> int:
        return LAYOUT_VERSION

    # -- engines -----------------------------------------------------------------------
    @cached_property
    def families(self) -> tuple[EngineFamily, ...]:
        """The families of the config's engines, in config order (the shell's engine numbering)."""
        return tuple(FAMILIES[e.kind] for e in self.config.engines)

    def has(self, kind: str) -> bool:
        return self.config.engine(kind) is not None

    def channels(self, kind: str) -> Channels:
        return FAMILIES[kind].channels(self)

    @cached_property
    def streams(self) -> tuple[StreamInfo, ...]:
        """Top-level AXI4-Stream ports the engines declare (``Channels.streams``), in engine order."""
        return tuple(StreamInfo(p, e.name, e.kind) for e in self.config.engines
                     for p in FAMILIES[e.kind].channels(self).streams)

    def stream(self, prefix: str) -> StreamInfo:
        for s in self.streams:
            if s.prefix == prefix or s.name == prefix:
                return s
        raise ValueError(f"no stream port {prefix!r} on {self.kernel}; streams: "
                         f"{', '.join(s.prefix for s in self.streams) or 'none'}")

    @property
    def mm(self):
        """The config's matmul engine (every design has one)."""
        return self.config.matmul

    @cached_property
    def matmul(self) -> MatmulGeometry:
        """Matmul byte counts, alignment and widths."""
        return MatmulGeometry(self.config.matmul, self.word_bytes)

    @property
    def attention(self):
        """The attention engine's config, or None."""
        return self.config.attention

    @property
    def macs_per_cycle(self) -> int:
        """Peak MACs per cycle of the design: engines run one at a time, so the largest."""
        return max(f.macs_per_cycle(self) for f in self.families)

    # -- words and alignment -----------------------------------------------------------
    @property
    def word_bytes(self) -> int:
        return self.config.data_width // 8

    @property
    def addr_align(self) -> int:
        """Every address in a descriptor (and the program's) must be a multiple of this."""
        return self.word_bytes

    # -- ports -------------------------------------------------------------------------
    @property
    def port_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.ports)

    def port(self, name: str) -> PortInfo:
        for p in self.ports:
            if p.name == name:
                return p
        raise ValueError(f"no port {name!r} on {self.kernel}; ports: {', '.join(self.port_names)}")

    # -- control registers -------------------------------------------------------------
    @cached_property
    def registers(self) -> tuple[Register, ...]:
        regs = [
            Register("CTRL", 0x00, 32, "rw1s", "ap_ctrl_hs: bit0 ap_start, bit1 ap_done (COR), bit2 ap_idle, "
                                                "bit3 ap_ready (COR), bit7 auto_restart"),
            Register("GIE", 0x04, 32, "rw", "global interrupt enable (bit0)"),
            Register("IER", 0x08, 32, "rw", "interrupt enable: bit0 ap_done, bit1 ap_ready"),
            Register("ISR", 0x0C, 32, "tow", "interrupt status: bit0 ap_done, bit1 ap_ready (toggle on write)"),
            Register("program", 0x10, 64, "rw", "address of the descriptor program (data port)"),
            Register("count", 0x18, 32, "rw", "descriptors to run (an END opcode stops earlier)"),
        ]
        wide = len(self.ports) > CLASSIC_MAX_PORTS
        args_base, counters_base = (WIDE_ARGS_BASE, WIDE_COUNTERS_BASE) if wide else (0x20, 0x140)
        for i in range(self.config.stream_ports):
            regs.append(Register(f"w{i}", args_base + 8 * i, 64, "rw",
                                 f"base of the buffer bound to port w{i} (binds the port to its bank; "
                                 "descriptors carry the addresses used)"))
        regs += [
            Register("ID", 0x100, 32, "ro", f"kernel identifier {KERNEL_ID:#010x} ('HBMF')"),
            Register("VERSION", 0x104, 32, "ro", "register/descriptor layout version (major << 16 | minor)"),
            Register("HASH", 0x108, 64, "ro", "first 64 bits of the design hash (manifest 'design_hash')"),
            Register("STATUS", 0x110, 32, "ro", "bit0 error; bits 15:8 error code; bits 31:16 failing descriptor"),
            Register("DESC_DONE", 0x114, 32, "ro", "descriptors completed by the last run"),
            Register("CYCLES", 0x120, 64, "ro", "cycles from ap_start to ap_done of the last run"),
            Register("STALL_CYCLES", 0x128, 64, "ro", "cycles an engine was running but waiting for data or credit"),
            Register("MAC_OPS", 0x130, 64, "ro", "multiply-accumulates done on valid rows (K padding included)"),
        ]
        for i, p in enumerate(self.ports):
            base = counters_base + 0x10 * i
            regs.append(Register(f"{p.name.upper()}_BYTES_READ", base, 64, "ro",
                                 f"bytes read on m_axi_{p.name} in the last run"))
            regs.append(Register(f"{p.name.upper()}_BYTES_WRITTEN", base + 8, 64, "ro",
                                 f"bytes written on m_axi_{p.name} in the last run"))
        offset = FAMILY_REGISTERS_BASE
        for fam in self.families:
            for r in fam.registers(self):
                step = r.width // 8
                offset = -(-offset // step) * step
                regs.append(Register(r.name, offset, r.width, "ro", r.description))
                offset += step
        if offset > 1 << CTRL_ADDR_WIDTH:
            raise ConfigError(f"the engines' registers end at {offset:#x}, past the "
                              f"{1 << CTRL_ADDR_WIDTH}-byte control window")
        names = [r.name for r in regs]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ConfigError(f"register name(s) {doubled} declared twice")
        return tuple(regs)

    @cached_property
    def _registers_by_name(self) -> dict[str, Register]:
        return {r.name: r for r in self.registers}

    def reg(self, name: str) -> Register:
        try:
            return self._registers_by_name[name]
        except (KeyError, TypeError):
            raise ValueError(f"no register {name!r} on {self.kernel}; registers: "
                             f"{', '.join(self._registers_by_name)}") from None

    # -- descriptors -------------------------------------------------------------------
    @cached_property
    def opcodes(self) -> dict[str, Opcode]:
        """Opcode name -> value for every opcode this design runs (END first)."""
        ops = {"END": Opcode.END}
        for fam in self.families:
            ops.update({op.name: op for op in fam.opcodes})
        return ops

    def family_of(self, opcode: int) -> EngineFamily | None:
        """The family that runs ``opcode`` in this design, or None (END or an unknown opcode)."""
        for fam in self.families:
            if opcode in fam.opcodes:
                return fam
        return None

    def fields_for(self, opcode: int) -> tuple[str, ...]:
        """u64 slot names of an ``opcode`` descriptor, ``op`` first."""
        fam = self.family_of(opcode)
        if fam is None:
            if opcode == Opcode.END:
                return ("op",)
            raise ValueError(f"opcode {opcode!r} is not run by {self.kernel}; opcodes: {dict(self.opcodes)}")
        return ("op",) + tuple(fam.fields(self, Opcode(opcode)))

    @cached_property
    def descriptor_bytes(self) -> int:
        slots = max(len(self.fields_for(op)) for op in self.opcodes.values())
        return -(-8 * slots // self.word_bytes) * self.word_bytes

    def field_offset(self, name: str, opcode: int) -> int:
        fields = self.fields_for(opcode)
        if name not in fields:
            raise ValueError(f"{Opcode(opcode).name} descriptors have no field {name!r}; fields: {fields}")
        return 8 * fields.index(name)

    def checks(self, opcode: int):
        """The descriptor rules of ``opcode`` (see :class:`hbmforge.engines.Check`)."""
        fam = self.family_of(opcode)
        if fam is None:
            raise ValueError(f"opcode {opcode!r} is not run by {self.kernel}")
        return fam.checks(self, Opcode(opcode))

    def validate_descriptor(self, fields: Mapping[str, int]) -> tuple[ErrorCode, str]:
        """``(code, why)`` for a non-END descriptor, the command processor's verdict."""
        op = fields["op"]
        if self.family_of(op) is None:
            return ErrorCode.BAD_OPCODE, f"op {op}, this design runs {dict((k, int(v)) for k, v in self.opcodes.items())}"
        return first_error(self.checks(op), fields)

    def decode_descriptor(self, raw: bytes) -> dict[str, int]:
        """Slot values of one descriptor's bytes (``op`` decides the format; unknown: ``op`` only)."""
        op = int.from_bytes(raw[:8], "little")
        names = self.fields_for(op) if op == Opcode.END or self.family_of(op) else ("op",)
        return {n: int.from_bytes(raw[8 * i:8 * i + 8], "little") for i, n in enumerate(names)}

    def encode_descriptor(self, fields: Mapping[str, int]) -> bytes:
        """One descriptor's bytes; slots not given are zero."""
        names = self.fields_for(fields["op"])
        unknown = [n for n in fields if n not in names]
        if unknown:
            raise ValueError(f"{Opcode(fields['op']).name} descriptors have no field(s) {unknown}; fields: {names}")
        out = bytearray(self.descriptor_bytes)
        for name, value in fields.items():
            off = 8 * names.index(name)
            out[off:off + 8] = int(value).to_bytes(8, "little")
        return bytes(out)

    @cached_property
    def error_names(self) -> dict[int, str]:
        """STATUS error code -> meaning, for every code this design can report."""
        codes = {ErrorCode.NONE, ErrorCode.BAD_OPCODE, ErrorCode.AXI_RESP, ErrorCode.MISALIGNED}
        for fam in self.families:
            codes.update(fam.errors)
        return {int(c): describe_error(c) for c in sorted(codes)}

    def error_text(self, code: int) -> str:
        return self.error_names.get(code, f"unknown error code {code}")

    # -- manifest ----------------------------------------------------------------------
    def to_json(self) -> dict:
        cfg = self.config
        return {
            "kernel": cfg.name,
            "kernel_id": KERNEL_ID,
            "layout_version": LAYOUT_VERSION,
            "config_hash": self.config_hash,
            "design_hash": self.design_hash,
            "hash64": f"{self.hash64:#018x}",
            "board": cfg.board,
            "part": cfg.board_info.part,
            "clock_mhz": cfg.clock,
            "control": {"prefix": "s_axi_control", "addr_width": CTRL_ADDR_WIDTH, "data_width": 32},
            "registers": [r.to_json() for r in self.registers],
            "ports": [p.to_json() for p in self.ports],
            "streams": [s.to_json() for s in self.streams],
            "axi": {"max_burst_beats": cfg.axi.max_burst_beats, "max_outstanding": cfg.axi.max_outstanding},
            "config": cfg.model_dump(mode="json"),
            "descriptor": {
                "bytes": self.descriptor_bytes,
                "opcodes": {name: int(op) for name, op in self.opcodes.items()},
                "formats": {name: [{"name": f, "offset": 8 * i, "bytes": 8}
                                   for i, f in enumerate(self.fields_for(op))]
                            for name, op in self.opcodes.items()},
                "error_codes": {str(k): v for k, v in self.error_names.items()},
            },
            "engines": [self._engine_entry(e) for e in cfg.engines],
        }

    def _engine_entry(self, engine) -> dict:
        fam = FAMILIES[engine.kind]
        ch = fam.channels(self)
        return {"kind": engine.kind, "name": engine.name,
                "opcodes": [op.name for op in fam.opcodes],
                "channels": {"data_readers": list(ch.data_readers), "data_writer": ch.data_writer,
                             "stream_readers": ch.stream_readers, "stream_writers": ch.stream_writers,
                             "streams": [p.prefix for p in ch.streams]},
                "macs_per_cycle": fam.macs_per_cycle(self),
                **fam.manifest(self)}

    def manifest_json(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_manifest(cls, data: Any, *, source: str = "manifest") -> "DesignLayout":
        """The layout a manifest describes, after checking every number it states.

        Checks ``layout_version``, rebuilds the layout from the embedded ``config``, and
        compares everything :meth:`to_json` derives (registers, ports, descriptor formats,
        error codes, engine parameters, both hash fields) with the manifest; any difference,
        a missing field or an unknown top-level field is a :class:`ManifestError` naming it.
        """
        if not isinstance(data, Mapping):
            raise ManifestError(f"{source}: a manifest is a JSON object, got {type(data).__name__}")
        version = data.get("layout_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ManifestError(f"{source}: layout_version is missing or not an integer ({version!r})")
        if version != LAYOUT_VERSION:
            raise ManifestError(
                f"{source}: layout_version {version >> 16}.{version & 0xFFFF} is not this hbmforge's "
                f"{LAYOUT_VERSION >> 16}.{LAYOUT_VERSION & 0xFFFF}; regenerate the design with this hbmforge")
        if "config" not in data:
            raise ManifestError(f"{source}: field 'config' is missing (the design's accelerator config)")
        try:
            cfg = parse_config(data["config"], source=f"{source} field 'config'")
            layout = cls(cfg)
        except ConfigError as err:
            raise ManifestError(str(err)) from None
        expected = layout.to_json()
        unknown = sorted(k for k in data if k not in expected and k not in MANIFEST_EXTRAS)
        if unknown:
            raise ManifestError(f"{source}: unknown field(s) {unknown}")
        for key, want in expected.items():
            if key not in data:
                raise ManifestError(f"{source}: field {key!r} is missing")
            where = _first_difference(data[key], want, key)
            if where is not None:
                path, got, derived = where
                raise ManifestError(f"{source}: {path} is {got!r} but its config derives {derived!r}; "
                                    "the manifest was edited or belongs to another design")
        return layout


def _first_difference(got, want, path: str):
    """``(path, got, want)`` of the first place two JSON values differ, or None."""
    if isinstance(want, dict):
        if not isinstance(got, Mapping):
            return path, got, want
        for k in sorted(set(want) | set(got), key=str):
            if k not in want:
                return f"{path}.{k}", got[k], "(no such field)"
            if k not in got:
                return f"{path}.{k}", "(missing)", want[k]
            diff = _first_difference(got[k], want[k], f"{path}.{k}")
            if diff is not None:
                return diff
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return path, got, want
        for i, (g, w) in enumerate(zip(got, want)):
            diff = _first_difference(g, w, f"{path}[{i}]")
            if diff is not None:
                return diff
        return None
    if type(got) is bool or type(want) is bool:
        return None if got is want else (path, got, want)
    return None if got == want and type(got) in (type(want), int, float) else (path, got, want)
