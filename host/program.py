"""Descriptor programs: MATMUL and END records laid out as the manifest says (docs §3).

The builder refuses anything the kernel would reject (K alignment, weight
bits, address alignment, output mode) and, when given Buffers instead of
addresses, checks that each buffer sits on the right port and is large enough,
so a bad layer fails on the host with a message instead of on the device with
an error code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hbmforge.encodings import OutMode, WeightFormat

from .device import Buffer
from .manifest import Manifest

__all__ = ["ProgramBuilder", "decode_program", "OUT_MODES"]

OUT_MODES = {"int32": OutMode.INT32, "int8": OutMode.INT8}
_U32 = (1 << 32) - 1


def _manifest(source) -> Manifest:
    if isinstance(source, Manifest):
        return source
    m = getattr(source, "manifest", None)        # a Device
    return m if isinstance(m, Manifest) else Manifest.load(source)


def _out_mode(value) -> int:
    if isinstance(value, str):
        try:
            return OUT_MODES[value.lower()]
        except KeyError:
            raise ValueError(f"out_mode must be one of {list(OUT_MODES)}, got {value!r}") from None
    if value in (OutMode.INT32, OutMode.INT8) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"out_mode must be one of {list(OUT_MODES)} (or {OutMode.INT32}/{OutMode.INT8}), got {value!r}")


def _count(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


class ProgramBuilder:
    """Collects descriptors; :meth:`to_bytes` gives the program to copy into a data-port buffer."""

    def __init__(self, manifest):
        self._m = _manifest(manifest)
        self._records: list[dict[str, int]] = []

    @property
    def manifest(self) -> Manifest:
        return self._m

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return len(self._records) * self._m.descriptor.bytes

    @property
    def descriptors(self) -> list[dict[str, int]]:
        return [dict(r) for r in self._records]

    # -- records -----------------------------------------------------------------------
    def matmul(self, *, m: int, k: int, n: int, wbits: int, x, s, y, w: Sequence,
               out_mode="int32", out_shift: int = 0, q=None) -> int:
        """Append one MATMUL; ``x``, ``s``, ``y``, ``q``, ``w[i]`` are Buffers or device addresses.

        ``k`` is the padded reduction length. Returns the descriptor's index.
        """
        eng, lay = self._m.engine, self._m.layout
        m = _count("m", m, 1, _U32)
        n = _count("n", n, 1, _U32)
        k = _count("k", k, 1, eng.max_k)
        if k % eng.k_align:
            raise ValueError(f"k must be a multiple of k_align = {eng.k_align} (pad K with zeros), got {k}")
        fmt = "ternary" if wbits == 3 and not isinstance(wbits, bool) else wbits     # code 3 = ternary
        if isinstance(wbits, bool) or fmt not in eng.weight_bits:
            raise ValueError(f"wbits must be one of the engine's weight_bits {list(eng.weight_bits)}, got {wbits!r}")
        wbits = WeightFormat.code(fmt)
        mode = _out_mode(out_mode)
        shift = 0
        if mode == OutMode.INT32:
            shift = _count("out_shift", out_shift, 0, lay.matmul.widths.max_out_shift)
        if mode == OutMode.INT8 and q is None:
            raise ValueError("out_mode int8 needs q (the per-column requant parameters buffer)")
        if isinstance(w, (Buffer, int)) or len(w) != eng.weight_ports:
            got = 1 if isinstance(w, (Buffer, int)) else len(w)
            raise ValueError(f"w must list one weight stripe per weight port ({eng.weight_ports}), got {got}")
        for what, nbytes in (("output", lay.matmul.out_bytes(m, n, mode)),
                             ("weight stripe", lay.matmul.weight_port_bytes(n, k, wbits)),
                             ("scales", lay.matmul.scale_bytes(n, k))):
            if nbytes > _U32:
                raise ValueError(f"{what} of this matmul needs {nbytes} bytes; one DMA transfer moves "
                                 f"at most {_U32} (split M or N)")
        rec = {"op": self._m.descriptor.opcodes["MATMUL"], "m": m, "k": k, "n": n, "wbits": wbits,
               "out_mode": mode, "out_shift": shift,
               "x_addr": self._addr("x", x, "data", lay.matmul.act_bytes(m, k)),
               "s_addr": self._addr("s", s, "data", lay.matmul.scale_bytes(n, k)),
               "q_addr": self._addr("q", q, "data", lay.matmul.requant_bytes(n)) if mode == OutMode.INT8 else 0,
               "y_addr": self._addr("y", y, "data", lay.matmul.out_bytes(m, n, mode))}
        wbytes = lay.matmul.weight_port_bytes(n, k, wbits)
        for i, wi in enumerate(w):
            rec[f"w_addr{i}"] = self._addr(f"w[{i}]", wi, f"w{i}", wbytes)
        self._records.append(rec)
        return len(self._records) - 1

    def attention(self, **fields: int) -> int:
        """Append one ATTENTION descriptor from its named slots (docs/engines/attention.md).

        Every slot of ``manifest.descriptor.attention_fields`` except ``op`` must be
        given; the descriptor is checked with the kernel's own rules first, so a bad
        one fails here with the reason instead of as an error code on the device.
        """
        spec = self._m.descriptor
        if not spec.attention_fields:
            raise ValueError(f"design {self._m.kernel} has no attention engine")
        names = [n for n in spec.attention_fields if n != "op"]
        missing = [n for n in names if n not in fields]
        unknown = [n for n in fields if n not in names]
        if missing or unknown:
            raise ValueError(f"attention descriptor needs fields {names}; missing {missing}, unknown {unknown}")
        rec = {"op": spec.opcodes["ATTENTION"]}
        for name in names:
            value = fields[name]
            if isinstance(value, Buffer):
                value = value.address
            rec[name] = _count(name, value, 0, (1 << 64) - 1)
        from hbmforge.engines.attention import validate_attention

        code, why = validate_attention(rec, self._m.layout)
        if code:
            raise ValueError(f"attention descriptor rejected ({spec.error_text(code)}): {why}")
        self._records.append(rec)
        return len(self._records) - 1

    def end(self) -> int:
        """Append END: the kernel stops cleanly here even if ``count`` asks for more."""
        self._records.append({"op": self._m.descriptor.opcodes["END"]})
        return len(self._records) - 1

    def unchecked(self, **fields: int) -> int:
        """Append a descriptor from raw field values without any check (for error-path tests)."""
        for name, value in fields.items():
            self._m.field_offset(name)
            if not 0 <= int(value) < 1 << 64:
                raise ValueError(f"field {name} must fit in a u64, got {value}")
        self._records.append({k: int(v) for k, v in fields.items()})
        return len(self._records) - 1

    def to_bytes(self) -> bytes:
        size = self._m.descriptor.bytes
        out = bytearray(size * len(self._records))
        for i, rec in enumerate(self._records):
            fields = self._m.descriptor.fields_for(rec.get("op", 0))
            for name, value in rec.items():
                off = i * size + fields[name]
                out[off:off + 8] = value.to_bytes(8, "little")
        return bytes(out)

    # -- checks ------------------------------------------------------------------------
    def _addr(self, what: str, target, port: str, need: int) -> int:
        align = self._m.engine.addr_align
        if isinstance(target, Buffer):
            if target.freed:
                raise ValueError(f"{what}: {target!r} was freed")
            if target.port != port:
                raise ValueError(f"{what} must be a buffer on port {port!r}, got one on port {target.port!r}")
            if target.nbytes < need:
                raise ValueError(f"{what}: buffer too small, this descriptor reads/writes {need} bytes, "
                                 f"{target!r} has {target.nbytes}")
            address = target.address
        elif isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            address = int(target)
        elif target is None:
            raise ValueError(f"{what} is required (a Buffer or a device address)")
        else:
            raise TypeError(f"{what} must be a Buffer or an int device address, got {type(target).__name__}")
        if not 0 <= address < 1 << 64 or address % align:
            raise ValueError(f"{what} address {address:#x} must be a multiple of addr_align = {align} "
                             "(the data-port word)")
        return address


def decode_program(raw: bytes, manifest) -> list[dict[str, int]]:
    """Field values of each descriptor in ``raw`` (for logs and tests)."""
    m = _manifest(manifest)
    size = m.descriptor.bytes
    if len(raw) % size:
        raise ValueError(f"a program is a whole number of {size}-byte descriptors, got {len(raw)} bytes")
    out = []
    for i in range(0, len(raw), size):
        op = int.from_bytes(raw[i:i + 8], "little")
        out.append({name: int.from_bytes(raw[i + off:i + off + 8], "little")
                    for name, off in m.descriptor.fields_for(op).items()})
    return out
