"""Verilog emission: one config -> ``<name>.v`` + ``manifest.json``, and a Verilator lint.

The top module is named after the config and has flat, exact port names
(``ap_clk``, ``ap_rst_n``, ``interrupt``, ``s_axi_control_<member>``,
``m_axi_<port>_<member>``), which Vitis and the co-simulation harness rely on.
Amaranth's own component flattening would give ``s_axi_control__awaddr``, so
the top is a plain Elaboratable converted with an explicit ``ports`` dict.

Output is deterministic (no source locations, fixed port order): the same
config and generator version give the same bytes.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.hdl._ir import PortDirection
from amaranth.lib import wiring

from hbmforge import __version__
from hbmforge.config import AcceleratorConfig
from hbmforge.design import load_design
from hbmforge.layout import DesignLayout

__all__ = ["GeneratedDesign", "LintError", "KernelTop", "top_ports", "convert", "generate", "lint",
           "waiver_file"]


class LintError(RuntimeError):
    """``verilator --lint-only -Wall`` reported warnings or errors (the message holds them)."""


@dataclass(frozen=True)
class GeneratedDesign:
    """What :func:`generate` wrote."""

    name: str                  # top module = kernel name
    out_dir: Path
    verilog_path: Path
    manifest_path: Path
    manifest: dict
    layout: DesignLayout


class KernelTop(Elaboratable):
    """The kernel plus its clock and reset pins: ``ap_clk`` and active-low synchronous ``ap_rst_n``."""

    def __init__(self, kernel: wiring.Component):
        self.kernel = kernel
        self.ap_clk = Signal()
        self.ap_rst_n = Signal()

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync", async_reset=False)
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]
        m.submodules.kernel = self.kernel
        return m


def top_ports(top: KernelTop) -> dict:
    """``{verilog name: (signal, PortDirection)}`` for every top-level pin, in signature order."""
    ports = {"ap_clk": (top.ap_clk, PortDirection.Input),
             "ap_rst_n": (top.ap_rst_n, PortDirection.Input)}
    kernel = top.kernel
    for path, member, value in kernel.signature.flatten(kernel):
        name = "_".join(str(p) for p in path)
        if name in ports:
            raise ValueError(f"two kernel ports flatten to the Verilog name {name!r}")
        direction = PortDirection.Input if member.flow == wiring.In else PortDirection.Output
        ports[name] = (value, direction)
    return ports


def convert(layout: DesignLayout, engines=None) -> str:
    """The Verilog text of the kernel for ``layout`` (``engines``: opcode -> engine, see :class:`Kernel`)."""
    from hbmforge.generators.shell.kernel import Kernel

    top = KernelTop(Kernel(layout, engines=engines))
    return verilog.convert(top, name=layout.config.name, ports=top_ports(top), emit_src=False)


def generate(config, out_dir, *, engines=None) -> GeneratedDesign:
    """Write ``<name>.v`` and ``manifest.json`` for ``config`` into ``out_dir``.

    ``config``: an :class:`AcceleratorConfig`, a config dict or a YAML path.
    ``engines``: opcode -> engine components to use instead of the defaults (tests).
    """
    # a config object was built by the caller (tests build over-budget ones on purpose);
    # a mapping or a file is checked against the board budget like every user input
    layout = load_design(config, check_budget=not isinstance(config, (AcceleratorConfig, DesignLayout)))
    cfg = layout.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = convert(layout, engines=engines)
    vname = f"{cfg.name}.v"
    manifest = layout.to_json()
    manifest.update({
        "top": cfg.name,
        "verilog": vname,
        "generator": "hbmforge",
        "generator_version": __version__,
    })
    vpath = out / vname
    mpath = out / "manifest.json"
    vpath.write_text(text)
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return GeneratedDesign(name=cfg.name, out_dir=out, verilog_path=vpath, manifest_path=mpath,
                           manifest=manifest, layout=layout)


def waiver_file() -> Path:
    """``rtl/verilator_waivers.vlt``: the lint waivers for Amaranth/Yosys output idioms."""
    return Path(str(resources.files("hbmforge.rtl").joinpath("verilator_waivers.vlt")))


def lint(verilog_path, *, top: str | None = None, timeout: float = 300.0) -> None:
    """Run ``verilator --lint-only -Wall`` (with the waivers); raise :class:`LintError` on any message."""
    from hbmforge.sim.verilator import find_verilator

    path = Path(verilog_path)
    if not path.is_file():
        raise FileNotFoundError(f"no Verilog file {path}")
    if top is None:
        manifest = path.parent / "manifest.json"
        top = json.loads(manifest.read_text()).get("top") if manifest.is_file() else path.stem
    inst = find_verilator()
    cmd = [str(inst.executable), "--lint-only", "-Wall", "--quiet", "--top-module", top,
           str(waiver_file()), str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=inst.env(), timeout=timeout)
    report = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or "%Warning" in report or "%Error" in report:
        raise LintError(f"{' '.join(cmd)} (exit {res.returncode}):\n{report}")
