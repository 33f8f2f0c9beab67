"""Verilator's runtime objects (``verilated.o`` ...), compiled once and reused by every design build.

``verilated.cpp`` alone takes longer to compile than a small kernel's model,
and it is the same for every design built with one Verilator, compiler and
flag set. After a build its objects are published to the cache; the next
build copies them into its object dir after verilating, and make, seeing
them newer than their sources and the makefile, skips them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .cache import BuildCache, content_key

__all__ = ["runtime_key", "seed_runtime", "save_runtime"]

_PATTERN = "verilated*.o"


def runtime_key(*parts: str) -> str:
    return content_key(["verilated-runtime-1", *parts])


def _cache(root: Path) -> BuildCache:
    return BuildCache("runtime", root)


def seed_runtime(obj_dir: Path, key: str, root: Path) -> int:
    """Copy cached runtime objects into ``obj_dir``; the number copied (0 on a miss)."""
    entry = _cache(root).lookup("verilated", key)
    if entry is None:
        return 0
    objs = sorted(entry.glob(_PATTERN))
    for o in objs:
        shutil.copy(o, obj_dir / o.name)        # copy, not copy2: a fresh mtime makes them up to date
    return len(objs)


def save_runtime(obj_dir: Path, key: str, root: Path) -> None:
    """Publish the runtime objects a finished build compiled (no-op when already cached)."""
    objs = sorted(obj_dir.glob(_PATTERN))
    if not objs:
        return

    def copy(out: Path) -> None:
        for o in objs:
            shutil.copy(o, out / o.name)

    _cache(root).get_or_build("verilated", key, copy, lock_timeout=600)
