"""First-fit allocation of device memory within one memory bank.

Every buffer starts on a 4 KiB page so that no AXI burst into it can be
misaligned and the bank map matches what XRT/PYNQ allocators hand out.
"""
from __future__ import annotations

import bisect

from .errors import OutOfDeviceMemoryError

__all__ = ["PAGE_BYTES", "BankAllocator"]

PAGE_BYTES = 4096


class BankAllocator:
    """Free ranges of ``[base, base + size)``, kept sorted and coalesced."""

    def __init__(self, name: str, base: int, size: int, align: int = PAGE_BYTES):
        if base % align or size <= 0:
            raise ValueError(f"bank {name}: base {base:#x} must be {align}-aligned and size {size} > 0")
        self.name = name
        self.base = base
        self.size = size
        self.align = align
        self._free: list[tuple[int, int]] = [(base, size)]     # (start, length), sorted by start
        self._used: dict[int, int] = {}                        # start -> length

    @property
    def bytes_used(self) -> int:
        return sum(self._used.values())

    @property
    def bytes_free(self) -> int:
        return self.size - self.bytes_used

    def allocate(self, nbytes: int, *, period: int = 0, phase: int = 0) -> int:
        """Start address of a fresh range of at least ``nbytes`` (rounded up to ``align``); with
        ``period`` (a multiple of ``align``), one whose start is ``phase`` modulo ``period`` (the
        free bytes skipped before it stay free)."""
        need = -(-nbytes // self.align) * self.align
        if period:
            if period % self.align or phase % self.align or not 0 <= phase < period:
                raise ValueError(f"bank {self.name}: period {period} and phase {phase} must be multiples of "
                                 f"{self.align}, phase below period")
        for i, (start, length) in enumerate(self._free):
            at = start + (phase - (start - self.base)) % period if period else start
            if at + need <= start + length:
                pieces = [(start, at - start), (at + need, start + length - at - need)]
                self._free[i:i + 1] = [(a, n) for a, n in pieces if n]
                self._used[at] = need
                return at
        largest = max((length for _, length in self._free), default=0)
        raise OutOfDeviceMemoryError(
            f"bank {self.name}: cannot allocate {nbytes} bytes ({need} page-rounded); "
            f"{self.bytes_free} bytes free, largest free range {largest} bytes")

    def release(self, start: int) -> None:
        try:
            length = self._used.pop(start)
        except KeyError:
            raise ValueError(f"bank {self.name}: {start:#x} is not an allocated range") from None
        i = bisect.bisect_left(self._free, (start, 0))
        self._free.insert(i, (start, length))
        # coalesce with the next and previous free ranges
        if i + 1 < len(self._free) and start + length == self._free[i + 1][0]:
            self._free[i] = (start, length + self._free[i + 1][1])
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == start:
            prev_start, prev_len = self._free[i - 1]
            self._free[i - 1] = (prev_start, prev_len + self._free[i][1])
            del self._free[i]
