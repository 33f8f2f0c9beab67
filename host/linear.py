"""A quantized linear layer that runs on the device: ``y = x @ w.T (+ b)``.

Weights are quantized once against their encoded group scales
(:func:`hbmforge.numerics.encoded.quantize_weights_encoded`: ``bits`` = 2, 4, 8 or "ternary",
``w ~= q * mantissa[n, g] * row_scale[n]``, docs §5), packed and uploaded once. Each call
quantizes the activations (int8 per token), picks the output shift so the int32 result can
never saturate, runs one descriptor per block of rows and dequantizes with one rounding
(:func:`~hbmforge.numerics.encoded.scale_product`), so finite inputs of any magnitude give
the right float32 result or a ValueError when it is beyond float32. ``forward_int`` exposes
the raw device integers so that tests compare them bit for bit with the golden model.

K (``in_features``) may exceed the engine's ``max_k``: the engine splits it into slices and keeps
exact int64 partial sums in a scratch buffer of the workspace, up to ``split_k`` slices.

A bias ``b`` [N] is added on the device where the accumulator has one scale per column: with
per-tensor activations (``out_scale``, INT8 output) it becomes an int32 per column in accumulator
units, ``round(b / (x_scale * row_scale) / 2^bias_shift)``, added as ``<< bias_shift`` before the
requantization (one rounding of at most half a ``2^bias_shift`` step). With the default per-token
activations every row has its own scale, so the bias is added to the dequantized float64 result
(exact, then one rounding to float32).

Every argument is checked before the first allocation or device write.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hbmforge.encodings import OutMode
from hbmforge.numerics import (dyadic_multiplier, matmul_int8, matmul_int32, quantize_activations_per_tensor,
                               quantize_activations_per_token, storage_range)
from hbmforge.engines.matmul import SPARSE24
from hbmforge.numerics.encoded import quantize_weights_encoded, scale_product
from hbmforge.numerics.sparse import is_2_4, prune_2_4
from hbmforge.memory_map import check_memory_kind

from .checks import check_choice, check_int, check_positive, check_timeout, int_array, real_array
from .device import Buffer, Device, check_device, merge_counters
from .packing import (engine_format, pack_activations, pack_bias, pack_requant, pack_scales, pack_weights,
                      unpack_output, weight_code)
from .program import ProgramBuilder
from .workspace import Workspace

__all__ = ["Linear", "LinearRun", "choose_out_shift"]

INT32_MAX = (1 << 31) - 1
DEFAULT_WORKSPACE_BYTES = 64 << 20      # X + Y per run: larger M is split into several runs
_U32 = (1 << 32) - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def _check_k(k: int, lay) -> int:
    """``in_features`` padded to ``k_align``, checked against the largest K the engine takes."""
    geom = lay.matmul
    kp = geom.pad_k(k)
    if kp > geom.max_k_total:
        raise ValueError(f"in_features {k} (padded to {kp}) exceeds the engine's largest K {geom.max_k_total} "
                         f"(split_k {lay.mm.split_k} slices of max_k {geom.k_slice})")
    return kp


def _check_bias(bias, n: int) -> np.ndarray:
    b = real_array("bias", bias, ndim=(1,), what=f"[{n}] finite floats (one per output)")
    if b.shape != (n,):
        raise ValueError(f"bias must be {n} finite floats (one per output), got shape {b.shape}")
    return b.astype(np.float64)


def _to_float32(y: np.ndarray) -> np.ndarray:
    """float64 results -> float32, or a ValueError if any is beyond float32's range."""
    big = np.abs(y) > _FLOAT32_MAX
    if big.any():
        raise ValueError(f"the result is not representable in float32: {int(np.count_nonzero(big))} output(s) "
                         f"reach |y| = {float(np.abs(y).max()):.3g} > {_FLOAT32_MAX:.3g}; scale x or the weights "
                         "down (forward_int gives the raw device integers)")
    return y.astype(np.float32)


class Linear:
    """Build with :meth:`from_float` (or :meth:`from_quantized` for given integers).

    The constructor takes the padded operands: ``weight_q`` [N, K padded] integers in the
    format's storage range, ``mantissas`` [N, K padded / G] unsigned ``scale_bits`` integers,
    ``row_scale`` [N] finite floats > 0.
    """

    def __init__(self, device: Device, weight_q: np.ndarray, mantissas: np.ndarray, row_scale: np.ndarray,
                 *, bits, in_features: int, bias=None, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 weight_memory: str | None = None, sparse24: bool = False):
        device = check_device(device)
        lay = device.layout
        if weight_memory is not None:       # "host"/"ddr": behind the design's tile cache, if it has one
            check_memory_kind(lay.config.board_info, weight_memory)
        mm = lay.mm
        bits = engine_format(bits, lay, "bits")
        code = weight_code(bits, lay, sparse24=sparse24, name="bits")
        k = check_int("in_features", in_features, 1)
        kp = _check_k(k, lay)
        q = int_array("weight_q", weight_q, *storage_range(bits), shape=(None, kp))
        n = q.shape[0]
        if n == 0:
            raise ValueError("weight_q has no rows (out_features must be >= 1)")
        if sparse24 and not is_2_4(q):
            raise ValueError("weight_q is not 2:4 sparse (a group of 4 K elements holds more than 2 non-zeros); "
                             "prune it (hbmforge.numerics.sparse.prune_2_4) or use from_float(..., sparse24=True)")
        g = mm.group_size
        mant = int_array("mantissas", mantissas, 0, (1 << mm.scale_bits) - 1, shape=(n, kp // g))
        rs = real_array("row_scale", row_scale, ndim=(1,), what=f"[{n}] finite floats > 0")
        if rs.shape != (n,) or not np.all(rs > 0):
            raise ValueError(f"row_scale must be {n} finite floats > 0 (one per output), got "
                             f"shape {rs.shape}, min {float(rs.min()) if rs.size else None}")
        self._bias = None if bias is None else _check_bias(bias, n)
        self._workspace_bytes = check_int("workspace_bytes", workspace_bytes, 1)
        self._dev = device
        self._lay = lay
        self._bits = bits
        self._code = code
        self._n, self._kp, self._k = n, kp, k
        # the pair fires take N even: an odd N gets a zero column on the device, its output dropped
        pairs = ((sparse24 and mm.sparse24_pairs and bits in (2, "ternary"))
                 or (not sparse24 and mm.dense_pairs and bits in mm.dense_pair_formats))
        self._n_dev = n + n % 2 if pairs else n
        self._q = q.astype(np.int8)
        self._mant = mant.astype(np.uint16)
        self._row_scale = rs
        self.last_run: LinearRun | None = None
        # |acc[m, n]| <= max|x_m| * sum_k |w[n,k]| * s[n, g(k)]: the per-column factor, exact
        group_l1 = np.abs(self._q.reshape(n, kp // g, g).astype(np.int64)).sum(axis=2)
        self._max_col_l1 = int((group_l1 * self._mant.astype(np.int64)).sum(axis=1).max())

        self._w_bufs: list[Buffer] = []
        self._s_buf: Buffer | None = None
        self._work = Workspace(device)
        try:
            inline = lay.matmul.inline_scales          # scale_stream inline: the scales go in the stripes
            q_dev, mant_dev = self._pad_rows(self._q), self._pad_rows(self._mant)
            stripes = pack_weights(q_dev, bits, lay, sparse24=sparse24, scales=mant_dev if inline else None)
            for port, stripe in zip((f"w{i}" for i in range(mm.weight_ports)), stripes):
                buf = device.alloc(stripe.nbytes, port, memory=weight_memory)
                self._w_bufs.append(buf)
                device.write(buf, stripe)
            if not inline:
                scales = pack_scales(mant_dev, lay)
                self._s_buf = device.alloc(scales.nbytes, "data")
                device.write(self._s_buf, scales)
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_float(cls, w, *, bits=4, group_size: int | None = None, device: Device,
                   ternary_scale: str = "group", bias=None,
                   workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, weight_memory: str | None = None,
                   sparse24: bool = False) -> "Linear":
        """Quantize ``w`` [out_features, in_features] (float) and upload it to ``device``;
        ``bias``: optional float [out_features].

        ``bits``: 2, 4, 8 or ``"ternary"`` (one of the engine's ``weight_bits``).
        ``group_size`` (optional) must be the engine's and divide ``in_features``;
        without it K is zero-padded to the engine's ``k_align``. Ternary weights use
        BitNet b1.58 absmean scaling per group (``ternary_scale="group"``) or one
        absmean for the whole matrix (``"tensor"``).

        Group scales are encoded first and the weights then rounded against the
        encoded scales, so the mantissa rounding does not add to the weight error
        (:func:`hbmforge.numerics.encoded.quantize_weights_encoded`).

        ``sparse24=True`` (an engine with ``sparse24: true``) prunes ``w`` to 2:4 by magnitude
        (:func:`hbmforge.numerics.sparse.prune_2_4`: the 2 largest ``|w|`` of every 4 in K) before
        quantizing, and stores the weights 2:4 packed (2 values + two 2-bit indexes per 4).
        """
        device = check_device(device)
        lay = device.layout
        mm = lay.mm
        fmt = engine_format(bits, lay, "bits")
        ternary_scale = check_choice("ternary_scale", ternary_scale, ("group", "tensor"))
        if group_size is not None and check_int("group_size", group_size, 1) != mm.group_size:
            raise ValueError(f"group_size must equal the engine's group_size ({mm.group_size}), which applies "
                             f"one scale per {mm.group_size} K elements; got {group_size}")
        check_int("workspace_bytes", workspace_bytes, 1)
        w = real_array("weights", w, ndim=(2,), what="2-D [out_features, in_features]")
        n, k = w.shape
        if n == 0 or k == 0:
            raise ValueError(f"weights must be [out_features, in_features] with both >= 1, got shape {w.shape}")
        if group_size is not None and k % group_size:
            raise ValueError(f"group_size {group_size} must divide in_features K = {k} (omit group_size to "
                             f"zero-pad K to a multiple of {lay.matmul.k_align})")
        kp = _check_k(k, lay)
        if bias is not None:
            _check_bias(bias, n)
        weight_code(fmt, lay, sparse24=sparse24, name="bits")
        if sparse24:                          # groups of 4 from element 0; K padded with zeros to a multiple of 4
            w4 = np.zeros((n, -(-k // 4) * 4))
            w4[:, :k] = w
            w = prune_2_4(w4)[:, :k]
        enc = quantize_weights_encoded(w, fmt, mm.group_size, mm.scale_bits, k_padded=kp,
                                       ternary_scale=ternary_scale)
        return cls(device, enc.q, enc.mantissas, enc.row_scale, bits=fmt, in_features=k, bias=bias,
                   workspace_bytes=workspace_bytes, weight_memory=weight_memory, sparse24=sparse24)

    @classmethod
    def from_quantized(cls, weight_q, mantissas, row_scale=None, *, bits, device: Device, bias=None,
                       workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, weight_memory: str | None = None,
                       sparse24: bool = False) -> "Linear":
        """Upload given integers: weights [N, K] (``bits`` 2, 4, 8: signed; "ternary": -1/0/+1),
        mantissas [N, ceil(K/G)] (unsigned ``scale_bits``), ``row_scale`` [N] finite floats > 0
        (default 1); ``bias``: optional float [N] (output units). ``sparse24``: the weights are
        2:4 sparse (checked) and are stored 2:4 packed."""
        device = check_device(device)
        lay = device.layout
        fmt = engine_format(bits, lay, "bits")
        wq = int_array("weight_q", weight_q, *storage_range(fmt), ndim=(2,),
                       what="a non-empty 2-D integer array [N, K]")
        if 0 in wq.shape:
            raise ValueError(f"weight_q must be a non-empty 2-D integer array [N, K], got shape {wq.shape}")
        n, k = wq.shape
        kp = _check_k(k, lay)
        g = lay.mm.group_size
        groups = -(-k // g)
        mant = int_array("mantissas", mantissas, 0, (1 << lay.mm.scale_bits) - 1,
                         what=f"an integer array of shape [N, ceil(K/G)] = {(n, groups)}")
        if mant.shape != (n, groups):
            raise ValueError(f"mantissas must be an integer array of shape [N, ceil(K/G)] = {(n, groups)}, "
                             f"got {mant.shape}")
        q = np.zeros((n, kp), dtype=np.int8)
        q[:, :k] = wq
        m_full = np.zeros((n, kp // g), dtype=np.uint16)
        m_full[:, :groups] = mant
        rs = np.ones(n) if row_scale is None else row_scale
        return cls(device, q, m_full, rs, bits=fmt, in_features=k, bias=bias, workspace_bytes=workspace_bytes,
                   weight_memory=weight_memory, sparse24=sparse24)

    # -- properties --------------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self._dev

    @property
    def weight_buffers(self) -> tuple:
        """The weight stripes' buffers (one per weight port; ``weight_memory`` says where)."""
        return tuple(self._w_bufs)

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
    def sparse24(self) -> bool:
        """True if the weights are stored 2:4 sparse (descriptor ``wbits | SPARSE24``)."""
        return bool(self._code & SPARSE24)

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

    @property
    def bias(self) -> np.ndarray | None:
        """float64 [N] or None."""
        return None if self._bias is None else self._bias.copy()

    @property
    def closed(self) -> bool:
        return not self._w_bufs

    def dequantized_weight(self) -> np.ndarray:
        """float64 [N, in_features]: what the device effectively multiplies by."""
        s = np.repeat(self._mant.astype(np.float64), self.group_size, axis=1)
        return scale_product(self._q * s, self._row_scale[:, None])[:, :self._k]

    # -- integer interface -------------------------------------------------------------
    def acc_bound(self, xq, bias=None) -> int:
        """An upper bound of |acc| over all outputs for these int8 activations (and an integer
        ``bias=(values, shift)``)."""
        xq = self._int_input(xq)
        bound = int(np.abs(xq.astype(np.int64)).max()) * self._max_col_l1
        if bias is not None:
            values, shift = bias
            bound += int(np.abs(np.asarray(values, dtype=np.int64)).max()) << int(shift)
        return bound

    def _int_input(self, xq) -> np.ndarray:
        top = 1 << (self._lay.matmul.widths.act_bits - 1)
        xq = int_array("xq", xq, -top, top - 1, ndim=(2,), what="an int8-valued integer array")
        if xq.shape[0] == 0 or xq.shape[1] not in (self._k, self._kp):
            raise ValueError(f"xq must be [M >= 1, {self._k}] (or [M, {self._kp}] padded), got shape {xq.shape}")
        out = np.zeros((xq.shape[0], self._kp), dtype=np.int8)
        out[:, :xq.shape[1]] = xq
        return out

    def _requant(self, requant) -> tuple[np.ndarray, np.ndarray]:
        """``requant=(mult, shift)``: int32 multipliers and shifts in [0, 127], one per column."""
        if not isinstance(requant, (tuple, list)) or len(requant) != 2:
            raise TypeError(f"requant must be a pair (mult, shift) of {self._n}-entry integer arrays, "
                            f"got {type(requant).__name__}")
        widths = self._lay.matmul.widths
        mult = int_array("requant mult", requant[0], -(1 << (widths.mult_bits - 1)),
                         (1 << (widths.mult_bits - 1)) - 1).reshape(-1)
        shift = int_array("requant shift", requant[1], 0, widths.max_requant_shift).reshape(-1)
        if mult.shape != (self._n,) or shift.shape != (self._n,):
            raise ValueError(f"requant mult and shift must each have {self._n} entries (one per column), "
                             f"got {mult.size} and {shift.size}")
        return mult, shift

    def _out_shift(self, xq: np.ndarray, out_shift, bias=None) -> int:
        if out_shift is None:
            return self.out_shift_for(xq, bias)
        return check_int("out_shift", out_shift, 0, self._lay.matmul.widths.max_out_shift)

    def out_shift_for(self, xq, bias=None) -> int:
        """The smallest INT32-mode shift that cannot saturate for these int8 inputs (and bias)."""
        return choose_out_shift(self.acc_bound(xq, bias), self._lay.matmul.widths.max_out_shift)

    def int_bias(self, act_scale: float):
        """The layer's float bias as the device adds it for per-tensor activations of scale
        ``act_scale``: ``(values, shift)``, values int32 in accumulator units ``2^shift``."""
        if self._bias is None:
            return None
        act_scale = check_positive("act_scale", act_scale)
        with np.errstate(over="ignore", divide="ignore"):
            units = self._bias / (act_scale * self._row_scale)
        top = float(np.abs(units).max())
        widths = self._lay.matmul.widths
        shift = 0
        while shift <= widths.max_bias_shift and top / 2.0 ** shift >= (1 << 31) - 0.5:
            shift += 1
        if shift > widths.max_bias_shift or not np.all(np.isfinite(units)):
            raise ValueError(f"the bias (up to {float(np.abs(self._bias).max()):.3g}) is too large for these "
                             f"activations and weights: {top:.3g} accumulator units needs more than "
                             f"int32 << {widths.max_bias_shift}")
        return np.rint(units / 2.0 ** shift).astype(np.int64), shift

    def dequantize_int32(self, yi, out_shift: int, act_scale) -> np.ndarray:
        """float64 ``x @ w.T`` from INT32 device output: ``y * 2^out_shift * x_scale[m] * row_scale[n]``,
        rounded once (no intermediate overflow)."""
        yi = int_array("yi", yi, -(1 << 31), INT32_MAX, shape=(None, self._n))
        out_shift = check_int("out_shift", out_shift, 0, self._lay.matmul.widths.max_out_shift)
        act = real_array("act_scale", act_scale, ndim=(1,), what=f"[{yi.shape[0]}] floats > 0")
        if act.shape != (yi.shape[0],) or not np.all(act > 0):
            raise ValueError(f"act_scale must be {yi.shape[0]} finite floats > 0 (one per row), got shape {act.shape}")
        return scale_product(yi, act[:, None], self._row_scale[None, :], exp=out_shift)

    def _int_bias(self, bias):
        """``bias=(values, shift)``: int32 per column, 0 <= shift <= max_bias_shift (or None)."""
        if bias is None:
            return None
        if not isinstance(bias, (tuple, list)) or len(bias) != 2:
            raise TypeError(f"bias must be a pair (values, shift): {self._n} int32 values and a shift, "
                            f"got {type(bias).__name__}")
        values = int_array("bias values", bias[0], -(1 << 31), (1 << 31) - 1).reshape(-1)
        if values.shape != (self._n,):
            raise ValueError(f"bias values must have {self._n} entries (one per column), got {values.size}")
        shift = check_int("bias shift", bias[1], 0, self._lay.matmul.widths.max_bias_shift)
        return values, shift

    def forward_int(self, xq, *, out_shift: int | None = None, requant=None, bias=None,
                    timeout: float = 60.0) -> np.ndarray:
        """Raw device output for int8 ``xq`` [M, K]: int32 (``out_shift``, default: the
        smallest that cannot saturate) or, with ``requant=(mult, shift)`` per column, int8;
        ``bias=(values, shift)`` adds ``values[n] << shift`` (int32 per column) on the device."""
        timeout = check_timeout(timeout)
        self._check_open()
        xq = self._int_input(xq)
        ib = self._int_bias(bias)
        if requant is not None:
            if out_shift is not None:
                raise ValueError("give out_shift (int32 outputs) or requant (int8 outputs), not both")
            mult, shift = self._requant(requant)
            return self._run(xq, OutMode.INT8, 0, self._pack_requant(mult, shift), timeout, ib)
        return self._run(xq, OutMode.INT32, self._out_shift(xq, out_shift, ib), None, timeout, ib)

    def golden_int(self, xq, *, out_shift: int | None = None, requant=None, bias=None) -> np.ndarray:
        """What :meth:`forward_int` must return, from the numerics golden model."""
        xq = self._int_input(xq)
        g = self.group_size
        ib = self._int_bias(bias)
        kw = {} if ib is None else {"bias": ib[0], "bias_shift": ib[1]}
        if requant is not None:
            mult, shift = self._requant(requant)
            return matmul_int8(xq, self._q, self._mant, g, mult, shift, **kw)
        return matmul_int32(xq, self._q, self._mant, g, self._out_shift(xq, out_shift, ib), **kw)

    # -- float interface ---------------------------------------------------------------
    def __call__(self, x, *, out_scale: float | None = None, act_scale: float | None = None,
                 timeout: float = 60.0) -> np.ndarray:
        """float32 ``x @ w.T`` for x [M, K] or [K].

        Default: per-token int8 activations, int32 device output. With
        ``out_scale``: per-tensor activations (``act_scale``, default from x),
        int8 device output ``y8 ~= y / out_scale`` via a dyadic multiplier per
        column; returns ``y8 * out_scale``.
        """
        timeout = check_timeout(timeout)
        if out_scale is not None:
            out_scale = check_positive("out_scale", out_scale)
            y8 = self.forward_int8(x, out_scale=out_scale, act_scale=act_scale, timeout=timeout)
            with np.errstate(over="ignore"):
                return _to_float32(y8.astype(np.float64) * out_scale)
        if act_scale is not None:
            raise ValueError("act_scale applies to int8 outputs only: give out_scale too (or leave act_scale out)")
        self._check_open()
        x2, squeeze = self._as_rows(x)
        aq = quantize_activations_per_token(x2)
        shift = self.out_shift_for(aq.q)
        yi = self._run(self._int_input(aq.q), OutMode.INT32, shift, None, timeout)
        y = self.dequantize_int32(yi, shift, aq.scale)
        if self._bias is not None:                  # per-token scales: the bias joins in float64
            y = y + self._bias[None, :]
        y = _to_float32(y)
        return y[0] if squeeze else y

    def forward_int8(self, x, *, out_scale: float, act_scale: float | None = None,
                     timeout: float = 60.0) -> np.ndarray:
        """int8 device output ``round(x @ w.T / out_scale)`` (saturating), [M, N]."""
        timeout = check_timeout(timeout)
        out_scale = check_positive("out_scale", out_scale)
        if act_scale is not None:
            act_scale = check_positive("act_scale", act_scale)
        self._check_open()
        x2, squeeze = self._as_rows(x)
        with np.errstate(over="ignore"):           # x / act_scale beyond int8 saturates, as intended
            aq = quantize_activations_per_tensor(x2, act_scale)
        real = scale_product(self._row_scale, aq.scale[0], divisors=(out_scale,))
        widths = self._lay.matmul.widths
        try:
            mult, shift = dyadic_multiplier(real, widths.mult_bits, widths.max_requant_shift)
        except ValueError as err:
            raise ValueError(f"out_scale {out_scale!r} is too small for these activations and weights "
                             f"({err}); give a larger out_scale") from None
        ib = self.int_bias(float(aq.scale[0]))
        y8 = self._run(self._int_input(aq.q), OutMode.INT8, 0, self._pack_requant(mult, shift), timeout, ib)
        return y8[0] if squeeze else y8

    def _as_rows(self, x) -> tuple[np.ndarray, bool]:
        x = real_array("x", x, ndim=(1, 2), what=f"[M >= 1, in_features={self._k}] or [{self._k}]")
        squeeze = x.ndim == 1
        x2 = x[None, :] if squeeze else x
        if x2.shape[1] != self._k or x2.shape[0] == 0:
            raise ValueError(f"x must be [M >= 1, in_features={self._k}] or [{self._k}], got shape {x.shape}")
        return x2, squeeze

    # -- running -----------------------------------------------------------------------
    def rows_per_run(self, out_mode: int = OutMode.INT32) -> int:
        """Rows of X one run handles: X, Y (and, for K above one pass, the partial-sum scratch)
        together fit ``workspace_bytes`` (whole row blocks), and each fits one DMA transfer."""
        geom, rows = self._lay.matmul, self._lay.mm.rows
        x_block, y_block = geom.act_bytes(rows, self._kp), geom.out_bytes(rows, self._n_dev, out_mode)
        p_block = geom.round_words(rows * self._n_dev * 8) if geom.slices(self._kp) > 1 else 0
        by_dma = min(_U32 // x_block, _U32 // y_block)
        return rows * max(1, min(self._workspace_bytes // (x_block + y_block + p_block), by_dma))

    def _check_open(self) -> None:
        if not self._w_bufs:
            raise ValueError("this Linear was closed; its weights are no longer on the device")
        self._dev._check_open()

    def _run(self, xq: np.ndarray, out_mode: int, out_shift: int, requant: np.ndarray | None,
             timeout: float, bias=None) -> np.ndarray:
        """Run ``xq`` (int8, K padded) in blocks of rows. Every descriptor is built and every
        buffer reserved before the first write. ``bias``: ``(int32 values, shift)`` or None."""
        self._check_open()
        dev, lay, geom = self._dev, self._lay, self._lay.matmul
        m_total = xq.shape[0]
        chunk = min(self.rows_per_run(out_mode), m_total)
        n_dev = self._n_dev
        sizes = {"x": geom.act_bytes(chunk, self._kp), "y": geom.out_bytes(chunk, n_dev, out_mode),
                 "program": lay.descriptor_bytes}
        if requant is not None:
            sizes["q"] = requant.nbytes
        if bias is not None:
            packed_bias = pack_bias(self._pad_rows(bias[0]), lay)
            sizes["b"] = packed_bias.nbytes
        if geom.slices(self._kp) > 1:
            sizes["p"] = geom.partial_bytes(chunk, n_dev, self._kp, out_mode)
        # validate one descriptor of each shape before any allocation or write
        starts = range(0, m_total, chunk)
        shapes = sorted({min(chunk, m_total - r0) for r0 in starts})
        bshift = 0 if bias is None else bias[1]
        for m in shapes:
            self._program(m, out_mode, out_shift, sizes, bshift)
        bufs = self._work.reserve(sizes)
        if requant is not None:
            dev.write(bufs["q"], requant)
        if bias is not None:
            dev.write(bufs["b"], packed_bias)
        dtype = np.int32 if out_mode == OutMode.INT32 else np.int8
        out = np.empty((m_total, self._n), dtype=dtype)
        info = LinearRun(out_mode="int32" if out_mode == OutMode.INT32 else "int8",
                         out_shift=out_shift if out_mode == OutMode.INT32 else None)
        started = time.monotonic()
        for r0 in starts:
            m = min(chunk, m_total - r0)
            prog = self._program(m, out_mode, out_shift, bufs, bshift)
            dev.write(bufs["x"], pack_activations(xq[r0:r0 + m], lay))
            dev.write(bufs["program"], prog.to_bytes())
            status = dev.run(bufs["program"], 1, timeout=timeout)
            raw = np.frombuffer(dev.read(bufs["y"], geom.out_bytes(m, n_dev, out_mode)), dtype=np.uint8)
            out[r0:r0 + m] = unpack_output(raw, m, n_dev, out_mode, lay)[:, :self._n]
            info.runs += 1
            info.rows += m
            info.cycles += status.cycles
            info.counters = merge_counters(info.counters, dev.counters())
        info.elapsed_s = time.monotonic() - started
        c = info.counters
        c["mac_utilization"] = c["mac_ops"] / (c["cycles"] * geom.macs_per_cycle) if c["cycles"] else 0.0
        self.last_run = info
        return out

    def _pad_rows(self, a: np.ndarray) -> np.ndarray:
        """``a`` (one entry or row per output column) with the device's extra zero column, if any."""
        extra = self._n_dev - self._n
        return a if not extra else np.concatenate([a, np.zeros((extra,) + a.shape[1:], dtype=a.dtype)])

    def _pack_requant(self, mult, shift) -> np.ndarray:
        return pack_requant(self._pad_rows(np.asarray(mult)), self._pad_rows(np.asarray(shift)), self._lay)

    def _program(self, m: int, out_mode: int, out_shift: int, targets: dict, bias_shift: int = 0) -> ProgramBuilder:
        """The one-descriptor program of ``m`` rows; ``targets`` holds Buffers or byte sizes."""
        addr = {name: (t if isinstance(t, Buffer) else 0) for name, t in targets.items()}
        prog = ProgramBuilder(self._dev)
        prog.matmul(m=m, k=self._kp, n=self._n_dev, wbits=self._code, x=addr["x"], s=self._s_buf, y=addr["y"],
                    w=self._w_bufs, out_mode=out_mode, out_shift=out_shift, q=addr.get("q"), bias=addr.get("b"),
                    bias_shift=bias_shift, p=addr.get("p"))
        return prog

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Free the layer's device buffers (weights, scales, workspace)."""
        if not self._dev.closed:
            for buf in [*self._w_bufs, self._s_buf]:
                if buf is not None and not buf.freed:
                    self._dev.free(buf)
        self._work.close()
        self._w_bufs, self._s_buf = [], None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"Linear(in_features={self._k}, out_features={self._n}, bits={self._bits}, "
                f"group_size={self.group_size}, bias={self._bias is not None}, device={self._dev.backend})")
