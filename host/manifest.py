"""The manifest: what the host knows about a generated kernel, read from manifest.json.

``hbmforge.emit`` writes ``DesignLayout.to_json()`` plus ``top``, ``verilog``
and ``generator_version``. The host takes register offsets, ports, the
descriptor format and the engine parameters from here, never from constants
of its own, so a host library drives any design whose manifest it is given.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from .errors import ManifestError

__all__ = ["Manifest", "RegisterSpec", "PortSpec", "DescriptorSpec", "MatmulParams"]


@dataclass(frozen=True)
class RegisterSpec:
    name: str
    offset: int
    width: int          # 32 or 64 (64-bit registers: low word at offset, high word at offset + 4)
    access: str         # rw, ro, rw1s, cor, tow
    description: str = ""

    @property
    def writable(self) -> bool:
        return self.access != "ro"


@dataclass(frozen=True)
class PortSpec:
    name: str           # data, w0, w1, ...
    index: int          # position in manifest order (the co-sim port number)
    role: str           # "data" or "weights"
    channel: int        # memory channel (HBM pseudo-channel)
    data_width: int
    reads: bool
    writes: bool

    @property
    def word_bytes(self) -> int:
        return self.data_width // 8


@dataclass(frozen=True)
class DescriptorSpec:
    bytes: int
    fields: Mapping[str, int]          # name -> byte offset of the u64 field
    opcodes: Mapping[str, int]
    out_modes: Mapping[str, int]
    error_codes: Mapping[int, str]
    attention_fields: Mapping[str, int] = None     # ATTENTION slots (None: no attention engine)

    def fields_for(self, op: int) -> Mapping[str, int]:
        if self.attention_fields and op == self.opcodes.get("ATTENTION"):
            return self.attention_fields
        return self.fields

    def error_text(self, code: int) -> str:
        return self.error_codes.get(code, f"unknown error code {code}")


@dataclass(frozen=True)
class MatmulParams:
    name: str
    rows: int
    lanes: int
    weight_ports: int
    weight_bits: tuple[int, ...]
    group_size: int
    scale_bits: int
    max_k: int
    k_align: int
    addr_align: int
    macs_per_cycle: int
    widths: Mapping[str, int]


def _need(d: Mapping, key: str, where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ManifestError(f"manifest {where} is missing {key!r}")
    return d[key]


class Manifest:
    """A parsed manifest; build with :meth:`load` (file, directory, dict) or :meth:`from_layout`."""

    def __init__(self, data: Mapping[str, Any], *, path: Path | None = None, layout=None):
        if not isinstance(data, Mapping):
            raise ManifestError(f"a manifest must be a JSON object, got {type(data).__name__}")
        self._data = dict(data)
        self._path = path
        self._given_layout = layout
        where = f"{path}" if path else "(dict)"
        self.kernel: str = _need(data, "kernel", where)
        self.kernel_id: int = int(_need(data, "kernel_id", where))
        self.layout_version: int = int(_need(data, "layout_version", where))
        self.design_hash: str = _need(data, "design_hash", where)
        self.config_hash: str | None = data.get("config_hash")
        self.board: str = _need(data, "board", where)
        self.clock_mhz: float = float(_need(data, "clock_mhz", where))
        self.axi: dict = dict(data.get("axi", {}))
        self.top: str = data.get("top", self.kernel)
        self.verilog = data.get("verilog")
        self.generator_version: str | None = data.get("generator_version")

        hash64 = _need(data, "hash64", where)
        self.hash64: int = int(hash64, 16) if isinstance(hash64, str) else int(hash64)

        regs = {}
        for r in _need(data, "registers", where):
            spec = RegisterSpec(r["name"], int(r["offset"]), int(r["width"]), r["access"],
                                r.get("description", ""))
            if spec.width not in (32, 64):
                raise ManifestError(f"register {spec.name}: width must be 32 or 64, got {spec.width}")
            regs[spec.name] = spec
        self.registers: dict[str, RegisterSpec] = regs

        self.ports: tuple[PortSpec, ...] = tuple(
            PortSpec(p["name"], i, p["role"], int(p["channel"]), int(p["data_width"]),
                     bool(p.get("reads", True)), bool(p.get("writes", False)))
            for i, p in enumerate(_need(data, "ports", where)))
        if not self.ports or self.ports[0].name != "data":
            raise ManifestError("manifest ports must start with the 'data' port")

        d = _need(data, "descriptor", where)
        self.descriptor = DescriptorSpec(
            bytes=int(_need(d, "bytes", "descriptor")),
            fields={f["name"]: int(f["offset"]) for f in _need(d, "fields", "descriptor")},
            opcodes=dict(_need(d, "opcodes", "descriptor")),
            out_modes=dict(_need(d, "out_modes", "descriptor")),
            error_codes={int(k): v for k, v in _need(d, "error_codes", "descriptor").items()},
            attention_fields={f["name"]: int(f["offset"]) for f in d.get("attention_fields", ())} or None,
        )

        engines = [e for e in _need(data, "engines", where) if e.get("kind") == "matmul"]
        if len(engines) != 1:
            raise ManifestError(f"manifest must describe exactly one matmul engine, found {len(engines)}")
        e = engines[0]
        self.engine = MatmulParams(
            name=e["name"], rows=int(e["rows"]), lanes=int(e["lanes"]),
            weight_ports=int(e["weight_ports"]), weight_bits=tuple(b if b == "ternary" else int(b) for b in e["weight_bits"]),
            group_size=int(e["group_size"]), scale_bits=int(e["scale_bits"]), max_k=int(e["max_k"]),
            k_align=int(e["k_align"]), addr_align=int(e["addr_align"]),
            macs_per_cycle=int(e.get("macs_per_cycle", int(e["rows"]) * int(e["lanes"]))),
            widths=dict(e.get("widths", {})))
        att = next((e for e in data["engines"] if e.get("kind") == "attention"), None)
        stream_ports = max(self.engine.weight_ports, int(att["kv_ports"]) if att else 0)
        if len(self.ports) != 1 + stream_ports:
            raise ManifestError(f"manifest lists {len(self.ports)} ports; expected data + "
                                f"{stream_ports} weight/KV ports")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, source) -> "Manifest":
        """From a Manifest, a DesignLayout, a dict, a manifest.json path, or a directory holding one."""
        from hbmforge.layout import DesignLayout

        if isinstance(source, Manifest):
            return source
        if isinstance(source, DesignLayout):
            return cls.from_layout(source)
        if isinstance(source, Mapping):
            return cls(source)
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                path = path / "manifest.json"
            try:
                data = json.loads(path.read_text())
            except OSError as err:
                raise ManifestError(f"cannot read manifest {path}: {err.strerror or err}") from None
            except json.JSONDecodeError as err:
                raise ManifestError(f"manifest {path} is not valid JSON: {err}") from None
            return cls(data, path=path)
        raise TypeError(f"cannot make a manifest from {type(source).__name__}; pass a path, a dict, "
                        "a DesignLayout or a Manifest")

    @classmethod
    def from_layout(cls, layout) -> "Manifest":
        """The manifest a design generated from ``layout`` carries (without RTL file names)."""
        return cls(layout.to_json(), layout=layout)

    # -- lookups -----------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def data(self) -> dict:
        return self._data

    @property
    def port_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.ports)

    @property
    def word_bytes(self) -> int:
        return self.ports[0].word_bytes

    def register(self, name: str) -> RegisterSpec:
        try:
            return self.registers[name]
        except KeyError:
            raise ValueError(f"no register {name!r} in the manifest of {self.kernel}; "
                             f"registers: {', '.join(self.registers)}") from None

    def port(self, name: str) -> PortSpec:
        for p in self.ports:
            if p.name == name:
                return p
        raise ValueError(f"no port {name!r} on {self.kernel}; ports: {', '.join(self.port_names)}")

    def field_offset(self, name: str) -> int:
        try:
            return self.descriptor.fields[name]
        except KeyError:
            raise ValueError(f"no descriptor field {name!r}; fields: "
                             f"{', '.join(self.descriptor.fields)}") from None

    # -- the layout arithmetic ---------------------------------------------------------
    @cached_property
    def layout(self):
        """The DesignLayout whose byte-count helpers the packers use.

        Rebuilt from the manifest's own parameters (board, clock, ports, engine),
        then checked against the manifest so that a manifest written by a
        different layout version is refused instead of misread.
        """
        from hbmforge.config import AcceleratorConfig
        from hbmforge.layout import DesignLayout

        if self._given_layout is not None:
            return self._given_layout
        e, p0 = self.engine, self.ports[0]
        cfg = self._data.get("config") or {
            "version": 1, "name": self.kernel, "board": self.board, "clock_mhz": self.clock_mhz,
            "axi": {"data_width": p0.data_width,
                    "id_width": int(self._data["ports"][0].get("id_width", 4)),
                    **{k: self.axi[k] for k in ("max_burst_beats", "max_outstanding") if k in self.axi}},
            "engines": [{"kind": "matmul", "name": e.name, "rows": e.rows, "lanes": e.lanes,
                         "weight_ports": e.weight_ports, "weight_bits": list(e.weight_bits),
                         "group_size": e.group_size, "scale_bits": e.scale_bits, "max_k": e.max_k}],
            "ports": {p.name: p.channel for p in self.ports},
        }
        try:
            layout = DesignLayout(AcceleratorConfig.model_validate(cfg))
        except Exception as err:       # pydantic ValidationError or an unknown board
            raise ManifestError(f"manifest of {self.kernel} does not describe a valid design: {err}") from None
        mismatches = [
            (what, mine, theirs) for what, mine, theirs in (
                ("descriptor bytes", layout.descriptor_bytes, self.descriptor.bytes),
                ("k_align", layout.matmul.k_align, e.k_align),
                ("addr_align", layout.addr_align, e.addr_align),
                ("descriptor fields", {f: layout.field_offset(f) for f in layout.descriptor_fields},
                 dict(self.descriptor.fields)),
            ) if mine != theirs]
        if mismatches:
            detail = "; ".join(f"{w}: manifest {t}, this hbmforge {m}" for w, m, t in mismatches)
            raise ManifestError(f"manifest of {self.kernel} was written by an incompatible layout "
                                f"({detail}); regenerate the design with this hbmforge")
        return layout

    def __repr__(self) -> str:
        return (f"Manifest({self.kernel!r}, board={self.board!r}, hash={self.hash64:#018x}, "
                f"ports={list(self.port_names)})")
