"""``open_device``: from a config (or a generated design) to an open, identity-checked Device.

The ``sim`` backend takes the generated RTL and manifest of the config from the design
cache (``hbmforge.flows.design_cache``: keyed by design hash and generator fingerprint;
generated with Amaranth only on a miss), builds (or reuses, by RTL hash) the co-simulation
library and opens it, so a warm open takes about a second. ``pynq`` and ``xrt`` are
imported only when asked for, so the sim path needs neither.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from hbmforge.config import AcceleratorConfig
from hbmforge.layout import DesignLayout

from .device import Device

__all__ = ["open_device", "BACKENDS"]

BACKENDS = ("sim", "pynq", "xrt")


def open_device(config_or_path, backend: str = "sim", *, build_dir=None, **options) -> Device:
    """Open a device for a design.

    ``config_or_path``: an AcceleratorConfig, a config dict, a YAML config path,
    or a directory (or manifest.json) of an already generated design.
    ``build_dir``: generate the RTL there instead of taking it from the design cache.
    ``options`` go to the backend (sim: read_latency, write_latency,
    bytes_per_cycle, max_outstanding, chunk_cycles, check_protocol, trace=path,
    progress=bool for the Verilator build, build_options=hbmforge.sim.BuildOptions).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if build_dir is not None and not isinstance(build_dir, (str, Path)):
        raise TypeError(f"build_dir must be a path or None, got {type(build_dir).__name__}")
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


def _layout(target) -> DesignLayout:
    from hbmforge.design import load_design

    if isinstance(target, (str, Path)) and Path(target).is_dir():
        raise ValueError(f"{target} is a directory without manifest.json; pass a config YAML file "
                         "or the directory of a generated design")
    if not isinstance(target, (AcceleratorConfig, DesignLayout, dict, str, Path)):
        raise TypeError(f"config_or_path must be an AcceleratorConfig, a dict, or a path, "
                        f"got {type(target).__name__}")
    return load_design(target)


def _check_sim_options(options: dict) -> dict:
    """The sim options, checked before anything is generated or built."""
    from hbmforge.sim.build import BuildOptions

    from .backends.sim import SIM_OPTIONS

    unknown = sorted(set(options) - set(SIM_OPTIONS) - {"build_options", "progress"})
    if unknown:
        raise TypeError(f"unknown sim option(s) {unknown}; options: "
                        f"{sorted(set(SIM_OPTIONS) | {'build_options', 'progress'})}")
    build_options = options.get("build_options")
    if build_options is not None and not isinstance(build_options, BuildOptions):
        raise TypeError(f"build_options must be a hbmforge.sim.BuildOptions, got {type(build_options).__name__}")
    progress = options.get("progress", True)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    return dict(options)


def _cosim(design: Path, options: dict):
    """Build (or take from the cache, keyed by RTL hash) the co-sim library and open it."""
    from hbmforge.sim.build import BuildOptions, build_library
    from hbmforge.sim.cosim import CoSim

    build_options = options.pop("build_options", None) or BuildOptions(trace=options.get("trace") is not None)
    result = build_library(design, options=build_options, progress=options.pop("progress", True))
    return CoSim.from_build(result)


def _open_sim(target, build_dir, options) -> Device:
    from .backends.sim import SimDevice, check_sim_device_options

    options = _check_sim_options(options)
    check_sim_device_options(**{k: v for k, v in options.items() if k not in ("build_options", "progress")})
    design = _prebuilt_design(target)
    if design is None:
        layout = _layout(target)
        if build_dir is None:
            from hbmforge.flows.design_cache import cached_design

            design = cached_design(layout)
        else:
            from hbmforge.flows.emit import generate

            design = Path(build_dir)
            design.mkdir(parents=True, exist_ok=True)
            generate(layout.config, design)
    cosim = _cosim(design, options)
    return SimDevice(design, cosim, **options)
