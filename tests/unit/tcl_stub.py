"""Run a generated Vivado Tcl script in a plain Tcl interpreter with every Vivado command stubbed.

Vivado is not available here. Sourcing the script in Tcl (Python's tkinter
ships one) still proves it parses, that every variable it reads is set,
and which tool commands it issues with which arguments; the stubs return
plausible handles so the script's own checks (``if {... eq ""} error``) pass.
"""
from __future__ import annotations

from pathlib import Path

import pytest

_PRELUDE = r"""
set ::calls {}
rename file ::_tcl_file
proc file {sub args} {
    if {$sub eq "copy"} { lappend ::calls [list file copy {*}$args]; return }
    return [::_tcl_file $sub {*}$args]
}
proc unknown {cmd args} {
    lappend ::calls [list $cmd {*}$args]
    switch -glob -- $cmd {
        get_property        { if {[lindex $args 0] eq "PROGRESS"} { return "100%" } else { return "/tmp/run" } }
        get_board_parts     { return "" }
        get_ipdefs          { return "xilinx.com:ip:stub:1.0" }
        make_wrapper        { return "/tmp/wrapper.v" }
        get_files           { return "stub.file" }
        get_bd_*            { return [lindex $args end] }
        default             { return "stub" }
    }
}
"""


def run_tcl(script: Path, argv: list[str] | None = None) -> list[list[str]]:
    """Source ``script``; return every stubbed command call as a list of words."""
    tkinter = pytest.importorskip("tkinter", reason="needs Tcl (Python's tkinter)")
    tcl = tkinter.Tcl()
    tcl.eval(_PRELUDE)
    words = argv or []
    tcl.eval(f"set argc {len(words)}")
    tcl.call("set", "argv", tcl.call("list", *words) if words else "")
    tcl.call("source", str(script))
    calls = str(tcl.eval("set ::calls"))          # the string form: plain words, no Tcl_Obj
    return [[str(w) for w in tcl.splitlist(str(c))] for c in tcl.splitlist(calls)]


def calls_named(calls: list[list[str]], name: str) -> list[list[str]]:
    return [c for c in calls if c and c[0] == name]
