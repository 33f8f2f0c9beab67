"""Fixed-point softmax pieces of the attention engine, bit-exact with the RTL units.

* :func:`exp2_neg` - ``2**-d`` for an unsigned fixed-point ``d`` with ``SCORE_FRAC`` (8)
  fraction bits, as an unsigned value with ``P_FRAC`` (15) fraction bits (``2**15`` = 1.0):
  ``d = i + f/256``; a 256-entry table ``T[f] = round(2**15 * 2**(-f/256))`` and
  ``p = rshift_round(T[f], i)`` (0 for ``i >= 17``). Generators/attention/exp2.py.
* :func:`reciprocal` - ``1/l`` for ``l >= 1``: ``n = bit_length(l)``, ``X`` = the top 17 bits
  of ``l`` (``l`` shifted so ``2**16 <= X < 2**17``, truncating), a 128-entry seed table on
  the 7 bits after the leading one, one Newton step
  ``Y = rshift_round(Y0 * (2**34 - X*Y0), 33)``; then ``1/l ~= Y / 2**(n + 16)``.
  Generators/attention/recip.py.
* :func:`online_softmax_int` - the engine's page-blocked online softmax on log2-domain scores
  (what the probabilities effectively are), for error measurements.
"""
from __future__ import annotations

import math

import numpy as np

from ..engines.attention import P_FRAC, RECIP_TABLE_BITS, RECIP_X_BITS, SCORE_FRAC, Z_BITS

__all__ = ["EXP2_TABLE", "RECIP_TABLE", "exp2_neg", "reciprocal", "online_softmax_int",
           "exp2_max_rel_err", "reciprocal_max_rel_err", "softmax_max_abs_err"]

EXP2_TABLE = tuple(int(round((1 << P_FRAC) * 2.0 ** (-f / (1 << SCORE_FRAC)))) for f in range(1 << SCORE_FRAC))
EXP2_ZERO_SHIFT = P_FRAC + 2          # 2**15 >> 17 (rounded) is 0: every larger integer part gives 0
D_BITS = Z_BITS + 1                   # m - z of two saturated scores


def _recip_seed(idx: int) -> int:
    lo = (1 << (RECIP_X_BITS - 1)) + (idx << (RECIP_X_BITS - 1 - RECIP_TABLE_BITS))
    mid = lo + (1 << (RECIP_X_BITS - 2 - RECIP_TABLE_BITS))        # interval midpoint (exact)
    return int(round(2.0 ** (2 * RECIP_X_BITS - 1) / mid))


RECIP_TABLE = tuple(_recip_seed(i) for i in range(1 << RECIP_TABLE_BITS))


def exp2_neg(d):
    """``2**-(d / 2**8)`` with 15 fraction bits; ``d`` unsigned ints (array or scalar)."""
    d = np.asarray(d, dtype=np.int64)
    if np.any(d < 0):
        raise ValueError("exp2_neg takes d >= 0")
    i = d >> SCORE_FRAC
    f = d & ((1 << SCORE_FRAC) - 1)
    t = np.asarray(EXP2_TABLE, dtype=np.int64)[f]
    ic = np.minimum(i, EXP2_ZERO_SHIFT)
    half = np.where(ic > 0, np.left_shift(1, np.maximum(ic - 1, 0)), 0)
    p = (t + half) >> ic
    out = np.where(i >= EXP2_ZERO_SHIFT, 0, p)
    return out if out.shape else int(out)


def reciprocal(l):
    """``(Y, n)`` with ``1/l ~= Y / 2**(n + 16)`` for an int ``l >= 1``; ``(0, 0)`` for ``l == 0``."""
    l = int(l)
    if l < 0:
        raise ValueError("reciprocal takes l >= 0")
    if l == 0:
        return 0, 0
    n = l.bit_length()
    xb = RECIP_X_BITS
    x = l >> (n - xb) if n >= xb else l << (xb - n)
    idx = (x >> (xb - 1 - RECIP_TABLE_BITS)) & ((1 << RECIP_TABLE_BITS) - 1)
    y0 = RECIP_TABLE[idx]
    e = (1 << (2 * xb)) - x * y0
    y = (y0 * e + (1 << (2 * xb - 2))) >> (2 * xb - 1)
    return y, n


def online_softmax_int(z, seg_lens, valid=None):
    """Probabilities the engine effectively applies to scores ``z`` (one row, log2 domain, SCORE_FRAC
    fraction bits), processed in segments of ``seg_lens`` tokens; ``valid`` masks tokens.

    Equivalent to running the engine with V = identity: returns float ``acc_j / l``.
    """
    z = np.asarray(z, dtype=np.int64)
    valid = np.ones(len(z), bool) if valid is None else np.asarray(valid, bool)
    acc = np.zeros(len(z), dtype=np.int64)
    l, m, empty, start = 0, 0, True, 0
    for n in seg_lens:
        zs, vs = z[start:start + n], valid[start:start + n]
        new_m, new_empty = m, empty
        if vs.any():
            bm = int(zs[vs].max())
            new_m, new_empty = (bm, False) if empty else (max(m, bm), False)
        alpha = (1 << P_FRAC) if (empty or new_empty) else exp2_neg(new_m - m)
        acc = _rescale(acc, alpha)
        l = int(_rescale(np.array([l]), alpha)[0])
        if not new_empty:
            p = np.where(vs, exp2_neg(np.maximum(new_m - zs, 0)), 0)
            acc[start:start + n] += p
            l += int(p.sum())
        m, empty, start = new_m, new_empty, start + n
    return acc / l


def _rescale(acc: np.ndarray, alpha: int) -> np.ndarray:
    """``rshift_round(acc * alpha, 15)`` exactly in int64 (acc split at bit 15)."""
    acc = np.asarray(acc, dtype=np.int64)
    hi, lo = acc >> P_FRAC, acc & ((1 << P_FRAC) - 1)
    return hi * alpha + ((lo * alpha + (1 << (P_FRAC - 1))) >> P_FRAC)


def exp2_max_rel_err() -> float:
    """Largest relative error of :func:`exp2_neg` over every input whose true value is at least
    2**-8 (below that, see :func:`exp2_max_abs_err`: the absolute error stays <= 2**-16)."""
    d = np.arange(0, 8 << SCORE_FRAC)
    exact = 2.0 ** (-d / (1 << SCORE_FRAC))
    got = exp2_neg(d) / (1 << P_FRAC)
    return float(np.max(np.abs(got - exact) / exact))


def exp2_max_abs_err() -> float:
    d = np.arange(0, (P_FRAC + 3) << SCORE_FRAC)
    exact = 2.0 ** (-d / (1 << SCORE_FRAC))
    return float(np.max(np.abs(exp2_neg(d) / (1 << P_FRAC) - exact)))


def reciprocal_max_rel_err(samples: int = 200_000, seed: int = 0, max_bits: int = 36) -> float:
    """Largest relative error of :func:`reciprocal` on every l < 2**18 plus random larger l."""
    rng = np.random.default_rng(seed)
    ls = list(range(1, 1 << 18)) + [int(v) for v in rng.integers(1 << 18, 1 << max_bits, samples)]
    worst = 0.0
    for l in ls:
        y, n = reciprocal(l)
        worst = max(worst, abs(y / 2.0 ** (n + 16) * l - 1.0))
    return worst


def softmax_max_abs_err(trials: int = 200, tokens: int = 300, page_tokens: int = 16, seed: int = 0,
                        score_std: float = 3.0) -> float:
    """Largest |p_engine - p_float64| over random score rows (natural-log scores ~ N(0, std),
    some rows with a large outlier), with the engine's quantization of scores to 1/256 in the
    log2 domain, its exp2, its page-blocked online rescaling and its rounding."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for t in range(trials):
        n = int(rng.integers(1, tokens + 1))
        s = rng.normal(0.0, score_std, n)
        if t % 3 == 0:
            s[rng.integers(0, n)] += rng.uniform(5, 20)
        z = np.clip(np.round(s * math.log2(math.e) * (1 << SCORE_FRAC)), -(1 << (Z_BITS - 1)),
                    (1 << (Z_BITS - 1)) - 1).astype(np.int64)
        first = int(rng.integers(0, page_tokens))
        lens = [min(n, page_tokens - first)] if first else []
        rest = n - sum(lens)
        lens += [page_tokens] * (rest // page_tokens) + ([rest % page_tokens] if rest % page_tokens else [])
        p = online_softmax_int(z, [x for x in lens if x])
        ref = np.exp(s - s.max())
        ref /= ref.sum()
        worst = max(worst, float(np.max(np.abs(p - ref))))
    return worst
