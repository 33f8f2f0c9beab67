"""Which generator builds the engine of each family (the kernel asks here for its defaults).

A new family adds one line to :data:`ENGINE_GENERATORS`; the shell itself never names an engine.
Generators are imported only when a design uses them.
"""
from __future__ import annotations

import importlib

from hbmforge.layout import DesignLayout

__all__ = ["ENGINE_GENERATORS", "engine_class", "default_engines"]

#: family kind -> "module:Class" of its engine generator (constructor: ``Class(layout)``)
ENGINE_GENERATORS = {
    "matmul": "hbmforge.generators.matmul.engine:MatmulEngine",
    "attention": "hbmforge.generators.attention.engine:AttentionEngine",
    "copy": "hbmforge.generators.copy.engine:CopyEngine",
    "network": "hbmforge.generators.network.endpoint:NetworkEngine",
    "vector": "hbmforge.generators.vector.engine:VectorEngine",
    "memory": "hbmforge.generators.memory.engine:MemoryEngine",
}


def engine_class(kind: str):
    try:
        path = ENGINE_GENERATORS[kind]
    except KeyError:
        raise ValueError(f"no engine generator for kind {kind!r}; known: {', '.join(ENGINE_GENERATORS)}") from None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def default_engines(layout: DesignLayout) -> dict:
    """Opcode -> engine for every engine of the layout's config."""
    engines = {}
    for fam in layout.families:
        engine = engine_class(fam.kind)(layout)
        engines.update({op: engine for op in fam.opcodes})
    return engines
