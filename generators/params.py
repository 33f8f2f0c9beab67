"""Constructor checks shared by the generators: a bad parameter raises, naming itself and its value."""
from __future__ import annotations

__all__ = ["require_positive_ints", "require_powers_of_two"]


def require_positive_ints(**params: int) -> None:
    """Raise TypeError for a non-int (or bool) and ValueError for a value below 1."""
    for name, v in params.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")


def require_powers_of_two(**params: int) -> None:
    for name, v in params.items():
        if v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v}")
