"""The vector engine from Python, one op per run: float in, float out.

    vec = Vector(dev)                              # a design with a `kind: vector` engine
    y = vec.rmsnorm(x, gamma, eps=1e-5)            # x [T, D] float -> float [T, D]
    y = vec.silu(x); y = vec.gelu(x); y = vec.swiglu(a, b); y = vec.add(a, b)
    y = vec.layernorm(x, gamma, beta); y = vec.rope(x, positions=range(T), theta=1e4)
    q, scale = vec.quantize(x)                     # int8 rows and per-row float scales (ACT8)
    vec.last_run.cycles                            # what the run cost

Inputs are written as int32 fixed point with ``frac_bits`` (16) fraction bits in the matmul's
blocked layout (``RES32``), outputs read back from the engine's formats
(docs/engines/vector.md); :meth:`Vector.golden` runs the same descriptor on
:func:`hbmforge.numerics.program.execute` instead of the device. Whole models chain these ops
inside one program (:mod:`hbmforge.host.blocks`); this class is for using and checking the
engine alone. Every argument is checked before the first device write.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hbmforge.encodings import VectorAct, VectorCombine, VectorIn, VectorNorm, VectorOut
from hbmforge.engines.vector import ACT_FRAC, TABLE_FIELDS, vector_geometry
from hbmforge.memory_map import golden_scratch
from hbmforge.numerics import vector as V
from hbmforge.numerics.program import SparseMemory, execute

from .checks import check_int, check_real, check_timeout, real_array
from .device import check_device
from .errors import DeviceRunError
from .program import ProgramBuilder
from .workspace import Workspace

__all__ = ["Vector", "VectorRun"]


@dataclass
class VectorRun:
    cycles: int = 0
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)


class Vector:
    """Single vector-engine ops on ``device`` (``frac_bits``: the fixed point of inputs and outputs)."""

    def __init__(self, device, *, frac_bits: int = ACT_FRAC, timeout: float = 60.0):
        self._dev = check_device(device)
        lay = self._dev.layout
        if not lay.has("vector"):
            raise ValueError(f"design {lay.kernel!r} has no vector engine; add `kind: vector` to its config")
        self._g = vector_geometry(lay)
        self.frac_bits = check_int("frac_bits", frac_bits, 0, 24)
        self.timeout = check_timeout(timeout)
        self._work = Workspace(self._dev)
        self.last_run: VectorRun | None = None

    # -- ops -----------------------------------------------------------------------------------
    def rmsnorm(self, x, gamma, *, eps: float = 1e-5) -> np.ndarray:
        return self._norm(x, gamma, None, eps)

    def layernorm(self, x, gamma, beta, *, eps: float = 1e-5) -> np.ndarray:
        return self._norm(x, gamma, beta, eps)

    def gelu(self, x) -> np.ndarray:
        return self._unary(x, VectorAct.GELU)

    def silu(self, x) -> np.ndarray:
        return self._unary(x, VectorAct.SILU)

    def add(self, a, b) -> np.ndarray:
        a, b = self._pair(a, b)
        return self._run(a, {"combine": VectorCombine.ADD}, b=b)

    def swiglu(self, a, b) -> np.ndarray:
        """``silu(a) * b``."""
        a, b = self._pair(a, b)
        self._needs("silu")
        return self._run(a, {"act": VectorAct.SILU, "combine": VectorCombine.MUL}, b=b, frac=ACT_FRAC)

    def rope(self, x, positions, *, theta: float = 10000.0) -> np.ndarray:
        """Rotate adjacent pairs ``(2i, 2i+1)`` of every head (``head_dim`` = the attention
        engine's) of row ``t`` by ``positions[t] * theta ** (-2i / head_dim)``; positions must be
        consecutive (``positions[t] = positions[0] + t``)."""
        if not self._g.has_attention:
            raise ValueError("RoPE needs the design's attention engine (its head_dim)")
        x = self._rows("x", x)
        pos = np.asarray(positions)
        if pos.dtype.kind not in "iu" or pos.shape != (x.shape[0],) or (pos.size and (
                np.any(np.diff(pos) != 1) or pos[0] < 0)):
            raise ValueError(f"positions must be {x.shape[0]} consecutive integers from 0 up, got {positions!r}")
        theta = check_real("theta", theta, 1.0, lo_open=True)
        hd = self._g.head_dim
        if x.shape[1] % hd:
            raise ValueError(f"x rows must be whole heads of {hd}, got {x.shape[1]} columns")
        p0 = int(pos[0]) if pos.size else 0
        if p0 + x.shape[0] > self._g.max_context:
            raise ValueError(f"positions reach {p0 + x.shape[0]}, above the attention engine's max_context")
        table = V.pack_rope_table(V.rope_table(p0 + x.shape[0], hd, theta), self._dev.layout.word_bytes)
        return self._run(x, {"rope": 1, "pos0": p0}, rope=table)

    def quantize(self, x) -> tuple[np.ndarray, np.ndarray]:
        """int8 rows and float per-row scales (``x ~= q * scale[:, None]``), the ACT8 format."""
        x = self._rows("x", x)
        return self._run(x, {}, out=VectorOut.ACT8)

    # -- inputs --------------------------------------------------------------------------------
    def _needs(self, act: str) -> None:
        if act not in self._g.activations:
            raise ValueError(f"the design's vector engine has no {act!r} table (it has {list(self._g.activations)})")

    def _rows(self, name, x) -> np.ndarray:
        x = real_array(name, x, ndim=(2,), what="[T, D] floats")
        T, D = x.shape
        w8 = self._dev.layout.word_bytes
        if T == 0 or D == 0 or D % w8 or D > self._g.max_dim:
            raise ValueError(f"{name} must be [T >= 1, D] with D a multiple of {w8} up to {self._g.max_dim}, "
                             f"got shape {x.shape}")
        top = float(np.abs(x).max()) if x.size else 0.0
        if top * 2.0 ** self.frac_bits >= 2 ** 31:
            raise ValueError(f"{name} reaches {top:.4g}, beyond int32 with {self.frac_bits} fraction bits")
        return x

    def _pair(self, a, b):
        a, b = self._rows("a", a), self._rows("b", b)
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
        return a, b

    def _unary(self, x, act):
        self._needs("gelu" if act == VectorAct.GELU else "silu")
        return self._run(self._rows("x", x), {"act": act}, frac=ACT_FRAC)

    def _norm(self, x, gamma, beta, eps):
        x = self._rows("x", x)
        D = x.shape[1]
        gamma = real_array("gamma", gamma, ndim=(1,))
        if gamma.shape != (D,):
            raise ValueError(f"gamma must have {D} values, got {gamma.shape}")
        if beta is not None:
            beta = real_array("beta", beta, ndim=(1,))
            if beta.shape != (D,):
                raise ValueError(f"beta must have {D} values, got {beta.shape}")
        eps = check_real("eps", eps, 0.0, 1.0, lo_open=True)
        top = float(np.abs(gamma).max()) or 1.0
        gf = min(30, 30 - max(0, int(np.ceil(np.log2(top)))))
        c = V.norm_constants(D, eps, in_frac=self.frac_bits, gamma_frac=gf, out_frac=self.frac_bits,
                             center=beta is not None)
        fields = {"norm": VectorNorm.LAYER if beta is not None else VectorNorm.RMS, "eps_q": c["eps_q"],
                  "eps_shift": c["eps_shift"], "norm_shift": c["norm_shift"]}
        tables = {"gamma_addr": np.rint(gamma * 2.0 ** gf).astype(np.int64)}
        if beta is not None:
            tables["beta_addr"] = np.rint(beta * 2.0 ** self.frac_bits).astype(np.int64)
        return self._run(x, fields, tables=tables)

    # -- running -------------------------------------------------------------------------------
    def _plan(self, x, fields, *, b=None, tables=None, rope=None, out=VectorOut.RES32, frac=None):
        """Buffer sizes, contents and the descriptor (addresses filled in by the caller)."""
        g, w8 = self._g, self._dev.layout.word_bytes
        T, D = x.shape
        frac = self.frac_bits if frac is None else frac
        R = g.rows
        stride = R * D * 4
        data = {"a": V.pack_blocked(np.rint(x * 2.0 ** frac).astype(np.int64), R)}
        d = dict(m=T, dim=D, a_fmt=VectorIn.RES32, a_stride=stride, out_fmt=out, **fields)
        if b is not None:
            data["b"] = V.pack_blocked(np.rint(b * 2.0 ** frac).astype(np.int64), R)
            d.update(b_fmt=VectorIn.RES32, b_stride=stride)
        for name, values in (tables or {}).items():
            data[name] = V.pack_u32(values & 0xFFFFFFFF, w8)
        if rope is not None:
            data["rope_addr"] = rope
        sizes = {name: len(raw) for name, raw in data.items()}
        if out == VectorOut.RES32:
            sizes["y"] = g.blocked_bytes(T, D)
            d["y_stride"] = stride
        else:
            sizes.update(y=T * D, y_scale=g.scale_bytes(T))
        sizes["program"] = self._dev.layout.descriptor_bytes
        return d, data, sizes, frac

    def _addresses(self, d, addr):
        slots = {"a": "a_addr", "b": "b_addr", "y": "y_addr", "y_scale": "y_scale"}
        out = dict(d)
        for name, a in addr.items():
            if name != "program":
                out[slots.get(name, name)] = a
        return out

    def _decode(self, read, d, frac):
        g = self._g
        T, D = d["m"], d["dim"]
        if d["out_fmt"] == VectorOut.RES32:
            y = V.unpack_blocked(read("y", g.blocked_bytes(T, D)), T, D, g.rows)
            return y * 2.0 ** -frac                          # every op keeps its input's fixed point
        q = np.frombuffer(read("y", T * D), np.int8).reshape(T, D).copy()
        a, e = V.unpack_scale_records(read("y_scale", g.scale_bytes(T)), T, g.rows, self._dev.layout.word_bytes)
        return q, a * 2.0 ** e / 127 * 2.0 ** -frac

    def _run(self, x, fields, golden: bool = False, **kw):
        d, data, sizes, frac = self._plan(x, fields, **kw)
        prog = ProgramBuilder(self._dev.layout)
        if golden:
            mem = SparseMemory()
            addr = golden_scratch(sizes)
            prog.vector(**self._addresses(d, addr))
            for name, raw in data.items():
                mem.write(addr[name], raw)
            mem.write(addr["program"], prog.to_bytes())
            res = execute(mem, addr["program"], 1, self._dev.layout)
            if not res.ok:
                raise DeviceRunError(f"golden run failed: {res.detail}")
            out = self._decode(lambda name, n: mem.read(addr[name], n), d, frac)
        else:
            tables = {n: sizes.pop(n) for n in TABLE_FIELDS if n in sizes}
            bufs = {**self._work.reserve(sizes), **self._work.reserve(tables, self._g.table_port_name)}
            prog.vector(**self._addresses(d, {n: b.address for n, b in bufs.items()}))
            for name, raw in data.items():
                self._dev.write(bufs[name], raw)
            self._dev.write(bufs["program"], prog.to_bytes())
            t0 = time.monotonic()
            status = self._dev.run(bufs["program"], 1, timeout=self.timeout)
            self.last_run = VectorRun(cycles=status.cycles, elapsed_s=time.monotonic() - t0,
                                      counters=self._dev.counters())
            out = self._decode(lambda name, n: self._dev.read(bufs[name], n), d, frac)
        if isinstance(out, tuple):
            return out
        return out.astype(np.float32)

    def golden(self, op: str, *args, **kwargs):
        """What ``getattr(self, op)(*args, **kwargs)`` returns, from the golden model (no device run)."""
        if op not in ("rmsnorm", "layernorm", "gelu", "silu", "add", "swiglu", "rope", "quantize"):
            raise ValueError(f"op must be one of the Vector ops, got {op!r}")
        orig = self._run
        self._run = lambda x, fields, **kw: orig(x, fields, golden=True, **kw)
        try:
            return getattr(self, op)(*args, **kwargs)
        finally:
            del self._run

    def close(self) -> None:
        self._work.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
