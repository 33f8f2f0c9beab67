"""Descriptor programs: MATMUL, ATTENTION, COPY/FILL and END records in the layout's formats.

Every descriptor is checked with :meth:`DesignLayout.validate_descriptor
<hbmforge.layout.DesignLayout.validate_descriptor>`, the one rule set the RTL command
processor and the golden model (:func:`hbmforge.numerics.program.execute`) also apply, so
a descriptor the kernel would refuse fails here, with the reason, instead of as an error
code on the device. The builder adds what only the host knows: when given Buffers instead
of addresses, each must sit on the right port, be live and be large enough.

Copying and filling device memory with one run: :func:`copy_buffer` and :func:`fill_buffer`
(the design needs a ``kind: copy`` engine).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from hbmforge.encodings import CopyMode, Opcode, OutMode
from hbmforge.engines.attention import KV_HEAD_PARALLEL, attention_geometry
from hbmforge.layout import DesignLayout
from hbmforge.manifest import DesignManifest, read_manifest

from .checks import U64_MAX, check_int, check_timeout
from .device import Buffer, Device, RunStatus
from .errors import BufferStateError

__all__ = ["ProgramBuilder", "decode_program", "copy_buffer", "fill_buffer", "OUT_MODES"]

OUT_MODES = {"int32": OutMode.INT32, "int8": OutMode.INT8}
_U32 = (1 << 32) - 1


def _resolve(source) -> tuple[DesignLayout, Device | None]:
    """(layout, device or None) of a Device, a DesignLayout, a DesignManifest or a manifest source."""
    if isinstance(source, Device):
        return source.layout, source
    if isinstance(source, DesignLayout):
        return source, None
    if isinstance(source, DesignManifest):
        return source.layout, None
    return read_manifest(source).layout, None


def _out_mode(value) -> int:
    if isinstance(value, str):
        try:
            return OUT_MODES[value.lower()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool) and value in (OutMode.INT32, OutMode.INT8):
        return int(value)
    raise ValueError(f"out_mode must be one of {list(OUT_MODES)} (or OutMode.INT32 = 0 / OutMode.INT8 = 1), "
                     f"got {value!r}")


def _wbits_code(wbits) -> int:
    """A weight format (2, 4, 8, 'ternary', a WeightFormat or descriptor code 3) -> descriptor code."""
    if isinstance(wbits, str):
        if wbits == "ternary":
            return 3
        raise ValueError(f"wbits must be 2, 4, 8 or 'ternary' (or the descriptor code 3), got {wbits!r}")
    return check_int("wbits", wbits, 0, U64_MAX)


class ProgramBuilder:
    """Collects descriptors; :meth:`to_bytes` gives the program to copy into a data-port buffer.

    ``design``: a Device (Buffers must then be its own), a DesignLayout, a DesignManifest or
    anything :func:`hbmforge.manifest.read_manifest` takes.
    """

    def __init__(self, design):
        self._lay, self._dev = _resolve(design)
        self._records: list[dict[str, int]] = []
        self._raw: list[bytes] = []

    @property
    def layout(self) -> DesignLayout:
        return self._lay

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return len(self._records) * self._lay.descriptor_bytes

    @property
    def descriptors(self) -> list[dict[str, int]]:
        return [dict(r) for r in self._records]

    # -- records -----------------------------------------------------------------------
    def matmul(self, *, m: int, k: int, n: int, wbits, x, y, w: Sequence, s=None,
               out_mode="int32", out_shift: int = 0, q=None, bias=None, bias_shift: int = 0, p=None) -> int:
        """Append one MATMUL; ``x``, ``s``, ``y``, ``q``, ``bias``, ``p``, ``w[i]`` are Buffers or device
        addresses.

        ``k`` is the padded reduction length; ``wbits`` 2, 4, 8, ``"ternary"`` (or its code 3).
        ``bias``: int32 per column, added as ``bias << bias_shift`` before the output stage.
        ``s``: the group scales (:func:`~host.packing.pack_scales`); an engine with ``scale_stream:
        inline`` reads them from the weight stripes and ignores ``s`` (leave it out: ``s_addr`` 0).
        ``p``: the split-K scratch (``geom.partial_bytes``), needed when ``k`` exceeds ``k_slice``.
        Returns the descriptor's index.
        """
        lay = self._lay
        self._need(Opcode.MATMUL, "a matmul engine")
        m, k, n = (check_int(name, v, 0, U64_MAX) for name, v in (("m", m), ("k", k), ("n", n)))
        code = _wbits_code(wbits)
        mode = _out_mode(out_mode)
        shift = check_int("out_shift", out_shift, 0, U64_MAX) if mode == OutMode.INT32 else 0
        if mode == OutMode.INT8 and q is None:
            raise ValueError("out_mode int8 needs q (the per-column requant parameters buffer)")
        ports = lay.mm.weight_ports
        if isinstance(w, (Buffer, int, str, bytes)) or not isinstance(w, Sequence) or len(w) != ports:
            got = len(w) if isinstance(w, Sequence) and not isinstance(w, (str, bytes)) else type(w).__name__
            raise ValueError(f"w must list one weight stripe per weight port ({ports}), got {got}")
        targets = {"x_addr": ("x", x, "data"), "s_addr": ("s", s, "data"), "y_addr": ("y", y, "data")}
        if lay.matmul.inline_scales and s is None:
            del targets["s_addr"]                     # inline scales: s_addr 0, ignored
        if mode == OutMode.INT8:
            targets["q_addr"] = ("q", q, "data")
        elif q is not None:
            self._address("q", q)                     # checked; int32 outputs do not read it
        targets.update({f"w_addr{i}": (f"w[{i}]", wi, f"w{i}") for i, wi in enumerate(w)})
        if bias is not None:
            targets["b_addr"] = ("bias", bias, "data")
        if lay.matmul.k_slice < k <= lay.matmul.max_k_total:
            if p is None:
                raise ValueError(f"k {k} is above one pass ({lay.matmul.k_slice}): the engine splits it and needs "
                                 f"p, a scratch buffer of {lay.matmul.partial_bytes(m, n, k, mode)} bytes for "
                                 "the partial sums")
            targets["p_addr"] = ("p", p, "data")
        rec = {"op": Opcode.MATMUL, "m": m, "k": k, "n": n, "wbits": code, "out_mode": mode, "out_shift": shift,
               "s_addr": 0, "q_addr": 0, "bias": int(bias is not None),
               "bias_shift": check_int("bias_shift", bias_shift, 0, U64_MAX) if bias is not None else 0,
               "b_addr": 0, "p_addr": 0}
        rec.update({slot: self._address(what, target) for slot, (what, target, _) in targets.items()})
        self._validate(rec)
        geom = lay.matmul
        sizes = {"x_addr": geom.act_bytes(m, k), "s_addr": geom.scale_bytes(n, k), "y_addr": geom.out_bytes(m, n, mode),
                 "q_addr": geom.requant_bytes(n), "b_addr": geom.bias_bytes(n),
                 "p_addr": geom.partial_bytes(m, n, k, mode),
                 **{f"w_addr{i}": geom.weight_port_bytes(n, k, code) for i in range(ports)}}
        for what, nbytes in (("output", sizes["y_addr"]), ("weight stripe", sizes["w_addr0"]),
                             ("scales", sizes["s_addr"]), ("activations", sizes["x_addr"])):
            if nbytes > _U32:
                raise ValueError(f"{what} of this matmul needs {nbytes} bytes; one DMA transfer moves "
                                 f"at most {_U32} (split M or N)")
        for slot, (what, target, port) in targets.items():
            self._check_buffer(what, target, port, sizes[slot])
        return self._append(rec)

    def attention(self, **fields) -> int:
        """Append one ATTENTION descriptor from its named slots (docs/engines/attention.md).

        Every slot of the layout's ATTENTION format except ``op`` must be given (``q_addr``,
        ``bt_addr``, ``o_addr``, ``k_pool``, ``v_pool`` may be Buffers), except ``kv_layout``
        (default 0, the shared layout; 1: head-parallel, ``k_pool`` is the pool table on the data
        port and ``v_pool`` 0); the descriptor is checked with the kernel's own rules.
        """
        lay = self._lay
        self._need(Opcode.ATTENTION, "an attention engine")
        names = lay.fields_for(Opcode.ATTENTION)[1:]
        fields = {"kv_layout": 0, **fields}
        missing = [n for n in names if n not in fields]
        unknown = [n for n in fields if n not in names]
        if missing or unknown:
            raise ValueError(f"attention descriptor needs fields {list(names)}; missing {missing}, unknown {unknown}")
        rec = {"op": Opcode.ATTENTION}
        for name in names:
            rec[name] = self._address(name, fields[name]) if isinstance(fields[name], Buffer) \
                else check_int(name, fields[name], 0, U64_MAX)
        self._validate(rec)
        geom = attention_geometry(lay)
        rows = rec["n_q"] * rec["kv_heads"] * rec["q_per_kv"]
        pages = -(-rec["ctx_len"] // geom.page_tokens)
        buffers = {"q_addr": ("data", rows * geom.q_record_bytes), "o_addr": ("data", rows * geom.out_row_bytes),
                   "bt_addr": ("data", pages * 4), "k_pool": ("w0", 0), "v_pool": (f"w{geom.kv_ports - 1}", 0)}
        if rec["kv_layout"] == KV_HEAD_PARALLEL:
            # the pool table; the group pools it lists are the KV cache's (host/kvcache.py)
            buffers["k_pool"] = ("data", geom.pool_table_bytes)
            del buffers["v_pool"]
        for name, (port, need) in buffers.items():
            self._check_buffer(name, fields[name], port, need)
        return self._append(rec)

    def vector(self, **fields) -> int:
        """Append one VECTOR descriptor from its named slots (docs/engines/vector.md); slots not
        given are 0. Address slots may be Buffers (on the data port; ``pool`` on its KV port, or on
        the data port as the pool table of a ``kv_groups`` append);
        the descriptor is checked with the kernel's own rules and each Buffer against the bytes
        the descriptor reads or writes there."""
        from hbmforge.encodings import VectorIn, VectorNorm, VectorOut
        from hbmforge.engines.vector import ADDRESS_FIELDS, TABLE_FIELDS, vector_geometry

        lay = self._lay
        self._need(Opcode.VECTOR, "a vector engine")
        names = lay.fields_for(Opcode.VECTOR)[1:]
        unknown = [n for n in fields if n not in names]
        if unknown:
            raise ValueError(f"vector descriptor has no field(s) {unknown}; fields: {list(names)}")
        rec = {"op": Opcode.VECTOR, **{n: 0 for n in names}}
        for name, value in fields.items():
            if isinstance(value, Buffer):
                if name not in ADDRESS_FIELDS:
                    raise TypeError(f"{name} is not an address slot; give an integer")
                rec[name] = self._address(name, value)
            else:
                rec[name] = check_int(name, value, 0, U64_MAX)
        self._validate(rec)
        g = vector_geometry(lay)
        m, dim, R = rec["m"], rec["dim"], g.rows
        blocks = g.blocks(m)

        def operand(fmt, stride):
            return (m - 1) * stride + dim * 4 if fmt == VectorIn.ROWS32 else (blocks - 1) * stride + R * dim * 4

        need = {"a_addr": operand(rec["a_fmt"], rec["a_stride"])}
        if rec["a_fmt"] != VectorIn.RES32:
            need["a_cols"] = 4 * dim
        if rec["a_fmt"] == VectorIn.ACC32:
            need["a_scale"] = g.scale_bytes(m)
        if rec["b_fmt"] != VectorIn.NONE:
            need["b_addr"] = operand(rec["b_fmt"], rec["b_stride"])
            if rec["b_fmt"] != VectorIn.RES32:
                need["b_cols"] = 4 * dim
        if rec["bias"]:
            need["bias_addr"] = 4 * dim
        if rec["norm"] != VectorNorm.NONE:
            need["gamma_addr"] = 4 * dim
            if rec["norm"] == VectorNorm.LAYER:
                need["beta_addr"] = 4 * dim
        if rec["rope"]:
            need["rope_addr"] = (rec["pos0"] + m) * g.rope_row_bytes
        out = rec["out_fmt"]
        if out == VectorOut.RES32:
            need["y_addr"] = (blocks - 1) * rec["y_stride"] + R * dim * 4
        elif out == VectorOut.ACT8:
            need.update(y_addr=m * dim, y_scale=g.scale_bytes(m))
            if rec["res_out"]:
                need["res_addr"] = (blocks - 1) * rec["y_stride"] + R * dim * 4
        elif out == VectorOut.QREC:
            need.update(y_addr=m * dim // g.head_dim * attention_geometry(lay).q_record_bytes,
                        consts_addr=g.consts_bytes(dim))
        else:
            multi = rec["kv_groups"] >= 2          # pool: a table of kv_groups pool addresses
            need.update(consts_addr=g.consts_bytes(dim),
                        bt_addr=-(-(rec["pos0"] + m) // attention_geometry(lay).page_tokens) * 4,
                        pool=g.pool_table_bytes(rec["kv_groups"]) if multi else 0)
        for name, nbytes in need.items():
            pool_port = "data" if rec["kv_groups"] >= 2 else lay.ports[rec["port"]].name
            port = pool_port if name == "pool" else g.table_port_name if name in TABLE_FIELDS else "data"
            self._check_buffer(name, fields.get(name), port, nbytes)
        return self._append(rec)

    def copy(self, src, dst, nbytes: int | None = None) -> int:
        """Append a COPY of ``nbytes`` from ``src`` to ``dst``: each a Buffer or a ``(port, address)``
        pair (port: a name such as ``"w0"`` or its index). ``nbytes`` defaults to the size of the
        ``src`` Buffer; it must be a whole number of port words."""
        return self._copy(CopyMode.COPY, src, dst, nbytes, 0)

    def fill(self, dst, value: int, nbytes: int | None = None) -> int:
        """Append a FILL of ``nbytes`` at ``dst`` (a Buffer or a ``(port, address)`` pair) with the
        64-bit ``value`` repeated little-endian (negative values: two's complement). ``nbytes``
        defaults to the size of the ``dst`` Buffer; it must be a whole number of port words."""
        return self._copy(CopyMode.FILL, None, dst, nbytes, value)

    def _copy(self, mode: CopyMode, src, dst, nbytes, value) -> int:
        self._need(Opcode.COPY, "a copy engine")
        value = check_int("value", value, -(1 << 63), U64_MAX) & U64_MAX
        src_port, src_addr = self._endpoint("src", src, write=False) if mode == CopyMode.COPY else (0, 0)
        dst_port, dst_addr = self._endpoint("dst", dst, write=True)
        sized = ("src", src) if mode == CopyMode.COPY else ("dst", dst)
        if nbytes is None:
            if not isinstance(sized[1], Buffer):
                raise ValueError(f"nbytes is required when {sized[0]} is a (port, address) pair")
            nbytes = sized[1].nbytes
        nbytes = check_int("nbytes", nbytes, 1, U64_MAX)
        rec = {"op": Opcode.COPY, "mode": mode, "src_port": src_port, "src_addr": src_addr,
               "dst_port": dst_port, "dst_addr": dst_addr, "bytes": nbytes, "value": value}
        self._validate(rec)
        self._check_buffer("src", src, None, nbytes)
        self._check_buffer("dst", dst, None, nbytes)
        return self._append(rec)

    def end(self) -> int:
        """Append END: the kernel stops cleanly here even if ``count`` asks for more."""
        return self._append({"op": Opcode.END})

    def unchecked(self, **fields: int) -> int:
        """Append a descriptor from raw slot values without any rule check (for error-path tests).

        Slots are placed by the format of ``op`` (default END) when it is an opcode of this
        design and has them all, else by the first format that has them all.
        """
        lay = self._lay
        values = {name: check_int(f"field {name}", v, 0, U64_MAX) for name, v in fields.items()}
        op = values.get("op", int(Opcode.END))
        formats = list(lay.opcodes.values())
        if lay.family_of(op) is not None or op == Opcode.END:
            formats.insert(0, op)
        fmt = next((o for o in formats if all(n in lay.fields_for(o) for n in values)), None)
        if fmt is None:
            known = sorted({f for o in lay.opcodes.values() for f in lay.fields_for(o)})
            bad = [n for n in values if n not in known] or list(values)
            raise ValueError(f"no descriptor field {bad[0]!r} in one format with {list(values)}; "
                             f"fields: {', '.join(known)}")
        raw = bytearray(lay.encode_descriptor({**values, "op": int(fmt)}))
        raw[:8] = op.to_bytes(8, "little")
        self._records.append(dict(values, op=op))
        self._raw.append(bytes(raw))
        return len(self._records) - 1

    def to_bytes(self) -> bytes:
        return b"".join(self._raw)

    # -- checks ------------------------------------------------------------------------
    def _append(self, rec: dict) -> int:
        rec = {k: int(v) for k, v in rec.items()}
        self._raw.append(self._lay.encode_descriptor(rec))
        self._records.append(rec)
        return len(self._records) - 1

    def _need(self, op: Opcode, what: str) -> None:
        if self._lay.family_of(op) is None:
            raise ValueError(f"design {self._lay.kernel!r} has no {op.name} opcode: add {what} to its config "
                             f"(it runs {', '.join(self._lay.opcodes)})")

    def _validate(self, rec: dict) -> None:
        code, why = self._lay.validate_descriptor(rec)
        if code:
            raise ValueError(f"{Opcode(rec['op']).name} descriptor refused ({self._lay.error_text(code)}, "
                             f"error code {int(code)}): {why}")

    def _live(self, what: str, buf: Buffer) -> None:
        if buf.freed:
            raise BufferStateError(f"{what}: {buf!r} was freed")
        if self._dev is not None and buf.device is not self._dev:
            raise BufferStateError(f"{what}: {buf!r} belongs to another device")

    def _address(self, what: str, target) -> int:
        if isinstance(target, Buffer):
            self._live(what, target)
            return target.address
        if target is None:
            raise ValueError(f"{what} is required (a Buffer or a device address)")
        if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)):
            raise TypeError(f"{what} must be a Buffer or an int device address, got {type(target).__name__}")
        return check_int(f"{what} address", target, 0, U64_MAX)

    def _check_buffer(self, what: str, target, port: str | None, need: int) -> None:
        """A Buffer target must be on ``port`` (None: any) and hold ``need`` bytes."""
        if not isinstance(target, Buffer):
            return
        if port is not None and target.port != port:
            raise ValueError(f"{what} must be a buffer on port {port!r}, got one on port {target.port!r}")
        if target.nbytes < need:
            raise ValueError(f"{what}: buffer too small, this descriptor reads/writes {need} bytes, "
                             f"{target!r} has {target.nbytes}")

    def _endpoint(self, what: str, target, *, write: bool) -> tuple[int, int]:
        """(port index, address) of a Buffer or a (port, address) pair."""
        lay = self._lay
        if isinstance(target, Buffer):
            self._live(what, target)
            info, address = lay.port(target.port), target.address
        elif isinstance(target, tuple) and len(target) == 2:
            port, address = target
            if isinstance(port, str):
                info = lay.port(port)
            else:
                index = check_int(f"{what} port", port, 0, len(lay.ports) - 1)
                info = lay.ports[index]
            address = check_int(f"{what} address", address, 0, U64_MAX)
        else:
            raise TypeError(f"{what} must be a Buffer or a (port, address) pair, got {type(target).__name__}")
        if write and not info.writes:
            writable = [p.name for p in lay.ports if p.writes]
            raise ValueError(f"{what}: port {info.name!r} is not written by any engine of {lay.kernel}; "
                             f"writable ports: {writable}")
        return info.index, address


def decode_program(raw, design) -> list[dict[str, int]]:
    """Slot values of each descriptor in ``raw`` (for logs and tests)."""
    lay, _ = _resolve(design)
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"raw must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    size = lay.descriptor_bytes
    if len(raw) % size:
        raise ValueError(f"a program is a whole number of {size}-byte descriptors, got {len(raw)} bytes")
    return [lay.decode_descriptor(raw[i:i + size]) for i in range(0, len(raw), size)]


# -- one-run helpers -------------------------------------------------------------------------
def _run_program(device, add: Callable[[ProgramBuilder], object], timeout) -> RunStatus:
    """Build a program with ``add`` (every check first), then upload and run it once."""
    if not isinstance(device, Device):
        raise TypeError(f"device must be an open hbmforge Device, got {type(device).__name__}")
    device._check_open()
    timeout = check_timeout(timeout)
    prog = ProgramBuilder(device)
    add(prog)
    buf = device.alloc(prog.nbytes)
    try:
        device.write(buf, prog.to_bytes())
        return device.run(buf, len(prog), timeout)
    finally:
        if not device.closed and not device.running:     # a run still in flight keeps reading it
            device.free(buf)


def copy_buffer(device: Device, dst, src, *, nbytes: int | None = None, timeout: float = 10.0) -> RunStatus:
    """Copy ``nbytes`` (default: all of ``src``) from ``src`` to ``dst`` on the device, with one run
    of the design's copy engine. ``src``/``dst``: Buffers of ``device`` or ``(port, address)`` pairs;
    ranges may not overlap. Everything is checked before anything is allocated or written."""
    return _run_program(device, lambda p: p.copy(src, dst, nbytes), timeout)


def fill_buffer(device: Device, dst, value: int, *, nbytes: int | None = None, timeout: float = 10.0) -> RunStatus:
    """Fill ``nbytes`` (default: all of ``dst``) of ``dst`` with the 64-bit ``value`` repeated
    (little-endian), with one run of the design's copy engine."""
    return _run_program(device, lambda p: p.fill(dst, value, nbytes), timeout)
