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

    def allocate(self, nbytes: int) -> int:
        """Start address of a fresh range of at least ``nbytes`` (rounded up to ``align``)."""
        need = -(-nbytes // self.align) * self.align
        for i, (start, length) in enumerate(self._free):
            if length >= need:
                if length == need:
                    del self._free[i]
                else:
                    self._free[i] = (start + need, length - need)
                self._used[start] = need
                return start
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
