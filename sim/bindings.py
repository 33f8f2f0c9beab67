"""Render the harness header that binds a kernel's ports, from its layout.

Verilator exposes every top-level port as a member of ``Vtop``; the header
generated here names them (``top->m_axi_w0_arvalid``) so the C++ harness is
the same for every design and nothing is looked up at run time. Every number
comes from the design's :class:`~hbmforge.layout.DesignLayout`, read from its
manifest by :func:`hbmforge.manifest.read_manifest` (the one contract reader).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import jinja2

from hbmforge.layout import CTRL_ADDR_WIDTH, DesignLayout, ManifestError
from hbmforge.manifest import DesignManifest, read_manifest

from .timing import board_port_timing

__all__ = ["ManifestError", "load_manifest", "read_design", "render_ports_header", "port_timings",
           "HARNESS_SOURCES", "harness_dir"]

#: Files of sim/harness compiled or included into every co-simulation library.
HARNESS_SOURCES = ("hbf_abi.h", "sparse_memory.h", "protocol_log.h", "memory_regions.h", "dram_model.h", "axi_port_model.h",
                   "axi_lite_master.h", "hbf_harness.cpp", "hbf_ports.h.j2", "hbf_stream.h", "hbf_streams.h.j2")


def harness_dir() -> Path:
    return Path(str(resources.files("hbmforge.sim").joinpath("harness")))


def read_design(manifest) -> DesignManifest:
    """The checked design of a manifest given as a DesignManifest, layout, mapping, JSON text or path."""
    if isinstance(manifest, str) and manifest.lstrip().startswith("{"):
        try:
            manifest = json.loads(manifest)
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest text is not valid JSON: {err}") from None
    return read_manifest(manifest)


def load_manifest(manifest) -> dict:
    """The manifest mapping of a design, after :meth:`DesignLayout.from_manifest` checked it."""
    return dict(read_design(manifest).data)


def port_timings(layout: DesignLayout):
    """Default timing of every port, from the layout's board and clock."""
    cfg = layout.config
    return [board_port_timing(cfg.board, cfg.clock, p.data_width) for p in layout.ports]


def render_ports_header(manifest, *, trace: bool = False) -> str:
    layout = read_design(manifest).layout
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(harness_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    ports = [dict(p.to_json(), timing=asdict(t)) for p, t in zip(layout.ports, port_timings(layout))]
    return env.get_template("hbf_ports.h.j2").render(
        kernel=layout.kernel,
        ports=ports,
        control="s_axi_control",
        control_addr_mask=hex((1 << CTRL_ADDR_WIDTH) - 1),
        clock_mhz=float(layout.config.clock),
        max_burst_beats=layout.config.axi.max_burst_beats,
        trace=trace,
    ) + env.get_template("hbf_streams.h.j2").render(            # the engines' AXI4-Stream ports
        kernel=layout.kernel, streams=[s.to_json() for s in layout.streams])
