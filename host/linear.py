"""A quantized linear layer that runs on the device: ``y = x @ w.T``.

Weights are quantized once (per group of K; ``bits`` = 2, 4, 8 or "ternary", see
:func:`hbmforge.numerics.quantize_weights_groupwise`),
their group scales encoded as ``row_scale[n] * mantissa[n, g]`` (docs §5),
packed and uploaded once. Each call quantizes the activations (int8 per
token), picks the output shift so the int32 result can never saturate, runs a
one-descriptor program and dequantizes. ``forward_int`` exposes the raw device
integers so that tests compare them bit for bit with the golden model.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from hbmforge.encodings import OutMode
from hbmforge.numerics import (dyadic_multiplier, encode_group_scales, matmul_int8, matmul_int32,
                               quantize_activations_per_tensor, quantize_activations_per_token,
                               quantize_weights_groupwise, storage_range, weight_format, weight_range)

from .device import Buffer, Device
from .packing import pack_activations, pack_requant, pack_scales, pack_weights, unpack_output
from .program import ProgramBuilder

__all__ = ["Linear", "LinearRun", "choose_out_shift"]

INT32_MAX = (1 << 31) - 1
DEFAULT_WORKSPACE_BYTES = 64 << 20      # X + Y per run: larger M is split into several runs


@dataclass
class LinearRun:
    """What the last call cost on the device (summed over runs when M was split)."""

    runs: int = 0
    rows: int = 0
    out_mode: str = "int32"
    out_shift: int | None = None
    cycles: int = 0
    elapsed_s: float = 0.0
    counters: dict = field(default_factory=dict)


def choose_out_shift(acc_bound: int, max_shift: int = 63) -> int:
    """Smallest shift with ``sat32(rshift_round(±acc_bound, shift))`` never saturating."""
    for s in range(max_shift + 1):
        half = (1 << (s - 1)) if s else 0
        if (acc_bound + half) >> s <= INT32_MAX and (-acc_bound + half) >> s >= -INT32_MAX - 1:
            return s
    raise ValueError(f"|acc| bound {acc_bound} does not fit int32 with any shift <= {max_shift}")


def _add_counters(total: dict, new: dict) -> dict:
    if not total:
        return {k: (dict((p, dict(v)) for p, v in new["ports"].items()) if k == "ports" else v)
                for k, v in new.items()}
    for k, v in new.items():
        if k == "ports":
            for p, stats in v.items():
                for name, value in stats.items():
                    total["ports"][p][name] += value
        elif k != "mac_utilization":
            total[k] += v
    return total


def _float_input(name: str, x, ndim: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must be a real float (or integer) array, got dtype {x.dtype}")
    if x.ndim not in ndim:
        raise ValueError(f"{name} must be {' or '.join(f'{d}-D' for d in ndim)}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s)")
    return x.astype(np.float64)


def _engine_format(bits, mm):
    """``bits`` (2, 4, 8 or 'ternary') checked against the engine's ``weight_bits``."""
    try:
        fmt = weight_format(bits)
    except ValueError:
        fmt = None
    if fmt is None or fmt not in mm.weight_bits:
        raise ValueError(f"bits must be one of the engine's weight_bits {list(mm.weight_bits)}, got {bits!r} "
                         f"(this device's engine accepts weight_bits {list(mm.weight_bits)})")
    return fmt


def _positive_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return float(value)


class Linear:
    """Build with :meth:`from_float` (or :meth:`from_quantized` for given integers)."""

    def __init__(self, device: Device, weight_q: np.ndarray, mantissas: np.ndarray, row_scale: np.ndarray,
                 *, bits: int, in_features: int, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES):
        if not isinstance(device, Device):
            raise TypeError(f"device must be an open hbmforge Device, got {type(device).__name__}")
        lay = device.layout
        self._dev = device
        self._lay = lay
        self._bits = bits
        self._n, self._kp = weight_q.shape
        self._k = in_features
        self._q = weight_q
        self._mant = mantissas
        self._row_scale = row_scale
        self._workspace_bytes = workspace_bytes
        self.last_run: LinearRun | None = None
        # |acc[m, n]| <= max|x_m| * sum_k |w[n,k]| * s[n, g(k)]: the per-column factor, exact
        g = lay.mm.group_size
        group_l1 = np.abs(weight_q.reshape(self._n, self._kp // g, g).astype(np.int32)).sum(axis=2)
        col_l1 = (group_l1.astype(np.int64) * mantissas.astype(np.int64)).sum(axis=1)   # < 2**63
        self._max_col_l1 = int(col_l1.max())

        self._w_bufs: list[Buffer] = []
        self._s_buf: Buffer | None = None
        self._work: dict[str, Buffer] = {}
        try:
            for port, stripe in zip((f"w{i}" for i in range(lay.mm.weight_ports)),
                                    pack_weights(weight_q, bits, lay)):
                buf = device.alloc(stripe.nbytes, port)
                self._w_bufs.append(buf)
                device.write(buf, stripe)
            scales = pack_scales(mantissas, lay)
            self._s_buf = device.alloc(scales.nbytes, "data")
            device.write(self._s_buf, scales)
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_float(cls, w, *, bits=4, group_size: int | None = None, device: Device,
                   ternary_scale: str = "group",
                   workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> "Linear":
        """Quantize ``w`` [out_features, in_features] (float) and upload it to ``device``.

        ``bits``: 2, 4, 8 or ``"ternary"`` (one of the engine's ``weight_bits``).
        ``group_size`` (optional) must be the engine's and divide ``in_features``;
        without it K is zero-padded to the engine's ``k_align``. Ternary weights use
        BitNet b1.58 absmean scaling per group (``ternary_scale="group"``) or one
        absmean for the whole matrix (``"tensor"``).

        Group scales are encoded first and the weights then rounded against the
        encoded scales, so the mantissa rounding does not add to the weight error.
        """
        if not isinstance(device, Device):
            raise TypeError(f"device must be an open hbmforge Device, got {type(device).__name__}")
        lay = device.layout
        mm = lay.mm
        fmt = _engine_format(bits, mm)
        if ternary_scale not in ("group", "tensor"):
            raise ValueError(f"ternary_scale must be 'group' or 'tensor', got {ternary_scale!r}")
        if group_size is not None and group_size != mm.group_size:
            raise ValueError(f"group_size must equal the engine's group_size ({mm.group_size}), which applies "
                             f"one scale per {mm.group_size} K elements; got {group_size}")
        w = _float_input("weights", w, (2,))
        n, k = w.shape
        if n == 0 or k == 0:
            raise ValueError(f"weights must be [out_features, in_features] with both >= 1, got shape {w.shape}")
        if group_size is not None and k % group_size:
            raise ValueError(f"group_size {group_size} must divide in_features K = {k} (omit group_size to "
                             f"zero-pad K to a multiple of {lay.matmul.k_align})")
        kp = lay.matmul.pad_k(k)
        if kp > mm.max_k:
            raise ValueError(f"in_features {k} (padded to {kp}) exceeds the engine's max_k {mm.max_k}")
        wp = np.zeros((n, kp))
        wp[:, :k] = w
        g = mm.group_size
        gq = quantize_weights_groupwise(wp, fmt, g)
        scales = gq.scales
        if fmt == "ternary" and ternary_scale == "tensor":         # absmean of the real (unpadded) weights
            mean = float(np.abs(w).mean())
            scales = np.full_like(scales, mean if mean > 0 else 1.0)
            gq = type(gq)(q=np.clip(np.rint(wp / scales[0, 0]), -1, 1).astype(np.int8), scales=scales,
                          bits=fmt, group_size=g)
        zero_group = ~np.any(gq.q.reshape(n, kp // g, g) != 0, axis=2)
        mant, row_scale = encode_group_scales(np.where(zero_group, 0.0, scales), mm.scale_bits)
        eff = mant.astype(np.float64) * row_scale[:, None]                      # [N, K/G] encoded scales
        inv = np.divide(1.0, eff, out=np.zeros_like(eff), where=eff > 0)        # 0 where the scale is 0
        lo, hi = weight_range(fmt)
        scaled = wp.reshape(n, kp // g, g) * inv[:, :, None]
        q = np.clip(np.rint(scaled, out=scaled), lo, hi, out=scaled).astype(np.int8).reshape(n, kp)
        return cls(device, q, mant, row_scale, bits=fmt, in_features=k, workspace_bytes=workspace_bytes)

    @classmethod
    def from_quantized(cls, weight_q, mantissas, row_scale=None, *, bits, device: Device,
                       workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> "Linear":
        """Upload given integers: weights [N, K] (``bits`` 2, 4, 8: signed; "ternary": -1/0/+1),
        mantissas [N, K/G] (u16)."""
        if not isinstance(device, Device):
            raise TypeError(f"device must be an open hbmforge Device, got {type(device).__name__}")
        lay = device.layout
        bits = _engine_format(bits, lay.mm)
        wq = np.asarray(weight_q)
        if wq.dtype.kind not in "iu" or wq.ndim != 2 or 0 in wq.shape:
            raise ValueError(f"weight_q must be a non-empty 2-D integer array, got {wq.dtype} {wq.shape}")
        lo, hi = storage_range(bits)
        if wq.min() < lo or wq.max() > hi:
            what = "ternary" if bits == "ternary" else f"{bits}-bit"
            raise ValueError(f"weight_q values must be in [{lo}, {hi}] for {what} weights, "
                             f"got [{int(wq.min())}, {int(wq.max())}]")
        n, k = wq.shape
        kp = lay.matmul.pad_k(k)
        if kp > lay.mm.max_k:
            raise ValueError(f"in_features {k} (padded to {kp}) exceeds the engine's max_k {lay.mm.max_k}")
        g = lay.mm.group_size
        mant = np.asarray(mantissas)
        if mant.dtype.kind not in "iu" or mant.shape != (n, -(-k // g)):
            raise ValueError(f"mantissas must be an integer array of shape [N, ceil(K/G)] = {(n, -(-k // g))}, "
                             f"got {mant.dtype} {mant.shape}")
        top = (1 << lay.mm.scale_bits) - 1
        if mant.min() < 0 or mant.max() > top:
            raise ValueError(f"mantissas must be in [0, {top}] (scale_bits = {lay.mm.scale_bits})")
        q = np.zeros((n, kp), dtype=np.int8)
        q[:, :k] = wq
        m_full = np.zeros((n, kp // g), dtype=np.uint16)
        m_full[:, :mant.shape[1]] = mant
        rs = np.ones(n) if row_scale is None else np.asarray(row_scale, dtype=np.float64).reshape(n)
        return cls(device, q, m_full, rs, bits=bits, in_features=k, workspace_bytes=workspace_bytes)

    # -- properties --------------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self._dev

    @property
    def in_features(self) -> int:
        return self._k

    @property
    def out_features(self) -> int:
        return self._n

    @property
    def k_padded(self) -> int:
        return self._kp

    @property
    def bits(self):
        """The weight format: 2, 4, 8 or "ternary"."""
        return self._bits

    @property
    def group_size(self) -> int:
        return self._lay.mm.group_size

    @property
    def weight_q(self) -> np.ndarray:
        """int8 [N, K padded]: the integer weights on the device."""
        return self._q

    @property
    def scale_mantissas(self) -> np.ndarray:
        """u16 [N, K padded / G]."""
        return self._mant

    @property
    def row_scale(self) -> np.ndarray:
        return self._row_scale

    def dequantized_weight(self) -> np.ndarray:
        """float64 [N, in_features]: what the device effectively multiplies by."""
        s = np.repeat(self._mant.astype(np.float64), self.group_size, axis=1) * self._row_scale[:, None]
        return (self._q * s)[:, :self._k]

    # -- integer interface -------------------------------------------------------------
    def acc_bound(self, xq: np.ndarray) -> int:
        """An upper bound of |acc| over all outputs for these int8 activations."""
        xmax = int(np.abs(xq.astype(np.int64)).max()) if xq.size else 0
        return xmax * self._max_col_l1

    def _int_input(self, xq) -> np.ndarray:
        xq = np.asarray(xq)
        if xq.dtype.kind not in "iu":
            raise TypeError(f"xq must be an int8-valued integer array, got dtype {xq.dtype}")
        if xq.ndim != 2 or xq.shape[0] == 0 or xq.shape[1] not in (self._k, self._kp):
            raise ValueError(f"xq must be [M >= 1, {self._k}] (or [M, {self._kp}] padded), got shape {xq.shape}")
        if xq.min() < -128 or xq.max() > 127:
            raise ValueError(f"xq values must be in [-128, 127], got [{int(xq.min())}, {int(xq.max())}]")
        out = np.zeros((xq.shape[0], self._kp), dtype=np.int8)
        out[:, :xq.shape[1]] = xq
        return out

    def out_shift_for(self, xq) -> int:
        """The smallest INT32-mode shift that cannot saturate for these int8 inputs."""
        return choose_out_shift(self.acc_bound(xq), self._lay.matmul.widths.max_out_shift)

    def dequantize_int32(self, yi, out_shift: int, act_scale) -> np.ndarray:
        """float64 ``x @ w.T`` from INT32 device output: ``y * 2^out_shift * x_scale[m] * row_scale[n]``."""
        act_scale = np.asarray(act_scale, dtype=np.float64)
        return np.asarray(yi).astype(np.float64) * (2.0 ** out_shift) * act_scale[:, None] * self._row_scale[None, :]

    def forward_int(self, xq, *, out_shift: int | None = None, requant=None, timeout: float = 60.0) -> np.ndarray:
        """Raw device output for int8 ``xq`` [M, K]: int32 (``out_shift``, default: the
        smallest that cannot saturate) or, with ``requant=(mult, shift)`` per column, int8."""
        xq = self._int_input(xq)
        if requant is not None:
            mult, shift = (np.asarray(a, dtype=np.int64).reshape(-1) for a in requant)
            if mult.shape != (self._n,) or shift.shape != (self._n,):
                raise ValueError(f"requant mult and shift must each have {self._n} entries (one per column)")
            return self._run(xq, OutMode.INT8, 0, pack_requant(mult, shift, self._lay), timeout)
        if out_shift is None:
            out_shift = self.out_shift_for(xq)
        return self._run(xq, OutMode.INT32, out_shift, None, timeout)

    def golden_int(self, xq, *, out_shift: int | None = None, requant=None) -> np.ndarray:
        """What :meth:`forward_int` must return, from the numerics golden model."""
        xq = self._int_input(xq)
        g = self.group_size
        if requant is not None:
            mult, shift = (np.asarray(a, dtype=np.int64).reshape(-1) for a in requant)
            return matmul_int8(xq, self._q, self._mant, g, mult, shift)
        if out_shift is None:
            out_shift = self.out_shift_for(xq)
        return matmul_int32(xq, self._q, self._mant, g, out_shift)

    # -- float interface ---------------------------------------------------------------
    def __call__(self, x, *, out_scale: float | None = None, act_scale: float | None = None,
                 timeout: float = 60.0) -> np.ndarray:
        """float32 ``x @ w.T`` for x [M, K] or [K].

        Default: per-token int8 activations, int32 device output. With
        ``out_scale``: per-tensor activations (``act_scale``, default from x),
        int8 device output ``y8 ~= y / out_scale`` via a dyadic multiplier per
        column; returns ``y8 * out_scale``.
        """
        x2, squeeze = self._as_rows(x)
        if out_scale is not None:
            y = self.forward_int8(x2, out_scale=out_scale, act_scale=act_scale, timeout=timeout) \
                .astype(np.float64) * out_scale
        else:
            aq = quantize_activations_per_token(x2)
            shift = self.out_shift_for(aq.q)
            yi = self.forward_int(aq.q, out_shift=shift, timeout=timeout)
            y = self.dequantize_int32(yi, shift, aq.scale)
        y = y.astype(np.float32)
        return y[0] if squeeze else y

    def forward_int8(self, x, *, out_scale: float, act_scale: float | None = None,
                     timeout: float = 60.0) -> np.ndarray:
        """int8 device output ``round(x @ w.T / out_scale)`` (saturating), [M, N]."""
        x2, squeeze = self._as_rows(x)
        out_scale = _positive_scale("out_scale", out_scale)
        if act_scale is not None:
            act_scale = _positive_scale("act_scale", act_scale)
        aq = quantize_activations_per_tensor(x2, act_scale)
        real = aq.scale[0] * self._row_scale / out_scale
        mult, shift = dyadic_multiplier(real, self._lay.matmul.widths.mult_bits, self._lay.matmul.widths.max_requant_shift)
        y8 = self.forward_int(aq.q, requant=(mult, shift), timeout=timeout)
        return y8[0] if squeeze else y8

    def _as_rows(self, x) -> tuple[np.ndarray, bool]:
        x = _float_input("x", x, (1, 2))
        squeeze = x.ndim == 1
        x2 = x[None, :] if squeeze else x
        if x2.shape[1] != self._k or x2.shape[0] == 0:
            raise ValueError(f"x must be [M >= 1, in_features={self._k}] or [{self._k}], got shape {x.shape}")
        return x2, squeeze

    # -- running -----------------------------------------------------------------------
    def rows_per_run(self, out_mode: int = OutMode.INT32) -> int:
        """Rows of X one run handles: X and Y together fit ``workspace_bytes`` (whole row blocks)."""
        lay, rows = self._lay, self._lay.mm.rows
        per_block = lay.matmul.act_bytes(rows, self._kp) + lay.matmul.out_bytes(rows, self._n, out_mode)
        by_dma = ((1 << 32) - 1) // max(1, lay.matmul.out_bytes(rows, self._n, out_mode))
        return rows * max(1, min(self._workspace_bytes // per_block, by_dma))

    def _workspace(self, name: str, nbytes: int) -> Buffer:
        buf = self._work.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self._dev.free(buf)
                del self._work[name]
            self._work[name] = buf = self._dev.alloc(nbytes, "data")
        return buf

    def _run(self, xq: np.ndarray, out_mode: int, out_shift: int, requant: np.ndarray | None,
             timeout: float) -> np.ndarray:
        if self._s_buf is None:
            raise ValueError("this Linear was closed; its weights are no longer on the device")
        dev, lay = self._dev, self._lay
        m_total = xq.shape[0]
        chunk = self.rows_per_run(out_mode)
        dtype = np.int32 if out_mode == OutMode.INT32 else np.int8
        out = np.empty((m_total, self._n), dtype=dtype)
        info = LinearRun(out_mode="int32" if out_mode == OutMode.INT32 else "int8",
                         out_shift=out_shift if out_mode == OutMode.INT32 else None)
        q_buf = None
        if requant is not None:
            q_buf = self._workspace("q", requant.nbytes)
            dev.write(q_buf, requant)
        started = time.monotonic()
        for r0 in range(0, m_total, chunk):
            m = min(chunk, m_total - r0)
            x_buf = self._workspace("x", lay.matmul.act_bytes(min(chunk, m_total), self._kp))
            y_buf = self._workspace("y", lay.matmul.out_bytes(min(chunk, m_total), self._n, out_mode))
            dev.write(x_buf, pack_activations(xq[r0:r0 + m], lay))
            prog = ProgramBuilder(dev.manifest)
            prog.matmul(m=m, k=self._kp, n=self._n, wbits=self._bits, x=x_buf, s=self._s_buf, y=y_buf,
                        w=self._w_bufs, out_mode=out_mode, out_shift=out_shift, q=q_buf)
            p_buf = self._workspace("program", prog.nbytes)
            dev.write(p_buf, prog.to_bytes())
            status = dev.run(p_buf, 1, timeout=timeout)
            raw = np.frombuffer(dev.read(y_buf, lay.matmul.out_bytes(m, self._n, out_mode)), dtype=np.uint8)
            out[r0:r0 + m] = unpack_output(raw, m, self._n, out_mode, lay)
            info.runs += 1
            info.rows += m
            info.cycles += status.cycles
            info.counters = _add_counters(info.counters, dev.counters())
        info.elapsed_s = time.monotonic() - started
        c = info.counters
        c["mac_utilization"] = c["mac_ops"] / (c["cycles"] * dev.manifest.engine.macs_per_cycle) if c["cycles"] else 0.0
        self.last_run = info
        return out

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Free the layer's device buffers (weights, scales, workspace)."""
        if self._dev.closed:
            self._w_bufs, self._s_buf, self._work = [], None, {}
            return
        for buf in [*self._w_bufs, self._s_buf, *self._work.values()]:
            if buf is not None and not buf.freed:
                self._dev.free(buf)
        self._w_bufs, self._s_buf, self._work = [], None, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"Linear(in_features={self._k}, out_features={self._n}, bits={self._bits}, "
                f"group_size={self.group_size}, device={self._dev.backend})")
