"""The aggregation switch as a design: its Verilog (cached by geometry and generator) and its
co-simulation library (the switch plus the network model, ``hbmforge.sim.network``).

``switch_library(geom)`` is what ``hbmforge.host.open_cluster`` calls: Amaranth runs only on
a miss of the RTL cache, Verilator only on a miss of the build cache.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from amaranth.back import verilog

from hbmforge.engines.network import SwitchGeometry

from .design_cache import generator_fingerprint
from .emit import KernelTop, top_ports

__all__ = ["switch_top_name", "convert_switch", "generate_switch", "cached_switch", "switch_library"]


def switch_top_name(geom: SwitchGeometry) -> str:
    """A Verilog module name that identifies the geometry: ``hbf_switch_p<ports>_w<width>_<hash>``."""
    digest = hashlib.sha256(json.dumps(geom.to_json(), sort_keys=True).encode()).hexdigest()[:10]
    return f"hbf_switch_p{geom.ports}_w{geom.data_width}_{digest}"


def convert_switch(geom: SwitchGeometry) -> str:
    """The switch's Verilog: ``ap_clk``, ``ap_rst_n`` (active low), ``s_axis_p<i>_*``, ``m_axis_p<i>_*``,
    ``stat_*`` (the counters)."""
    from hbmforge.generators.network.switch import AggregationSwitch

    if not isinstance(geom, SwitchGeometry):
        raise TypeError(f"geom must be a SwitchGeometry, got {type(geom).__name__}")
    top = KernelTop(AggregationSwitch(geom))
    return verilog.convert(top, name=switch_top_name(geom), ports=top_ports(top), emit_src=False)


def generate_switch(geom: SwitchGeometry, out_dir: str | Path) -> Path:
    """Write ``<top>.v`` and ``switch.json`` (the geometry) into ``out_dir``; the Verilog path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{switch_top_name(geom)}.v"
    path.write_text(convert_switch(geom))
    (out / "switch.json").write_text(json.dumps({"top": switch_top_name(geom), **geom.to_json()}, indent=1))
    return path


def cached_switch(geom: SwitchGeometry, *, progress=None) -> Path:
    """The switch's Verilog from the RTL cache (keyed by geometry and generator fingerprint)."""
    from hbmforge.sim.cache import BuildCache

    key = hashlib.sha256(f"{json.dumps(geom.to_json(), sort_keys=True)}:{generator_fingerprint()}".encode()).hexdigest()

    def build(out: Path) -> None:
        if progress is not None:
            progress(f"generating the RTL of the {geom.ports}-port switch")
        generate_switch(geom, out)

    entry = BuildCache("switch-rtl").get_or_build(switch_top_name(geom), key, build,
                                                  metadata={"geometry": geom.to_json()})
    return entry.path / f"{switch_top_name(geom)}.v"


def switch_library(geom: SwitchGeometry, *, progress: bool = True) -> Path:
    """The co-simulation library of the switch and the network model (built if not cached)."""
    from hbmforge.sim.network import build_switch_library

    rtl = cached_switch(geom)
    return build_switch_library(rtl, switch_top_name(geom), geom, progress=progress)
