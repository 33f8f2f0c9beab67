"""Fixed-point primitives shared by the golden models (exact on arbitrary-size integers)."""
from __future__ import annotations

import numpy as np

def _as_objects(value) -> np.ndarray:
    """An object array of Python ints (NumPy cannot hold integers wider than 64 bits)."""
    if isinstance(value, np.ndarray):
        return value.astype(object)
    return np.asarray(value, dtype=object)


_half = np.vectorize(lambda s: (1 << (int(s) - 1)) if s > 0 else 0, otypes=[object])


def rshift_round(value, shift):
    """Arithmetic right shift with round-half-up: ``(v + 2**(s-1)) >> s``; ``v`` when ``s == 0``.

    Elementwise on Python ints or integer/object arrays; ``shift`` broadcasts.
    Computed on Python integers so that no width can overflow.
    """
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(shift < 0):
        raise ValueError("shift must be >= 0")
    v = _as_objects(value)
    out = np.asarray((v + _half(shift)) >> shift.astype(object))
    return out if out.shape else int(out)


def saturate(value, bits: int):
    """Clamp to the signed range of ``bits`` bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = _as_objects(value)
    out = np.asarray(np.minimum(np.maximum(v, lo), hi))
    return out if out.shape else int(out)
