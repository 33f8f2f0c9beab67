"""`hbmforge.flows.timing`: the delay model, its LUT-level budget and the path walk on hand-built netlists."""
from __future__ import annotations


import pytest

from hbmforge.flows.timing import US_PLUS_2, analyze, part_of

M = US_PLUS_2


class Net:
    """Builds a Yosys ``write_json`` module: cells with connections and port directions."""

    def __init__(self):
        self.cells, self.next_bit = {}, 2

    def bit(self) -> int:
        self.next_bit += 1
        return self.next_bit

    def cell(self, name, type_, ins: dict, outs: dict, **params) -> None:
        self.cells[name] = {"type": type_, "parameters": params,
                            "port_directions": {**{p: "input" for p in ins}, **{p: "output" for p in outs}},
                            "connections": {**ins, **outs}}

    def ff(self, name, d) -> int:
        q = self.bit()
        self.cell(name, "FDRE", {"D": [d], "C": ["0"], "CE": ["1"], "R": ["0"]}, {"Q": [q]})
        return q

    def lut(self, name, *ins) -> int:
        o = self.bit()
        self.cell(name, f"LUT{len(ins)}", {f"I{i}": [b] for i, b in enumerate(ins)}, {"O": [o]})
        return o

    def module(self) -> dict:
        return {"ports": {}, "cells": self.cells}


def chain(levels: int, prefix: str = "kernel.engine_x.") -> Net:
    n = Net()
    q = n.ff(prefix + "src", n.bit())
    x = q
    for i in range(levels):
        x = n.lut(f"{prefix}l{i}", x, q)
    n.ff(prefix + "dst", x)
    return n


def test_budget_is_six_lut_levels_at_300_mhz_and_eight_at_250():
    assert M.lut_budget(300) == 6 and M.lut_budget(250) == 8
    # the budget is exactly what fits: k levels fit, k + 1 do not
    k = M.lut_budget(300)
    assert M.overhead() + k * M.level() <= 1000 / 300 < M.overhead() + (k + 1) * M.level()
    assert M.sources and all(isinstance(s, str) and s for s in M.sources)


@pytest.mark.parametrize("levels", [0, 1, 6, 7, 12])
def test_lut_chain_delay_levels_and_fmax_follow_the_model(levels):
    found = analyze(chain(levels).module(), parts={"engine_x"})
    path = found["engine_x"]
    assert path.lut == levels and path.max_logic_levels == levels and path.carry8 == 0
    assert path.delay_ns == pytest.approx(M.overhead() + levels * M.level(), abs=1e-3)
    assert path.fmax_estimate_mhz == pytest.approx(1000 / path.delay_ns, abs=0.1)
    assert (path.fmax_estimate_mhz >= 300) == (levels <= M.lut_budget(300))
    assert path.start.endswith("src") and path.end.endswith("dst")
    assert path.cells == (path.start, *(f"kernel.engine_x.l{i}" for i in range(levels)))


def test_carry_chain_costs_one_entry_and_a_small_step_per_stage_without_nets():
    n = Net()
    q = n.ff("kernel.engine_x.a", n.bit())
    ci = q
    outs = []
    for i in range(8):                                   # a 32-bit adder: 8 CARRY4 = 4 CARRY8
        co, o = n.bit(), n.bit()
        n.cell(f"kernel.engine_x.c{i}", "CARRY4", {"CI": [ci], "S": [q, q, q, q], "DI": [q, q, q, q]},
               {"CO": [co], "O": [o]})
        ci = co
        outs.append(o)
    n.ff("kernel.engine_x.sum", outs[-1])
    path = analyze(n.module(), parts={"engine_x"})["engine_x"]
    assert path.carry8 == 4 and path.lut == 0
    # entry at the first CARRY4 (after a net), then 7 CARRY4 steps of half a CARRY8 each
    assert path.delay_ns == pytest.approx(M.overhead() + M.net + M.carry_entry + 7 * M.carry_stage / 2, abs=1e-3)


def test_paths_count_where_they_end_and_the_slowest_and_deepest_are_kept_apart():
    n = Net()
    q = n.ff("kernel.engine_a.r", n.bit())
    x = q
    for i in range(3):
        x = n.lut(f"kernel.engine_a.l{i}", x)
    n.ff("kernel.port_w.r", x)                            # ends in port_w
    y = n.lut("kernel.engine_a.m", q)
    n.ff("kernel.engine_a.s", y)
    found = analyze(n.module(), parts={"engine_a", "port_w"})
    assert found["port_w"].lut == 3 and found["engine_a"].lut == 1
    assert part_of("$flatten\\kernel.engine_a.$abc$1$aiger$o2", {"engine_a"}) == "engine_a"
    assert part_of("kernel.cycles[0]", {"engine_a"}) == "glue"


def test_an_unregistered_dsp_adds_its_internal_stages_to_the_path():
    n = Net()
    q = n.ff("kernel.engine_x.a", n.bit())
    p = n.bit()
    n.cell("kernel.engine_x.mul", "DSP48E2", {"A": [q], "B": [q], "CLK": ["0"]}, {"P": [p]},
           AREG=1, BREG=1, MREG=0, PREG=0)
    n.ff("kernel.engine_x.y", n.lut("kernel.engine_x.l", p))
    path = analyze(n.module(), parts={"engine_x"})["engine_x"]
    assert path.dsp == 2 and path.lut == 1
    assert path.delay_ns == pytest.approx(M.dsp_clk_to_out + 2 * M.dsp_stage + M.level() + M.net + M.ff_setup
                                          + M.clock_margin, abs=1e-3)
    n.cells["kernel.engine_x.mul"]["parameters"].update(MREG=1, PREG=1)
    assert analyze(n.module(), parts={"engine_x"})["engine_x"].dsp == 0
