"""Generated designs cached by design hash and generator fingerprint: a warm ``open_device`` skips Amaranth.

Generating the RTL of a design takes 10-25 s of Amaranth elaboration; the result depends only
on the config (its ``design_hash``) and on the generator code. The cache key is both: the
design hash and a fingerprint of every source file that shapes the RTL or the manifest
(``hbmforge/``, ``generators/``, ``flows/emit.py``), so a changed config or an edited
generator never reuses a stale design. Entries live in :class:`hbmforge.sim.cache.BuildCache`
(``designs``), built under its lock so concurrent processes generate once.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from hbmforge import __version__
from hbmforge.layout import DesignLayout
from hbmforge.sim.cache import BuildCache

__all__ = ["generator_fingerprint", "design_key", "cached_design"]


def _sources() -> list[Path]:
    import hbmforge
    import hbmforge.generators

    roots = [Path(hbmforge.__file__).parent, Path(hbmforge.generators.__file__).parent]
    files = sorted({f for root in roots for f in root.rglob("*.py")})
    return files + [Path(__file__).with_name("emit.py")]


@lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """sha256 of this hbmforge version and of every source that shapes a generated design."""
    h = hashlib.sha256(f"hbmforge-{__version__}".encode())
    for f in _sources():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def design_key(layout: DesignLayout) -> str:
    return hashlib.sha256(f"{layout.design_hash}:{generator_fingerprint()}".encode()).hexdigest()


def cached_design(layout: DesignLayout, *, lint: bool = False, cache: BuildCache | None = None,
                  progress=None) -> Path:
    """The directory of the generated design of ``layout`` (``<name>.v`` + ``manifest.json``),
    generated on a miss. ``progress``: a callable given a line of text before a generation."""
    cache = cache or BuildCache("designs")

    def build(out: Path) -> None:
        from .emit import generate, lint as run_lint

        if progress is not None:
            progress(f"generating the RTL of {layout.kernel} (cached for the next open)")
        design = generate(layout.config, out)
        if lint:
            run_lint(design.verilog_path)

    entry = cache.get_or_build(layout.kernel, design_key(layout), build,
                               metadata={"kernel": layout.kernel, "design_hash": layout.design_hash})
    return entry.path
