"""Device backends, imported lazily by ``hbmforge.host.open_device``.

Each backend module subclasses :class:`hbmforge.host.device.Device`, calls
``check_identity()`` at the end of its constructor, and exposes
``open_device(target, *, build_dir=None, **options) -> Device`` for the
backends opened by name (``pynq``, ``xrt``); ``target`` is what the user passed
to ``hbmforge.host.open_device`` (a config, a config path or a build directory
holding manifest.json and the bitstream/xclbin).
"""
from __future__ import annotations

import os
from pathlib import Path


def built_design(target, *, backend: str, build_dir, artifact: str, artifact_path=None):
    """``(DesignManifest, artifact path)`` of a generated design that a board backend runs.

    ``target`` is the design directory or its manifest.json; the bitstream or
    xclbin (``artifact``: "bit" or "xclbin") defaults to ``<kernel>.<artifact>``
    in that directory or its ``package/`` subdirectory.
    """
    from hbmforge.manifest import read_manifest

    if build_dir is not None:
        raise ValueError(f"the {backend} backend runs a built {artifact} file; build_dir applies to the "
                         "sim backend only")
    if not isinstance(target, (str, os.PathLike)):
        raise TypeError(f"the {backend} backend opens a generated design directory (or its manifest.json), "
                        f"got {type(target).__name__}")
    if artifact_path is not None and not isinstance(artifact_path, (str, os.PathLike)):
        raise TypeError(f"the .{artifact} path must be a str or Path, got {type(artifact_path).__name__}")
    design = Path(target)
    if design.is_file() and design.name == "manifest.json":
        design = design.parent
    if not (design / "manifest.json").is_file():
        raise ValueError(f"the {backend} backend needs the directory of a generated design (with "
                         f"manifest.json and the .{artifact} built from it), got {target!r}")
    manifest = read_manifest(design)
    kernel = manifest.layout.kernel
    if artifact_path is None:
        candidates = [design / f"{kernel}.{artifact}", design / "package" / f"{kernel}.{artifact}"]
        artifact_path = next((c for c in candidates if c.is_file()), candidates[0])
    return manifest, artifact_path
