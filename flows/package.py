"""Render the scripts that turn generated Verilog into a bitstream for a board.

Alveo boards (host stack XRT) get the Vitis RTL-kernel flow: ``kernel.xml``,
``package_xo.tcl`` (Vivado IP packaging + ``package_xo``) and ``link.cfg``
(``v++ --link`` with one ``sp=`` line per port, from the manifest's HBM map).
Zynq/Kria boards (host stack PYNQ) get ``bd.tcl``: a Vivado block design
around the PS whose outputs are the ``.bit``/``.hwh`` pair ``pynq.Overlay``
loads.

Everything comes from the manifest (:mod:`hbmforge.package_templates`). The scripts need
Vivado/Vitis, which are not part of hbmforge's dependencies; they are checked here only for
well-formedness and completeness (see docs/packaging.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from hbmforge.boards import Board
from hbmforge.package_templates import (PYNQ_TEMPLATES, XRT_TEMPLATES, board_of, package_context,
                                        render_template, verilog_names)

__all__ = ["render_package"]


def render_package(manifest: Mapping[str, Any], out_dir: str | Path, board: Board | str | None = None,
                   *, rtl_files: list[str] | None = None) -> list[Path]:
    """Write the packaging scripts for ``board`` into ``out_dir``; return the files written.

    ``rtl_files`` are the Verilog sources as the scripts should find them,
    relative to ``out_dir`` (default: ``../<manifest verilog>``, i.e. the
    files ``hbmforge gen`` writes next to the ``package/`` directory). The
    Tcl scripts also accept the sources as ``-tclargs``.
    """
    b = board_of(manifest, board)
    if rtl_files is None:
        rtl_files = [f"../{Path(v).name}" for v in verilog_names(manifest)]
    ctx = package_context(manifest, b, rtl_files=rtl_files)
    if b.host_stack == "xrt":
        if not b.memory.sp_tag or not b.platform:
            raise ValueError(f"board {b.name} has no Vitis platform/sp_tag; cannot package for XRT")
        templates = XRT_TEMPLATES
    else:
        if not b.memory.ps_ports:
            raise ValueError(f"board {b.name} lists no PS ports; cannot build a block design")
        templates = PYNQ_TEMPLATES
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in templates:
        path = out / Path(name).name[: -len(".j2")]
        path.write_text(render_template(name, ctx))
        written.append(path)
    return written
