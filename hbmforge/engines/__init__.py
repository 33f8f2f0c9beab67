"""The engine families' side of the contract: descriptors, checks, channels, manifest entries.

A new family adds its module here and one entry to :data:`FAMILIES`; the shell, the golden
program interpreter and the host's ProgramBuilder loop over the families of a design.
"""
from __future__ import annotations

from .attention import AttentionFamily
from .base import Channels, Check, EngineFamily, FamilyRegister, IntOps, StreamPort, first_error
from .copy import CopyFamily
from .matmul import MatmulFamily
from .memory import MemoryFamily
from .network import NetworkFamily
from .vector import VectorFamily

__all__ = ["FAMILIES", "family", "Channels", "Check", "EngineFamily", "FamilyRegister", "IntOps", "StreamPort",
           "first_error"]

#: config ``kind`` -> family, in the order the shell numbers engines
FAMILIES: dict[str, EngineFamily] = {f.kind: f for f in (MatmulFamily(), AttentionFamily(), CopyFamily(),
                                                         VectorFamily(), NetworkFamily(), MemoryFamily())}


def family(kind: str) -> EngineFamily:
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(FAMILIES)}") from None
