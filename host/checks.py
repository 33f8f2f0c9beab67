"""Argument checks shared by every host API (device, program, layers, caches, backends).

Each function returns the value in its canonical type (``int``, ``float``, a NumPy array)
or raises ``TypeError`` (wrong kind of value) / ``ValueError`` (right kind, bad value) whose
message names the argument and says what is allowed. Host calls run every check they need
before their first side effect (an allocation, a register write, a KV append), so a call
that fails leaves the device, its buffers and its caches as they were.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np

__all__ = ["check_int", "check_real", "check_positive", "check_timeout", "check_bool", "check_choice",
           "check_str", "real_array", "int_array", "U64_MAX"]

U64_MAX = (1 << 64) - 1


def _kind(value) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, np.ndarray) \
        else f"array of shape {value.shape}"


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}"


def _float(value) -> float:
    """``float(value)``; integers beyond float64 become ``inf`` (refused as not finite)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """A Python or NumPy integer (not a bool) in ``[lo, hi]`` -> ``int``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {_kind(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {_range_text(lo, hi)}, got {value}")
    return value


def check_real(name: str, value, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False) -> float:
    """A finite real number (int or float, not a bool) in ``[lo, hi]`` (``(lo, hi]`` with
    ``lo_open``) -> ``float``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_kind(value)}")
    value = _float(value)
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    if not math.isfinite(value) or low_bad or (hi is not None and value > hi):
        if lo_open and hi is None:
            allowed = f"> {lo}"
        elif lo_open:
            allowed = f"in ({lo}, {hi}]"
        else:
            allowed = _range_text(lo, hi) if lo is not None or hi is not None else "finite"
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    return value


def check_positive(name: str, value) -> float:
    """A finite real number > 0 -> ``float``."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and not value > 0:
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return check_real(name, value, 0.0, lo_open=True)


def check_timeout(value, name: str = "timeout") -> float:
    """Seconds to wait: a finite number > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {_kind(value)}")
    value = _float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (NumPy bools too), nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_kind(value)}")
    return bool(value)


def check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {_kind(value)}")
    return value


def check_choice(name: str, value, choices: Sequence, what: str = ""):
    """``value`` if it equals one of ``choices`` (compared by type and value: ``True`` is not 1);
    ``what`` names the choices in the message (``"the engine's kv_bits"``)."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return choice
        if isinstance(choice, int) and not isinstance(choice, bool) and isinstance(value, np.integer) \
                and int(value) == choice:
            return choice
    shown = value if not isinstance(value, np.ndarray) else f"an array of shape {value.shape}"
    raise ValueError(f"{name} must be one of {what + ' ' if what else ''}{list(choices)}, got {shown!r}")


def _as_array(name: str, x, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (int, float, np.generic)):      # a Python or NumPy scalar: a 0-d array (ndim decides)
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except (ValueError, TypeError) as err:      # ragged nesting
            raise ValueError(f"{name} must be {what}; the nested sequence is not rectangular ({err})") from None
    raise TypeError(f"{name} must be {what} (a NumPy array), got {type(x).__name__}")


def _ndim(name: str, x: np.ndarray, ndim: Iterable[int] | None, what: str) -> None:
    if ndim is not None and x.ndim not in tuple(ndim):
        raise ValueError(f"{name} must be {what}, got shape {x.shape}")


def real_array(name: str, x, *, ndim: Iterable[int] | None = None, what: str | None = None,
               axes: Sequence[str] | None = None) -> np.ndarray:
    """A real (float or integer, not bool/complex/object/string) array with no NaN/Inf, as float64.

    ``ndim``: the allowed numbers of dimensions; ``what`` describes the expected shape in
    messages; ``axes`` names the axes to locate the first non-finite value.
    """
    what = what or "a real float array"
    x = _as_array(name, x, what)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real float array (float or integer dtype), got dtype {x.dtype}")
    _ndim(name, x, ndim, what)
    with np.errstate(over="ignore"):
        out = x.astype(np.float64)                     # longdouble beyond float64 becomes inf: refused below
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(out.size - np.count_nonzero(finite))
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        where = (", ".join(f"{a} {i}" for a, i in zip(axes, first)) if axes and len(axes) == len(first)
                 else f"index {first}")
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s) (first at {where})")
    return out


def int_array(name: str, x, lo: int, hi: int, *, ndim: Iterable[int] | None = None,
              shape: tuple | None = None, what: str | None = None) -> np.ndarray:
    """An integer (not bool) array with values in ``[lo, hi]``, as int64 (uint64 when ``hi`` needs it).

    ``shape``: the exact shape required (``None`` entries match any length).
    """
    what = what or f"an integer array with values in [{lo}, {hi}]"
    x = _as_array(name, x, what)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be {what}, got dtype {x.dtype}")
    _ndim(name, x, ndim, what)
    if shape is not None and (x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    if x.size:
        mn, mx = int(x.min()), int(x.max())
        if mn < lo or mx > hi:
            bad = int(np.count_nonzero((x < lo) | (x > hi)))
            raise ValueError(f"{name} has {bad} value(s) outside [{lo}, {hi}] (min {mn}, max {mx})")
    return x.astype(np.uint64 if hi > np.iinfo(np.int64).max else np.int64)
