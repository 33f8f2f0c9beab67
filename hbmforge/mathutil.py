"""Integer helpers every layer shares: exact powers of two, rounding up, round-half-up shifts."""
from __future__ import annotations

__all__ = ["exact_log2", "ceil_div", "round_up", "rshift_round"]


def exact_log2(value: int, what: str = "value") -> int:
    """``log2(value)`` for a positive power of two; ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise ValueError(f"{what} must be a positive power of two, got {value!r}")
    return value.bit_length() - 1


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return ceil_div(value, multiple) * multiple


def rshift_round(value: int, shift: int) -> int:
    """Arithmetic right shift with round-half-up; the rounding every engine uses."""
    if shift <= 0:
        return value
    return (value + (1 << (shift - 1))) >> shift
