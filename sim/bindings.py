"""Render the harness header that binds a kernel's ports, from its manifest.

Verilator exposes every top-level port as a member of ``Vtop``; the header
generated here names them (``top->m_axi_w0_arvalid``) so the C++ harness is
the same for every design and nothing is looked up at run time.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import jinja2

from .timing import board_port_timing

__all__ = ["ManifestError", "load_manifest", "render_ports_header", "HARNESS_SOURCES", "harness_dir"]

#: Files of sim/harness compiled or included into every co-simulation library.
HARNESS_SOURCES = ("hbf_abi.h", "sparse_memory.h", "protocol_log.h", "axi_port_model.h",
                   "axi_lite_master.h", "hbf_harness.cpp", "hbf_ports.h.j2")
_SUPPORTED_WIDTHS = (32, 64, 128, 256, 512, 1024)


class ManifestError(ValueError):
    """The manifest lacks something the harness needs; the message says what."""


def harness_dir() -> Path:
    return Path(str(resources.files("hbmforge.sim").joinpath("harness")))


def load_manifest(manifest: dict | str | Path) -> dict:
    """A manifest dict from a dict, a JSON string or a path, checked for what the harness reads."""
    if isinstance(manifest, Path) or (isinstance(manifest, str) and not manifest.lstrip().startswith("{")):
        manifest = json.loads(Path(manifest).read_text())
    elif isinstance(manifest, str):
        manifest = json.loads(manifest)
    for key in ("kernel", "ports", "control"):
        if key not in manifest:
            raise ManifestError(f"manifest has no {key!r} entry (keys: {sorted(manifest)})")
    if not manifest["ports"]:
        raise ManifestError("manifest lists no m_axi ports")
    for i, p in enumerate(manifest["ports"]):
        missing = [k for k in ("name", "prefix", "data_width", "reads", "writes") if k not in p]
        if missing:
            raise ManifestError(f"manifest port {i} lacks {missing}")
        if p["data_width"] not in _SUPPORTED_WIDTHS:
            raise ManifestError(f"port {p['name']}: data_width {p['data_width']} is not one of {_SUPPORTED_WIDTHS}")
    return manifest


def port_timings(manifest: dict):
    """Default timing of every port, from the manifest's board and clock."""
    board = manifest.get("board")
    clock = float(manifest.get("clock_mhz") or 300.0)
    return [board_port_timing(board, clock, p["data_width"]) for p in manifest["ports"]]


def render_ports_header(manifest: dict, *, trace: bool = False) -> str:
    manifest = load_manifest(manifest)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(harness_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    ports = [dict(p, timing=asdict(t)) for p, t in zip(manifest["ports"], port_timings(manifest))]
    return env.get_template("hbf_ports.h.j2").render(
        kernel=manifest["kernel"],
        ports=ports,
        control=manifest["control"].get("prefix", "s_axi_control"),
        control_addr_mask=hex((1 << int(manifest["control"].get("addr_width", 12))) - 1),
        clock_mhz=float(manifest.get("clock_mhz") or 300.0),
        max_burst_beats=int(manifest.get("axi", {}).get("max_burst_beats", 256)),
        trace=trace,
    )
