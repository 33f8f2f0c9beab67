"""Bit-exact golden models of the transformer non-linear units (GELU, SiLU, RMSNorm, LayerNorm).

Every function here mirrors one RTL unit in :mod:`hbmforge.generators.nonlinear` step for
step (same integer widths, same rounding); the float64 references and the ``measure_*``
functions bound the approximation error. Formats and algorithms: docs/engines/nonlinear.md.

Fixed-point conventions: a value ``q`` with ``F`` fraction bits means ``q * 2**-F``;
``rshift_round(v, s) = (v + 2**(s-1)) >> s`` (arithmetic, round half up).

**GELU / SiLU** (``x * Phi(x)`` and ``x * sigmoid(x)``): both gates satisfy
``g(x) + g(-x) = 1``, so with ``a = |x|`` and the *tail* ``t(a) = a * g(-a)``
(``t >= 0``, ``t -> 0`` quickly)::

    act(x) = x - t(a)   (x >= 0)          act(x) = -t(a)   (x < 0)

``t`` is a piecewise-linear table over ``[0, table_range)`` with ``2**seg_bits``
segments per unit, values with ``F + GUARD_BITS`` fraction bits::

    i = a >> (F - S);  r = a mod 2**(F - S)
    tq = c0[i] + rshift_round(c1[i] * r, F - S)      (i < N;  tq = tail for i >= N)
    y  = rshift_round((x << GUARD_BITS) - tq, GUARD_BITS)   (x >= 0)
    y  = rshift_round(-tq, GUARD_BITS)                      (x < 0)

with ``c0[i] = T[i]``, ``c1[i] = T[i+1] - T[i]``, ``T[k] = round(t(k * 2**-S) * 2**(F+G))``.

**RMSNorm / LayerNorm** over a vector ``x[0..D)`` (LayerNorm: ``center=True``)::

    S1 = sum(x) (0 for RMSNorm);  S2 = sum(x*x)
    V  = (D*S2 - S1*S1) << 2E  +  eps_q,      eps_q = round(D*D*eps * 2**(2F+2E))
    (M, e) = rsqrt_int(V)                     1/sqrt(V) ~= M * 2**-(MF + e)
    num[i] = D*x[i] - S1
    y[i] = sat(rshift_round((num[i] * M * gamma[i]) << L, sh + L) + beta[i], out_width)
    sh = MF + GF - FO - E + e

``(D*x - S1) / sqrt(D*S2 - S1^2 + D^2 eps)`` is exactly ``(x - mean) / sqrt(var + eps)``, so
the mean and the variance are never rounded; only ``1/sqrt`` and the output are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .fixed import rshift_round, saturate

__all__ = [
    "GUARD_BITS", "RSQRT_REL_BOUND", "ActivationSpec", "RsqrtSpec", "NormSpec",
    "gelu_int", "silu_int", "gelu_ref", "silu_ref", "activation_int",
    "rsqrt_int", "rmsnorm_int", "layernorm_int", "norm_int", "norm_scalars", "norm_test_vectors", "rmsnorm_ref", "layernorm_ref",
    "measure_gelu_error", "measure_silu_error", "measure_rmsnorm_error", "measure_layernorm_error",
]

GUARD_BITS = 4          # extra fraction bits of the GELU/SiLU tail tables


# -- input checks ---------------------------------------------------------------------------------

def _check_int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def _int_array(name: str, x, bits: int, *, signed: bool = True) -> np.ndarray:
    """``x`` as an int64 array, refusing floats (incl. NaN/Inf), bools, objects and out-of-range values."""
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{name} must hold integers, got a bool")
    arr = np.asarray(x)
    if arr.dtype == object:
        try:
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr.flat):
                raise TypeError
            arr = arr.astype(np.int64)
        except (TypeError, OverflowError):
            raise ValueError(f"{name} must hold integers that fit int64") from None
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or Inf; the golden models take integers")
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        raise ValueError(f"{name} value {bad} does not fit {'signed' if signed else 'unsigned'} {bits} bits")
    return arr


def _float_array(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _rsr64(v: np.ndarray, s: int) -> np.ndarray:
    """rshift_round on int64 arrays (caller guarantees no overflow)."""
    return v if s == 0 else (v + (1 << (s - 1))) >> s


# -- GELU / SiLU -----------------------------------------------------------------------------------

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _gelu_tail(a: np.ndarray) -> np.ndarray:          # a * Q(a), Q = 1 - Phi
    return a * 0.5 * _erfc(a / math.sqrt(2.0))


def _silu_tail(a: np.ndarray) -> np.ndarray:          # a * sigmoid(-a)
    with np.errstate(over="ignore"):
        return a / (1.0 + np.exp(a))


_TAILS = {"gelu": (_gelu_tail, 8), "silu": (_silu_tail, 16)}   # tail, table range (t < 2**-20 beyond)


@dataclass(frozen=True)
class ActivationSpec:
    """Format and table of a GELU/SiLU unit: signed ``width``-bit input and output with ``frac_bits``
    fraction bits; the tail table has ``2**seg_bits`` linear segments per unit of ``|x|``."""

    function: str = "gelu"
    width: int = 16
    frac_bits: int = 10
    seg_bits: int = 4
    c0: tuple = field(init=False, repr=False, compare=False)
    c1: tuple = field(init=False, repr=False, compare=False)
    tail: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.function not in _TAILS:
            raise ValueError(f"function must be one of {sorted(_TAILS)}, got {self.function!r}")
        _check_int("width", self.width, 4, 32)
        _check_int("frac_bits", self.frac_bits, 1, self.width - 2)
        _check_int("seg_bits", self.seg_bits, 0, min(8, self.frac_bits))
        fn, rng = _TAILS[self.function]
        n = min(rng, 1 << self.int_bits) << self.seg_bits
        knots = np.arange(n + 1, dtype=np.float64) * 2.0 ** -self.seg_bits
        t = np.round(fn(knots) * 2.0 ** self.table_frac_bits).astype(np.int64)
        object.__setattr__(self, "c0", tuple(int(v) for v in t[:-1]))
        object.__setattr__(self, "c1", tuple(int(v) for v in np.diff(t)))
        object.__setattr__(self, "tail", int(t[-1]))

    @property
    def int_bits(self) -> int:
        """Integer bits of ``|x|``: inputs cover ``[-2**int_bits, 2**int_bits)``."""
        return self.width - 1 - self.frac_bits

    @property
    def table_frac_bits(self) -> int:
        return self.frac_bits + GUARD_BITS

    @property
    def segments(self) -> int:
        return len(self.c0)

    @property
    def c0_bits(self) -> int:
        return max(int(v).bit_length() for v in self.c0 + (self.tail,)) + 1

    @property
    def c1_bits(self) -> int:
        return max(max(abs(int(v)) for v in self.c1).bit_length() + 1, 2)


def activation_int(x, spec: ActivationSpec) -> np.ndarray:
    """The bit-exact GELU/SiLU unit output for integer inputs ``x`` (any shape) in ``spec``'s format."""
    if not isinstance(spec, ActivationSpec):
        raise TypeError(f"spec must be an ActivationSpec, got {spec!r}")
    x = _int_array("x", x, spec.width)
    F, S, G = spec.frac_bits, spec.seg_bits, GUARD_BITS
    a = np.abs(x)
    i = a >> (F - S)
    r = a & ((1 << (F - S)) - 1)
    inside = i < spec.segments
    ic = np.where(inside, i, 0)
    c0 = np.asarray(spec.c0, dtype=np.int64)[ic]
    c1 = np.asarray(spec.c1, dtype=np.int64)[ic]
    tq = np.where(inside, c0 + _rsr64(c1 * r, F - S), spec.tail)
    y = np.where(x >= 0, _rsr64((x << G) - tq, G), _rsr64(-tq, G))
    return y.astype(np.int64)


def gelu_int(x, *, width: int = 16, frac_bits: int = 10, seg_bits: int = 4) -> np.ndarray:
    """GELU of fixed-point ``x`` (signed ``width`` bits, ``frac_bits`` fraction bits), same format out."""
    return activation_int(x, ActivationSpec("gelu", width, frac_bits, seg_bits))


def silu_int(x, *, width: int = 16, frac_bits: int = 10, seg_bits: int = 4) -> np.ndarray:
    """SiLU (``x * sigmoid(x)``) of fixed-point ``x``; same format in and out."""
    return activation_int(x, ActivationSpec("silu", width, frac_bits, seg_bits))


def gelu_ref(x) -> np.ndarray:
    """float64 GELU with the exact erf: ``0.5 * x * (1 + erf(x / sqrt 2))``."""
    x = _float_array("x", x)
    return np.where(x >= 0, x - _gelu_tail(np.abs(x)), -_gelu_tail(np.abs(x)))


def silu_ref(x) -> np.ndarray:
    """float64 SiLU ``x / (1 + exp(-x))``."""
    x = _float_array("x", x)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def _measure_activation(spec: ActivationSpec, ref, lo: float, hi: float) -> dict:
    lo_q = max(math.ceil(lo * 2 ** spec.frac_bits), -(1 << (spec.width - 1)))
    hi_q = min(math.floor(hi * 2 ** spec.frac_bits), (1 << (spec.width - 1)) - 1)
    x = np.arange(lo_q, hi_q + 1, dtype=np.int64)
    xf = x * 2.0 ** -spec.frac_bits
    y = activation_int(x, spec) * 2.0 ** -spec.frac_bits
    err = np.abs(y - ref(xf))
    k = int(np.argmax(err))
    return {"function": spec.function, "width": spec.width, "frac_bits": spec.frac_bits,
            "seg_bits": spec.seg_bits, "segments": spec.segments, "range": [float(xf[0]), float(xf[-1])],
            "n": int(x.size), "max_abs_err": float(err[k]), "max_abs_err_lsb": float(err[k] * 2 ** spec.frac_bits),
            "mean_abs_err": float(err.mean()), "worst_input": float(xf[k])}


def measure_gelu_error(*, width: int = 16, frac_bits: int = 10, seg_bits: int = 4,
                       lo: float = -8.0, hi: float = 8.0) -> dict:
    """Exhaustive error of :func:`gelu_int` against :func:`gelu_ref` over every representable input in
    ``[lo, hi]``: ``{"max_abs_err", "max_abs_err_lsb", "mean_abs_err", "worst_input", "n", ...}``."""
    return _measure_activation(ActivationSpec("gelu", width, frac_bits, seg_bits), gelu_ref, lo, hi)


def measure_silu_error(*, width: int = 16, frac_bits: int = 10, seg_bits: int = 4,
                       lo: float = -8.0, hi: float = 8.0) -> dict:
    """Exhaustive error of :func:`silu_int` against :func:`silu_ref` (see :func:`measure_gelu_error`)."""
    return _measure_activation(ActivationSpec("silu", width, frac_bits, seg_bits), silu_ref, lo, hi)


# -- reciprocal square root ------------------------------------------------------------------------

@dataclass(frozen=True)
class RsqrtSpec:
    """Integer ``1/sqrt(v)`` for unsigned ``in_bits``-bit ``v >= 1``: ``M * 2**-(frac_bits + e)``.

    ``e = (bitlen(v) - 1) // 2``; ``u = v / 4**e`` in ``[1, 4)`` is kept with ``frac_bits + 2``
    fraction bits (truncated); a seed table of ``3 * 2**seed_bits`` entries indexed by the top
    bits of ``u`` is refined by ``iterations`` Newton steps ``y <- y * (3 - u*y*y) / 2``.
    """

    in_bits: int
    frac_bits: int = 18
    iterations: int = 2
    seed_bits: int = 5
    seeds: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_int("in_bits", self.in_bits, 1, 128)
        _check_int("frac_bits", self.frac_bits, 4, 30)
        _check_int("iterations", self.iterations, 0, 4)
        _check_int("seed_bits", self.seed_bits, 1, min(8, self.frac_bits))
        n = 3 << self.seed_bits
        mid = 1.0 + (np.arange(n) + 0.5) * 2.0 ** -self.seed_bits
        object.__setattr__(self, "seeds", tuple(int(v) for v in np.round(2.0 ** self.frac_bits / np.sqrt(mid))))

    @property
    def u_frac_bits(self) -> int:
        return self.frac_bits + 2

    @property
    def exp_max(self) -> int:
        return (self.in_bits - 1) // 2

    @property
    def mant_bits(self) -> int:
        """Unsigned width of the mantissa ``M`` (``M <= 2**frac_bits`` up to rounding)."""
        return self.frac_bits + 1


def _rsqrt_scalar(v: int, spec: RsqrtSpec) -> tuple[int, int]:
    MF, UF, SB = spec.frac_bits, spec.u_frac_bits, spec.seed_bits
    e = (v.bit_length() - 1) // 2
    u = (v << UF) >> (2 * e)
    y = spec.seeds[(u >> (UF - SB)) - (1 << SB)]
    for _ in range(spec.iterations):
        y2 = (y * y + (1 << (MF - 1))) >> MF
        uy2 = (u * y2 + (1 << (UF - 1))) >> UF
        y = (y * ((3 << MF) - uy2) + (1 << MF)) >> (MF + 1)
    return y, e


def rsqrt_int(v, spec: RsqrtSpec):
    """``(M, e)`` with ``1/sqrt(v) ~= M * 2**-(spec.frac_bits + e)`` for unsigned integers ``1 <= v``.

    Scalars give a tuple of ints, arrays a tuple of object arrays of the same shape.
    """
    if not isinstance(spec, RsqrtSpec):
        raise TypeError(f"spec must be a RsqrtSpec, got {spec!r}")
    arr = np.asarray(v)
    if arr.dtype.kind == "f":
        raise ValueError("v must hold integers" + ("" if np.all(np.isfinite(arr)) else " (got NaN or Inf)"))
    if arr.dtype.kind not in "iuO":
        raise ValueError(f"v must be an integer array, got dtype {arr.dtype}")
    flat = [int(t) for t in arr.reshape(-1)]
    for t in flat:
        if not 1 <= t < (1 << spec.in_bits):
            raise ValueError(f"v value {t} is outside [1, 2**{spec.in_bits})")
    out = [_rsqrt_scalar(t, spec) for t in flat]
    if arr.ndim == 0:
        return out[0]
    m = np.empty(len(out), dtype=object)
    e = np.empty(len(out), dtype=object)
    m[:] = [o[0] for o in out]
    e[:] = [o[1] for o in out]
    return m.reshape(arr.shape), e.reshape(arr.shape)


# -- RMSNorm / LayerNorm ---------------------------------------------------------------------------

RSQRT_REL_BOUND = 2.0 ** -16   # |rsqrt_int relative error| bound for the default 18 fraction bits
_MIN_EPS_BITS = 20      # E is chosen so that eps_q >= 2**20 (eps keeps >= 20 significant bits)


@dataclass(frozen=True)
class NormSpec:
    """Formats and derived constants of an RMSNorm (``center=False``) or LayerNorm unit.

    Input ``x``: signed ``width`` bits, ``frac_bits`` fraction bits. ``gamma``: signed
    ``gamma_width`` bits, ``gamma_frac_bits``. Output and ``beta``: signed ``out_width`` bits,
    ``out_frac_bits``. ``rsqrt_bits`` = fraction bits ``MF`` of the reciprocal square root.
    """

    dim: int
    eps: float = 1e-5
    center: bool = False
    width: int = 16
    frac_bits: int = 10
    gamma_width: int = 16
    gamma_frac_bits: int = 12
    out_width: int = 16
    out_frac_bits: int = 10
    rsqrt_bits: int = 18

    def __post_init__(self):
        _check_int("dim", self.dim, 1, 1 << 16)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float, np.floating, np.integer)):
            raise TypeError(f"eps must be a number, got {self.eps!r}")
        if not math.isfinite(self.eps) or not 0 < self.eps <= 1:
            raise ValueError(f"eps must be finite and in (0, 1], got {self.eps}")
        if not isinstance(self.center, (bool, np.bool_)):
            raise TypeError(f"center must be a bool, got {self.center!r}")
        _check_int("width", self.width, 2, 32)
        _check_int("frac_bits", self.frac_bits, 0, self.width - 1)
        _check_int("gamma_width", self.gamma_width, 2, 32)
        _check_int("gamma_frac_bits", self.gamma_frac_bits, 0, self.gamma_width - 1)
        _check_int("out_width", self.out_width, 2, 32)
        _check_int("out_frac_bits", self.out_frac_bits, 0, self.out_width - 1)
        _check_int("rsqrt_bits", self.rsqrt_bits, 8, 30)

    # derived constants (all exact integers)
    @property
    def eps_bits(self) -> int:
        """``E``: ``V`` carries ``2E`` extra fraction bits so that ``eps_q >= 2**20``."""
        base = self.dim * self.dim * self.eps * 2.0 ** (2 * self.frac_bits)
        return max(0, math.ceil((_MIN_EPS_BITS - math.log2(base)) / 2))

    @property
    def eps_q(self) -> int:
        return max(1, round(self.dim * self.dim * self.eps * 2.0 ** (2 * (self.frac_bits + self.eps_bits))))

    @property
    def sum_bits(self) -> int:
        """Signed width of ``S1 = sum(x)``."""
        return self.width + max(self.dim - 1, 1).bit_length()

    @property
    def sumsq_bits(self) -> int:
        """Unsigned width of ``S2 = sum(x*x)``."""
        return (self.dim << (2 * self.width - 2)).bit_length()

    @property
    def var_bits(self) -> int:
        """Unsigned width of ``V`` (the input of the reciprocal square root)."""
        vmax = (self.dim * (self.dim << (2 * self.width - 2)) << (2 * self.eps_bits)) + self.eps_q
        return vmax.bit_length()

    @property
    def num_bits(self) -> int:
        """Signed width of ``num = D*x - S1``."""
        hi = self.dim * ((1 << (self.width - 1)) - 1) + (self.dim << (self.width - 1) if self.center else 0)
        return hi.bit_length() + 1

    @property
    def rsqrt(self) -> RsqrtSpec:
        return RsqrtSpec(self.var_bits, self.rsqrt_bits)

    @property
    def shift_base(self) -> int:
        """``sh = shift_base + e``, before the ``L`` pre-shift."""
        return self.rsqrt_bits + self.gamma_frac_bits - self.out_frac_bits - self.eps_bits

    @property
    def pre_shift(self) -> int:
        """``L``: the product is shifted left by ``L`` so that the rounding shift is always >= 1."""
        return max(0, 1 - self.shift_base)

    @property
    def product_bits(self) -> int:
        """Signed width of ``num * M * gamma``."""
        return self.num_bits + self.rsqrt.mant_bits + 1 + self.gamma_width


def _norm_check(x, gamma, beta, spec: NormSpec):
    if not isinstance(spec, NormSpec):
        raise TypeError(f"spec must be a NormSpec, got {spec!r}")
    x = _int_array("x", x, spec.width)
    if x.ndim == 0 or x.shape[-1] != spec.dim:
        raise ValueError(f"x must have shape [..., {spec.dim}], got {x.shape}")
    gamma = _int_array("gamma", gamma, spec.gamma_width)
    if gamma.shape != (spec.dim,):
        raise ValueError(f"gamma must have shape ({spec.dim},), got {gamma.shape}")
    if beta is None:
        beta = np.zeros(spec.dim, dtype=np.int64)
    else:
        if not spec.center:
            raise ValueError("beta is a LayerNorm parameter; RMSNorm takes none")
        beta = _int_array("beta", beta, spec.out_width)
        if beta.shape != (spec.dim,):
            raise ValueError(f"beta must have shape ({spec.dim},), got {beta.shape}")
    return x, gamma, beta


def norm_scalars(x_vec: np.ndarray, spec: NormSpec) -> tuple[int, int, int, int]:
    """Per-vector ``(S1, V, M, e)`` of one int64 vector (see the module docstring)."""
    D = spec.dim
    s1 = int(x_vec.sum()) if spec.center else 0
    s2 = int((x_vec.astype(object) ** 2).sum())
    v = ((D * s2 - s1 * s1) << (2 * spec.eps_bits)) + spec.eps_q
    m, e = _rsqrt_scalar(v, spec.rsqrt)
    return s1, v, m, e


def norm_int(x, gamma, beta, spec: NormSpec) -> np.ndarray:
    """Bit-exact RMSNorm/LayerNorm output (int64, ``spec.out_width`` bits) of ``x [..., dim]``."""
    x, gamma, beta = _norm_check(x, gamma, beta, spec)
    flat = x.reshape(-1, spec.dim)
    out = np.empty(flat.shape, dtype=np.int64)
    L = spec.pre_shift
    g = gamma.astype(object)
    for row, xv in enumerate(flat):
        s1, _, m, e = norm_scalars(xv, spec)
        num = spec.dim * xv.astype(object) - s1
        p = (num * m) * g
        y = rshift_round(p * (1 << L), spec.shift_base + e + L) + beta.astype(object)
        out[row] = saturate(y, spec.out_width).astype(np.int64)
    return out.reshape(x.shape)


def rmsnorm_int(x, gamma, spec: NormSpec) -> np.ndarray:
    """RMSNorm: ``x / sqrt(mean(x^2) + eps) * gamma`` (``spec.center`` must be False)."""
    if not isinstance(spec, NormSpec) or spec.center:
        raise ValueError("rmsnorm_int needs a NormSpec with center=False")
    return norm_int(x, gamma, None, spec)


def layernorm_int(x, gamma, beta, spec: NormSpec) -> np.ndarray:
    """LayerNorm: ``(x - mean) / sqrt(var + eps) * gamma + beta`` (``spec.center`` must be True)."""
    if not isinstance(spec, NormSpec) or not spec.center:
        raise ValueError("layernorm_int needs a NormSpec with center=True")
    return norm_int(x, gamma, np.zeros(spec.dim, np.int64) if beta is None else beta, spec)


def rmsnorm_ref(x, gamma, eps: float) -> np.ndarray:
    """float64 RMSNorm over the last axis."""
    x, gamma = _float_array("x", x), _float_array("gamma", gamma)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


def layernorm_ref(x, gamma, beta, eps: float) -> np.ndarray:
    """float64 LayerNorm over the last axis (biased variance, as torch.nn.LayerNorm)."""
    x, gamma, beta = _float_array("x", x), _float_array("gamma", gamma), _float_array("beta", beta)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def norm_test_vectors(spec: NormSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` int vectors of realistic and extreme scale: Gaussian at several scales, outlier spikes,
    near-constant (variance ~ 1 LSB or 0), all-zero and full-scale (saturating) vectors."""
    D, F, W = spec.dim, spec.frac_bits, spec.width
    lo, hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
    out = np.empty((n, D), dtype=np.int64)
    for k in range(n):
        kind = k % 8
        if kind == 0:                                       # Gaussian, scale 2**-6 .. full range
            sigma = 2.0 ** rng.uniform(-6, W - 2 - F)
            v = rng.normal(0, sigma, D) * 2 ** F
        elif kind == 1:                                     # Gaussian with an offset (LayerNorm mean)
            v = (rng.normal(0, 2.0 ** rng.uniform(-4, 1), D) + rng.uniform(-4, 4)) * 2 ** F
        elif kind == 2:                                     # small values plus one huge outlier
            v = rng.normal(0, 2.0 ** rng.uniform(-5, 0), D) * 2 ** F
            v[rng.integers(D)] = rng.choice([lo, hi])
        elif kind == 3:                                     # near-constant: c + {-1, 0, 1} LSB
            v = rng.integers(lo // 2, hi // 2) + rng.integers(-1, 2, D)
        elif kind == 4:                                     # exactly constant (variance 0)
            v = np.full(D, rng.integers(lo, hi + 1))
        elif kind == 5:                                     # all zero
            v = np.zeros(D)
        elif kind == 6:                                     # full scale, both signs (saturating)
            v = rng.choice([lo, hi], D)
        else:                                               # uniform over the whole range
            v = rng.integers(lo, hi + 1, D)
        out[k] = np.clip(np.round(v), lo, hi).astype(np.int64)
    return out


def _measure_norm(spec: NormSpec, n_vectors: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = norm_test_vectors(spec, n_vectors, rng)
    glo, ghi = -(1 << (spec.gamma_width - 1)), (1 << (spec.gamma_width - 1)) - 1
    gammas = [np.clip(np.round(rng.uniform(-2, 2, spec.dim) * 2 ** spec.gamma_frac_bits), glo, ghi).astype(np.int64),
              rng.integers(glo, ghi + 1, spec.dim)]
    olo, ohi = -(1 << (spec.out_width - 1)), (1 << (spec.out_width - 1)) - 1
    worst, total, count, n_sat, excess = 0.0, 0.0, 0, 0, -1.0
    worst_case = None
    for j, gamma in enumerate(gammas):
        beta = (np.clip(np.round(rng.normal(0, 0.5, spec.dim) * 2 ** spec.out_frac_bits), olo, ohi).astype(np.int64)
                if spec.center else None)
        y = norm_int(x, gamma, beta, spec) * 2.0 ** -spec.out_frac_bits
        xf, gf = x * 2.0 ** -spec.frac_bits, gamma * 2.0 ** -spec.gamma_frac_bits
        if spec.center:
            ref = layernorm_ref(xf, gf, beta * 2.0 ** -spec.out_frac_bits, spec.eps)
        else:
            ref = rmsnorm_ref(xf, gf, spec.eps)
        lsb = 2.0 ** -spec.out_frac_bits
        n_sat += int(np.count_nonzero((ref < olo * lsb) | (ref > ohi * lsb)))
        refc = np.clip(ref, olo * lsb, ohi * lsb)
        err = np.abs(y - refc)
        scaled = np.abs(ref - beta * lsb) if spec.center else np.abs(ref)      # the part rsqrt scales
        excess = max(excess, float(np.max(err - RSQRT_REL_BOUND * scaled)) / lsb)
        k = np.unravel_index(int(np.argmax(err)), err.shape)
        if err[k] > worst:
            worst, worst_case = float(err[k]), {"gamma_set": j, "vector": int(k[0]), "element": int(k[1])}
        total += float(err.sum())
        count += err.size
    lsb = 2.0 ** -spec.out_frac_bits
    return {"dim": spec.dim, "eps": spec.eps, "n_vectors": n_vectors * len(gammas), "n": count,
            "max_abs_err": worst, "max_abs_err_lsb": worst / lsb, "mean_abs_err": total / count,
            "mean_abs_err_lsb": total / count / lsb, "saturated_outputs": n_sat, "worst_case": worst_case,
            "max_abs_err_beyond_relative_lsb": excess}


def measure_rmsnorm_error(*, dim: int = 256, n_vectors: int = 64, seed: int = 0, eps: float = 1e-5,
                          **formats) -> dict:
    """Error of :func:`rmsnorm_int` against float64 RMSNorm of the same (dequantized) inputs, outputs
    compared after clipping the reference to the output range, over :func:`norm_test_vectors` with
    two gamma sets (uniform in [-2, 2] and full-range). ``formats``: further :class:`NormSpec` fields.

    Returns ``max_abs_err`` (and ``_lsb``, in output LSBs), ``mean_abs_err``, ``saturated_outputs``
    and ``max_abs_err_beyond_relative_lsb`` = max of ``(err - 2**-16 * |ref - beta|) / LSB``: the
    error is bounded by half an output LSB (the final rounding) plus ``2**-16`` of the normalized
    value (the rsqrt, measured <= 8.2e-6 relative)."""
    return _measure_norm(NormSpec(dim, eps, False, **formats), n_vectors, seed)


def measure_layernorm_error(*, dim: int = 256, n_vectors: int = 64, seed: int = 0, eps: float = 1e-5,
                            **formats) -> dict:
    """Like :func:`measure_rmsnorm_error` for LayerNorm (random beta)."""
    return _measure_norm(NormSpec(dim, eps, True, **formats), n_vectors, seed)
