"""What the packaging templates read: the kernel's IP-XACT/Vitis/Vivado view, derived from its manifest.

``hbmforge.flows.package`` renders the scripts with it (what each board gets is said there);
the PYNQ co-simulation overlay (``hbmforge.host.pynq_sim``) renders the same ``.hwh`` from it,
so both agree. Everything comes from the manifest and the board file.
"""
from __future__ import annotations

import re
from importlib import resources
from typing import Any, Mapping

import jinja2

from hbmforge.boards import Board, load_board
from hbmforge.kernel_interface import CONTROL_RANGE, compute_unit, kernel_args, pynq_registers

__all__ = ["IP_VENDOR", "IP_LIBRARY", "CONTROL_BASE", "XRT_TEMPLATES", "PYNQ_TEMPLATES", "package_context",
           "render_template", "ps_port_info", "board_of", "verilog_names"]

IP_VENDOR = "hbmforge.org"      # VLNV of the packaged kernel: hbmforge.org:kernel:<name>:1.0
IP_LIBRARY = "kernel"
IP_VERSION = "1.0"
CONTROL_BASE = 0xA000_0000      # s_axi_control on M_AXI_HPM0_FPD (the first PL window of ZU+)

# Vivado board parts, used when installed (the PS then gets the board's DDR/MIO preset).
_VIVADO_BOARD_PARTS = {"kv260": "xilinx.com:kv260_som:part0:*", "zcu102": "xilinx.com:zcu102:part0:*"}

# PS DDR windows a PL master reaches through an HP port (UG1085, address map).
_DDR_LOW = (0x0000_0000, 0x8000_0000)

XRT_TEMPLATES = ("vitis/kernel.xml.j2", "vitis/package_xo.tcl.j2", "vitis/link.cfg.j2")
PYNQ_TEMPLATES = ("vivado/bd.tcl.j2",)


def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: resources.files("hbmforge.rtl").joinpath("templates", name).read_text())
    return jinja2.Environment(
        loader=loader, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=lambda name: name is not None and (".xml" in name or ".hwh" in name))


def render_template(name: str, context: Mapping[str, Any]) -> str:
    """Render one template under rtl/templates (``vitis/kernel.xml.j2``)."""
    return _environment().get_template(name).render(**context)


def ps_port_info(port_name: str) -> dict:
    """Vivado names of one Zynq UltraScale+ PL-to-PS slave port (S_AXI_HP0_FPD ...).

    The PS configuration calls the HP ports S_AXI_GP2..5 and the HPC ports
    S_AXI_GP0..1; each has its own clock pin and data-width parameter.
    """
    m = re.fullmatch(r"S_AXI_(HPC?)(\d)_FPD", port_name)
    if not m:
        raise ValueError(f"unsupported PS slave port {port_name!r}; expected S_AXI_HP<n>_FPD "
                         "or S_AXI_HPC<n>_FPD")
    kind, n = m.group(1), int(m.group(2))
    gp = n if kind == "HPC" else n + 2
    return {"name": port_name, "gp": gp, "aclk": f"saxi{kind.lower()}{n}_fpd_aclk",
            "use_param": f"PSU__USE__S_AXI_GP{gp}", "width_param": f"PSU__SAXIGP{gp}__DATA_WIDTH",
            "ddr_segment": f"{kind}{n}_DDR_LOW"}


def board_of(manifest: Mapping[str, Any], board: Board | str | None) -> Board:
    if board is None:
        return load_board(manifest["board"])
    b = load_board(board) if isinstance(board, str) else board
    if b.name != manifest["board"]:
        raise ValueError(f"the design {manifest['kernel']!r} was generated for board "
                         f"{manifest['board']!r}, not {b.name!r}; regenerate it for {b.name}")
    return b


def _sp_bank(b: Board, port: Mapping[str, Any]) -> str:
    """The v++ bank of a manifest port: its channel of the main memory, or DDR[0] for a port linked
    to the DDR beside it (config ``data_memory: ddr``)."""
    memory = port.get("memory")
    if memory is None:
        return f"{b.memory.sp_tag}[{port['channel']}]" if b.memory.sp_tag else ""
    other = b.other_memory(memory)
    if other is None or not other.sp_tag:
        raise ValueError(f"port {port['name']} is linked to {memory}, which {b.name} has no v++ bank for")
    return f"{other.sp_tag}[0]"


def package_context(manifest: Mapping[str, Any], board: Board | str | None = None,
                    *, rtl_files: list[str] | None = None) -> dict:
    """Everything the templates read, derived from the manifest and the board."""
    b = board_of(manifest, board)
    kernel = manifest["kernel"]
    top = manifest.get("top", kernel)
    ports = [dict(p, prefix=p.get("prefix", f"m_axi_{p['name']}"), sp_bank=_sp_bank(b, p)) for p in manifest["ports"]]
    ctx = {
        "kernel": kernel,
        "top": top,
        "design_hash": manifest["design_hash"],
        "hash64": manifest["hash64"],
        "board": b.name,
        "part": b.part,
        "platform": b.platform,
        "clock_mhz": float(manifest["clock_mhz"]),
        "clock_hz": int(round(float(manifest["clock_mhz"]) * 1e6)),
        "vendor": IP_VENDOR, "library": IP_LIBRARY, "version": IP_VERSION,
        "vlnv": f"{IP_VENDOR}:{IP_LIBRARY}:{top}:{IP_VERSION}",
        "cu": compute_unit(manifest),
        "instance": f"{kernel}_0",
        "bd_name": f"{kernel}_bd",
        "control": {"prefix": "s_axi_control", "range": CONTROL_RANGE, "base": CONTROL_BASE,
                    "data_width": int(manifest.get("control", {}).get("data_width", 32))},
        "ports": ports,
        "args": kernel_args(manifest),
        "registers": pynq_registers(manifest),
        "rtl_files": rtl_files if rtl_files is not None else verilog_names(manifest),
        "sp_tag": b.memory.sp_tag,
        "board_part": _VIVADO_BOARD_PARTS.get(b.name, ""),
        "part_fields": _part_fields(b.part),
        "pl_divisor0": max(1, round(1500.0 / float(manifest["clock_mhz"]))),   # IOPLL ~1.5 GHz
        "ps_ports": [],
        "ddr_low": _DDR_LOW,
    }
    if b.memory.ps_ports:
        ps_ports = []
        for ch in sorted({p["channel"] for p in ports}):
            if ch >= len(b.memory.ps_ports):
                raise ValueError(f"port channel {ch} has no PS port on {b.name} "
                                 f"(ps_ports: {b.memory.ps_ports})")
            info = ps_port_info(b.memory.ps_ports[ch])
            info.update(channel=ch, masters=[p for p in ports if p["channel"] == ch],
                        data_width=max(p["data_width"] for p in ports if p["channel"] == ch))
            ps_ports.append(info)
        ctx["ps_ports"] = ps_ports
    return ctx


def _part_fields(part: str) -> dict:
    """xck26-sfvc784-2LV-c -> device xck26, package sfvc784, speed grade -2LV."""
    bits = part.split("-")
    return {"device": bits[0], "package": bits[1] if len(bits) > 1 else "",
            "speed": f"-{bits[2]}" if len(bits) > 2 else ""}


def verilog_names(manifest: Mapping[str, Any]) -> list[str]:
    v = manifest.get("verilog")
    if isinstance(v, str):
        return [v]
    if isinstance(v, (list, tuple)) and v:
        return [str(x) for x in v]
    return [f"{manifest.get('top', manifest['kernel'])}.v"]
