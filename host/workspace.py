"""Named scratch buffers a layer reuses from call to call (activations, outputs, programs).

One :class:`Workspace` per layer: ``get(name, nbytes)`` returns the buffer of that name,
replaced by a larger one when a call needs more. Layers reserve everything a call needs
with :meth:`reserve` before their first write, so a call that cannot get its memory
fails before it changes anything else.
"""
from __future__ import annotations

from typing import Mapping

from .device import Buffer, Device

__all__ = ["Workspace"]


class Workspace:
    """Scratch buffers of one layer on ``device`` (on the ``data`` port unless told otherwise)."""

    def __init__(self, device: Device):
        self._dev = device
        self._bufs: dict[str, Buffer] = {}

    def get(self, name: str, nbytes: int, port: str = "data") -> Buffer:
        """The buffer ``name`` with at least ``nbytes`` on ``port`` (reallocated if smaller or freed)."""
        buf = self._bufs.get(name)
        if buf is not None and not buf.freed and buf.nbytes >= nbytes and buf.port == port:
            return buf
        if buf is not None:
            self._drop(name)
        self._bufs[name] = buf = self._dev.alloc(nbytes, port)
        return buf

    def reserve(self, sizes: Mapping[str, int], port: str = "data") -> dict[str, Buffer]:
        """:meth:`get` for each ``name: nbytes``; returns the buffers by name."""
        return {name: self.get(name, nbytes, port) for name, nbytes in sizes.items()}

    def _drop(self, name: str) -> None:
        buf = self._bufs.pop(name)
        if not buf.freed and not self._dev.closed:
            self._dev.free(buf)

    @property
    def buffers(self) -> dict[str, Buffer]:
        return dict(self._bufs)

    def close(self) -> None:
        """Free every buffer (a closed device has freed them already)."""
        for name in list(self._bufs):
            self._drop(name)

    def __len__(self) -> int:
        return len(self._bufs)
