"""Simulation: find Verilator, build and cache designs, co-simulate them, run cocotb tests.

* :func:`find_verilator` / :func:`activate_verilator` — which Verilator and its environment;
* :func:`build_library` — the co-simulation shared library of a design (cached by content),
  :func:`build_cosim` — the same, returning just the library path;
* :class:`CoSim` — a simulated device over that library (registers, memory, cycles, stats);
* :func:`run_cocotb` — build (cached) and run cocotb tests on a design with Verilator.

Modules import lazily so that ``import hbmforge.sim`` costs nothing.
"""
from __future__ import annotations

__all__ = ["find_verilator", "activate_verilator", "build_library", "build_cosim", "BuildOptions", "CoSim",
           "PortTiming", "run_cocotb"]


def __getattr__(name: str):
    if name == "find_verilator":
        from .verilator import find_verilator
        return find_verilator
    if name == "activate_verilator":
        from .verilator import activate
        return activate
    if name in ("build_library", "BuildOptions"):
        from . import build
        return getattr(build, name)
    if name in ("CoSim", "build_cosim"):
        from . import cosim
        return getattr(cosim, name)
    if name == "PortTiming":
        from .timing import PortTiming
        return PortTiming
    if name == "run_cocotb":
        from .cocotb_runner import run_cocotb
        return run_cocotb
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
