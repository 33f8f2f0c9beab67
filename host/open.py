"""``open_device``: from a config (or a generated design) to an open, identity-checked Device.

The ``sim`` backend generates the RTL and manifest from the config, builds (or
reuses, by RTL hash) the co-simulation library and opens it. ``pynq`` and
``xrt`` are imported only when asked for, so the sim path needs neither.
"""
from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

from .device import Device

__all__ = ["open_device", "BACKENDS"]

BACKENDS = ("sim", "pynq", "xrt")


def open_device(config_or_path, backend: str = "sim", *, build_dir=None, **options) -> Device:
    """Open a device for a design.

    ``config_or_path``: an AcceleratorConfig, a config dict, a YAML config path,
    or a directory (or manifest.json) of an already generated design.
    ``build_dir``: where to generate the RTL (default: a temporary directory;
    the co-sim library itself is cached by RTL hash).
    ``options`` go to the backend (sim: read_latency, write_latency,
    bytes_per_cycle, max_outstanding, chunk_cycles, check_protocol, trace=path,
    progress=bool for the Verilator build, build_options=hbmforge.sim.BuildOptions).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "sim":
        return _open_sim(config_or_path, build_dir, options)
    try:
        module = importlib.import_module(f"hbmforge.host.backends.{backend}")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("hbmforge.host.backends"):
            raise ValueError(f"the {backend!r} backend is not part of this hbmforge installation") from None
        raise
    return module.open_device(config_or_path, build_dir=build_dir, **options)


def _prebuilt_design(target) -> Path | None:
    """The directory of a generated design (manifest.json inside), if ``target`` names one."""
    if not isinstance(target, (str, Path)):
        return None
    path = Path(target)
    if path.is_dir() and (path / "manifest.json").exists():
        return path
    if path.is_file() and path.name == "manifest.json":
        return path.parent
    return None


def _load_config(target):
    from hbmforge.config import AcceleratorConfig, load_config, parse_config

    if isinstance(target, AcceleratorConfig):
        return target
    if isinstance(target, dict):
        return parse_config(target)
    if isinstance(target, (str, Path)):
        path = Path(target)
        if path.is_dir():
            raise ValueError(f"{path} is a directory without manifest.json; pass a config YAML file "
                             "or the directory of a generated design")
        return load_config(path)
    raise TypeError(f"config_or_path must be an AcceleratorConfig, a dict, or a path, got {type(target).__name__}")


def _cosim(design: Path, options: dict):
    """Build (or take from the cache, keyed by RTL hash) the co-sim library and open it."""
    from hbmforge.sim.build import BuildOptions, build_library
    from hbmforge.sim.cosim import CoSim

    build_options = options.pop("build_options", None) or BuildOptions(trace=options.get("trace") is not None)
    result = build_library(design, options=build_options, progress=options.pop("progress", True))
    return CoSim(result.library, result.manifest, trace_format=result.trace or "")


def _open_sim(target, build_dir, options) -> Device:
    from .backends.sim import SimDevice
    from .manifest import Manifest

    options = dict(options)
    design = _prebuilt_design(target)
    if design is None:
        cfg = _load_config(target)
        from hbmforge.emit import generate

        if build_dir is None:
            with tempfile.TemporaryDirectory(prefix=f"hbmforge-{cfg.name}-") as tmp:
                generate(cfg, Path(tmp))
                manifest = Manifest.load(Path(tmp))
                sim = _cosim(Path(tmp), options)
            return SimDevice(manifest, sim, **options)
        design = Path(build_dir)
        design.mkdir(parents=True, exist_ok=True)
        generate(cfg, design)
    manifest = Manifest.load(design)
    return SimDevice(manifest, _cosim(design, options), **options)
