"""A logic-depth and Fmax *estimate* from the Yosys netlist: static timing with a stated delay model.

``ltp`` (which :mod:`hbmforge.flows.estimate` also runs) finds the path with
the most cells, which is usually a wide counter's carry chain — fast in
silicon. This module instead walks the synthesized netlist (Yosys
``write_json`` after ``synth_xilinx``) and gives every cell and net a delay
from :class:`DelayModel`, so the reported path per part is the *slowest*
register-to-register path, with its LUT levels and CARRY8 stages, and
``fmax_estimate_mhz`` = 1000 / its delay. It also reports the deepest path in
LUT levels alone (``max_logic_levels``).

This is an estimate, not timing analysis: there is no placement and no
routing; every net costs the same average delay. See docs/estimate.md.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = ["DelayModel", "US_PLUS_2", "TimingPath", "analyze", "slowest_endpoints", "part_of", "MAX_PATH_CELLS"]

MAX_PATH_CELLS = 64                    # cells of a path kept in the report


@dataclass(frozen=True)
class DelayModel:
    """Per-cell and per-net delays in ns (one speed grade). ``sources`` says where each comes from."""

    name: str
    ff_clk_to_q: float          # FDRE C->Q
    ff_setup: float             # FDRE D/CE/R setup
    clock_margin: float         # clock uncertainty + skew taken from every period
    lut: float                  # LUT1-6 (any input -> O)
    net: float                  # one average routed net between two cells in different sites
    carry_entry: float          # CARRY8 S/DI -> CO7/O (entering a chain)
    carry_stage: float          # CARRY8 CI -> CO7 (each further 8-bit stage)
    muxf: float                 # MUXF7/8 (dedicated: no net before it)
    lutram_read: float          # RAM32M/RAM64M address -> output (a LUT read)
    lutram_clk_to_out: float    # SRL/LUTRAM clock -> output
    bram_clk_to_out: float      # RAMB36E2 CLK -> DOUT, no output register
    bram_clk_to_out_reg: float  # with DOA_REG/DOB_REG
    bram_setup: float           # RAMB36E2 address/data/enable setup
    dsp_clk_to_out: float       # DSP48E2 CLK -> P with PREG
    dsp_stage: float            # one internal DSP48E2 stage (pre-adder, multiplier, ALU) when not registered
    dsp_setup: float            # into the first used DSP48E2 register
    sources: tuple[str, ...] = ()

    def level(self) -> float:
        """One LUT level: the LUT plus the net into it."""
        return self.lut + self.net

    def overhead(self) -> float:
        """Delay every FF-to-FF path pays besides its logic: clock-to-out, the last net, setup, clock margin."""
        return self.ff_clk_to_q + self.net + self.ff_setup + self.clock_margin

    def lut_budget(self, clock_mhz: float) -> int:
        """LUT levels (each with its net) that fit one period at ``clock_mhz`` between two flip-flops."""
        return max(0, math.floor((1000.0 / clock_mhz - self.overhead()) / self.level() + 1e-9))

    def carry_budget(self, clock_mhz: float, lut_levels: int = 2) -> int:
        """CARRY8 stages of one chain that fit besides ``lut_levels`` LUT levels at ``clock_mhz``."""
        room = 1000.0 / clock_mhz - self.overhead() - lut_levels * self.level() - self.carry_entry
        return max(0, 1 + math.floor(room / self.carry_stage + 1e-9)) if room >= 0 else 0

    def as_dict(self) -> dict:
        return asdict(self)


#: UltraScale+ at speed grade -2 (VCCINT 0.85 V): U280/U55C (-2L at 0.85 V), ZCU102 (-2), KV260.
US_PLUS_2 = DelayModel(
    name="UltraScale+ -2 (0.85 V)",
    ff_clk_to_q=0.09, ff_setup=0.05, clock_margin=0.15,
    lut=0.10, net=0.30,
    carry_entry=0.30, carry_stage=0.05, muxf=0.10,
    lutram_read=0.50, lutram_clk_to_out=1.00,
    bram_clk_to_out=0.95, bram_clk_to_out_reg=0.35, bram_setup=0.45,
    dsp_clk_to_out=0.35, dsp_stage=1.10, dsp_setup=0.30,
    sources=(
        "DS923 (Virtex UltraScale+ DC and AC switching characteristics), -2 at 0.85 V: DSP48E2 Fmax "
        "775 MHz fully pipelined (=> one internal DSP stage <= 1.29 ns; 1.10 ns used), block RAM Fmax "
        "737 MHz with the output register, ~575 MHz without (=> clock-to-out 0.35 / 0.95 ns with the "
        "setup); DS923 no longer tabulates per-LUT delays",
        "Vivado timing reports of UltraScale+ -2 designs (UG906 path format): Prop_FDRE_C_Q 0.08-0.10 ns "
        "(0.09 used), Prop_LUT6 0.04-0.15 ns (0.10 used), Prop_CARRY8_S_CO7 0.25-0.30 ns, Prop_CARRY8_CI_CO7 "
        "0.03-0.05 ns, FDRE setup 0.03-0.06 ns, Prop_MUXF7 ~0.1 ns",
        "UG949 (UltraFast design methodology): net delay is typically the larger part of a path on "
        "UltraScale+; 0.30 ns per net is an average for short nets of well-placed logic (a local route is "
        "0.1-0.5 ns) and the main uncertainty of this model",
        "clock margin 0.15 ns: Vivado's clock uncertainty for an MMCM-generated 300 MHz clock "
        "(~0.06 ns) plus clock skew inside a clock region (~0.1 ns)",
    ),
)


@dataclass(frozen=True)
class TimingPath:
    """The slowest register-to-register path ending in one part (or the part's deepest, see ``analyze``).

    ``delay_ns`` includes clock-to-out, every cell and net, setup and the clock
    margin; ``fmax_estimate_mhz`` = 1000 / ``delay_ns``. ``lut``: LUT levels
    on it; ``carry8``: CARRY8 stages (a CARRY4 counts half); ``muxf``: wide-mux
    stages; ``dsp``: unregistered DSP48E2 stages. ``max_logic_levels``: the
    most LUT levels on any path ending in the part (which need not be the
    slowest path). ``start``/``end``: the first and last cell.
    """

    delay_ns: float
    fmax_estimate_mhz: float
    lut: int
    carry8: float
    muxf: int
    dsp: int
    max_logic_levels: int
    start: str = ""
    end: str = ""
    cells: tuple[str, ...] = ()          # the slowest path's combinational cells, first to last

    def as_dict(self) -> dict:
        d = asdict(self)
        d["cells"] = list(self.cells)
        return d


# --- cell classification -------------------------------------------------------------------

_LUT = {"LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "LUT6_2", "INV"}
_CARRY = {"CARRY4": 0.5, "CARRY8": 1.0}
_MUXF = {"MUXF7", "MUXF8", "MUXF9"}
_LUTRAM = {"RAM32X1S", "RAM32X1D", "RAM32M", "RAM32M16", "RAM64X1S", "RAM64X1D", "RAM64M", "RAM64M8",
           "RAM128X1S", "RAM128X1D", "RAM256X1S", "RAM256X1D", "RAM512X1S", "RAM32X16DR8"}
_SRL = {"SRL16E", "SRLC16E", "SRLC32E"}
_BRAM = {"RAMB36E2", "RAMB18E2", "FIFO36E2", "FIFO18E2", "RAMB36E1", "RAMB18E1"}
_DSP = {"DSP48E2", "DSP48E1"}
_URAM = {"URAM288", "URAM288_BASE"}
_FF_PREFIX = ("FD", "LD")
_DSP_OUT = {"P", "PCOUT", "ACOUT", "BCOUT", "CARRYCASCOUT", "MULTSIGNOUT", "CARRYOUT", "PATTERNDETECT",
            "PATTERNBDETECT", "OVERFLOW", "UNDERFLOW", "XOROUT"}
_LUTRAM_ADDR = ("A", "ADDR", "DPRA")       # read-address inputs (combinational to the outputs)


def _param(cell: dict, name: str, default: int = 0) -> int:
    v = cell.get("parameters", {}).get(name, default)
    if isinstance(v, str):
        try:
            return int(v, 2) if set(v) <= {"0", "1"} else int(v)
        except ValueError:
            return default
    return int(v)


def _outputs(cell: dict) -> set[str]:
    dirs = cell.get("port_directions", {})
    if dirs:
        return {p for p, d in dirs.items() if d == "output"}
    t = cell["type"]
    if t in _LUT or t in _MUXF:
        return {"O"}
    if t in _CARRY:
        return {"O", "CO"}
    if t.startswith(_FF_PREFIX):
        return {"Q"}
    if t in _DSP:
        return _DSP_OUT
    return {p for p in cell["connections"] if p.startswith(("DO", "Q", "SPO", "DPO", "O"))}


def part_of(cell_name: str, parts: Mapping[str, str] | None = None, kernel_prefix: str = "kernel.") -> str:
    """The kernel part a flattened cell belongs to: ``kernel.<part>.`` in its name, else ``glue``."""
    name = cell_name.lstrip("\\")
    if name.startswith("$flatten"):
        name = name[len("$flatten"):].lstrip("\\")
    i = name.find(kernel_prefix)
    if i >= 0:
        rest = name[i + len(kernel_prefix):]
        part = rest.split(".", 1)[0]
        if "." in rest and (parts is None or part in parts):
            return part
    return "glue"


# --- analysis ------------------------------------------------------------------------------

def analyze(module: dict, model: DelayModel = US_PLUS_2, *, parts: Mapping[str, str] | None = None,
            only_part: str | None = None) -> dict[str, TimingPath]:
    """Static timing of one flattened Yosys JSON module: ``{part: slowest path ending in it}``.

    Sequential cells (FF, SRL, block RAM, DSP48E2 registers, LUTRAM writes)
    start and end paths, so do module ports (a part's inputs arrive like a
    register output). ``parts``: the kernel's part names (cells are given to
    parts by name, see :func:`part_of`); ``only_part``: put every endpoint in
    that part (a module analysed on its own).
    """
    worst, cells_of = _walk(module, model, parts, only_part, lambda part, end: part)
    return {part: dataclasses.replace(path, cells=cells_of(bit)) for part, (path, bit) in worst.items()}


def slowest_endpoints(module: dict, model: DelayModel = US_PLUS_2, *, parts: Mapping[str, str] | None = None,
                      only_part: str | None = None, limit: int = 10) -> dict[str, list[TimingPath]]:
    """``{part: its limit slowest endpoints}``, slowest first, one path each (as :func:`analyze`'s):
    where to look after the slowest path. An endpoint is a register, a RAM or DSP input or a module
    output, named by its output net where the netlist keeps that name; the cells whose names differ
    only in digits (a register's bits, its copies per lane or row) count as one, by their slowest.
    ``max_logic_levels`` is that family's own deepest path."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    names = _net_names(module)
    cells = module.get("cells", {})

    def register(end: str) -> str:
        c = cells.get(end)
        label = end
        if c is not None:
            outs = _outputs(c)
            label = next((names[b] for p, bits in c["connections"].items() if p in outs
                          for b in bits if b in names), end)
        return re.sub(r"\[\d+\]$", "", label.lstrip("\\"))

    # one entry per family of registers: the digits of a name (bits, lanes, rows, Yosys's $123
    # cells) do not make another endpoint
    worst, cells_of = _walk(module, model, parts, only_part,
                            lambda part, end: (part, re.sub(r"\d+", "#", register(end))))
    out: dict[str, list[TimingPath]] = {}
    ranked = sorted(worst.items(), key=lambda kv: -kv[1][0].delay_ns)
    for (part, _), (path, bit) in ranked:
        kept = out.setdefault(part, [])
        if len(kept) < limit:
            kept.append(dataclasses.replace(path, start=register(path.start), end=register(path.end),
                                            cells=cells_of(bit)))
    return out


def _net_names(module: dict) -> dict[int, str]:
    """Bit -> the shortest name the netlist keeps for it (hidden names left out)."""
    names: dict[int, str] = {}
    for name, info in module.get("netnames", {}).items():
        if info.get("hide_name"):
            continue
        for b in info.get("bits", []):
            if isinstance(b, int) and (b not in names or len(name) < len(names[b])):
                names[b] = name
    return names


def _walk(module: dict, model: DelayModel, parts, only_part, key):
    """The path walk of :func:`analyze`: ``({key(part, end cell): (slowest path, its end bit)},
    cells_of)``, ``cells_of(bit)`` giving a kept path's combinational cells, first to last."""
    cells = module.get("cells", {})
    driver: dict[int, tuple[str, str]] = {}
    for name, c in cells.items():
        outs = _outputs(c)
        for port, bits in c["connections"].items():
            if port in outs:
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = (name, port)

    # per bit: (arrival ns, lut levels, carry4s, muxf, dsp, max lut levels, start cell, previous bit)
    memo: dict[int, tuple] = {}
    start_arrival = {}

    def launch(name: str) -> tuple[float, int]:
        """(clock-to-out, unregistered DSP stages) of a sequential cell's output."""
        c = cells[name]
        t = c["type"]
        if t.startswith(_FF_PREFIX):
            return model.ff_clk_to_q, 0
        if t in _SRL or t in _LUTRAM:
            return model.lutram_clk_to_out, 0
        if t in _BRAM or t in _URAM:
            reg = _param(c, "DOA_REG") or _param(c, "DOB_REG") or _param(c, "DO_REG") or _param(c, "OREG_A")
            return (model.bram_clk_to_out_reg if reg else model.bram_clk_to_out), 0
        if t in _DSP:
            if _param(c, "PREG", 1):
                return model.dsp_clk_to_out, 0
            stages = 1 if _param(c, "MREG", 1) else 2     # ALU (and the multiplier when M is not registered)
            return model.dsp_clk_to_out + stages * model.dsp_stage, stages
        return model.ff_clk_to_q, 0

    def comb_inputs(name: str, c: dict) -> list[tuple[str, list]]:
        t = c["type"]
        dirs = c.get("port_directions", {})
        ins = [(p, bits) for p, bits in c["connections"].items()
               if (dirs.get(p) == "input" if dirs else p not in _outputs(c))]
        if t in _LUTRAM:
            return [(p, b) for p, b in ins if p.startswith(_LUTRAM_ADDR)]
        return ins

    def is_comb(name: str, port: str) -> bool:
        t = cells[name]["type"]
        if t in _LUT or t in _CARRY or t in _MUXF:
            return True
        if t in _LUTRAM:
            return port.startswith(("O", "DO", "SPO", "DPO"))
        return False

    def arrive(bit) -> tuple:
        if not isinstance(bit, int) or bit not in driver:          # constant or module input
            return (model.ff_clk_to_q, 0, 0, 0, 0, 0, "<port>", None)
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in memo:
                stack.pop()
                continue
            name, port = driver[b]
            if not is_comb(name, port):
                t0, stages = launch(name)
                memo[b] = (t0, 0, 0, 0, stages, 0, name, None)
                stack.pop()
                continue
            c = cells[name]
            pending = [x for _, bits in comb_inputs(name, c) for x in bits
                       if isinstance(x, int) and x in driver and x not in memo]
            if pending:
                if len(stack) > 4 * len(driver) + 16:
                    raise RuntimeError("combinational loop in the netlist")
                stack.extend(pending)
                continue
            stack.pop()
            t = c["type"]
            best, deepest = None, 0
            for p, bits in comb_inputs(name, c):
                dedicated = (t in _CARRY and p in ("CI", "CI_TOP")) or t in _MUXF
                for x in bits:
                    a = arrive_done(x)
                    wire = 0.0 if dedicated else model.net
                    if t in _CARRY:
                        cell_delay = model.carry_stage * _CARRY[t] if p in ("CI", "CI_TOP") \
                            else model.carry_entry
                    elif t in _MUXF:
                        cell_delay = model.muxf
                    elif t in _LUTRAM:
                        cell_delay = model.lutram_read
                    else:
                        cell_delay = model.lut
                    arr = a[0] + wire + cell_delay
                    if best is None or arr > best[0]:
                        best = (arr, a, x)
                    deepest = max(deepest, a[5])
            if best is None:
                memo[b] = (model.ff_clk_to_q, 0, 0, 0, 0, 0, name, None)
                continue
            arr, a, x = best
            is_lut = t in _LUT and t != "INV" or t in _LUTRAM
            memo[b] = (arr, a[1] + is_lut, a[2] + (1 if t == "CARRY4" else 2 if t == "CARRY8" else 0),
                       a[3] + (t in _MUXF), a[4], deepest + is_lut, a[6], x)
        return memo[bit]

    def arrive_done(x) -> tuple:
        if not isinstance(x, int) or x not in driver:
            return (model.ff_clk_to_q, 0, 0, 0, 0, 0, "<port>", None)
        return memo[x] if x in memo else arrive(x)

    def setup_of(c: dict, port: str) -> tuple[float, int] | None:
        """(setup, unregistered DSP stages) of a sequential cell's input; None: not a path end."""
        t = c["type"]
        if t.startswith(_FF_PREFIX):
            return model.ff_setup, 0
        if t in _SRL or t in _LUTRAM:
            if t in _LUTRAM and port.startswith(_LUTRAM_ADDR) and not port.startswith("ADDRD"):
                return None                                  # a read address: the path goes on to DO
            return model.ff_setup + 0.2, 0
        if t in _BRAM or t in _URAM:
            return model.bram_setup, 0
        if t in _DSP:
            if port not in ("A", "B", "D") or _param(c, f"{port}REG", 1) or (port == "D" and _param(c, "DREG", 1)):
                return model.dsp_setup, 0
            stages = 1 if _param(c, "MREG", 1) else 2          # multiplier (+ ALU up to PREG)
            return model.dsp_setup + stages * model.dsp_stage, stages
        return None

    worst: dict[str, TimingPath] = {}
    for name, c in cells.items():
        t = c["type"]
        if t in _LUT or t in _CARRY or t in _MUXF:
            continue
        outs = _outputs(c)
        for port, bits in c["connections"].items():
            if port in outs:
                continue
            end = setup_of(c, port)
            if end is None:
                continue
            setup, stages = end
            for x in bits:
                if not isinstance(x, int) or x not in driver:
                    continue
                a = arrive_done(x)
                if stages:
                    a = (*a[:4], a[4] + stages, *a[5:])
                total = a[0] + model.net + setup + model.clock_margin
                _keep(worst, key(only_part or part_of(name, parts), name), total, a, name, x)
    for pname, bits in _module_outputs(module):
        for x in bits:
            if isinstance(x, int) and x in driver:
                a = arrive_done(x)
                total = a[0] + model.net + model.ff_setup + model.clock_margin
                end = f"<output {pname}>"
                _keep(worst, key(only_part or "glue", end), total, a, end, x)

    def cells_of(bit) -> tuple[str, ...]:
        found = []
        while isinstance(bit, int) and bit in driver and len(found) < MAX_PATH_CELLS:
            found.append(driver[bit][0])
            bit = memo[bit][7] if bit in memo else None
        return tuple(reversed(found))

    return worst, cells_of


def _module_outputs(module: dict):
    for name, p in module.get("ports", {}).items():
        if p.get("direction") == "output":
            yield name, p.get("bits", [])


def _keep(worst: dict, group, total: float, a: tuple, end: str, bit) -> None:
    old, old_bit = worst.get(group, (None, None))
    levels = max(a[5], old.max_logic_levels if old else 0)
    if old is None or total > old.delay_ns:
        worst[group] = (TimingPath(delay_ns=round(total, 3), fmax_estimate_mhz=round(1000.0 / total, 1),
                                  lut=a[1], carry8=a[2] / 2, muxf=a[3], dsp=a[4], max_logic_levels=levels,
                                  start=a[6], end=end), bit)
    elif levels != old.max_logic_levels:
        worst[group] = (dataclasses.replace(old, max_logic_levels=levels), old_bit)
