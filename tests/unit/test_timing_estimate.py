"""`hbmforge.flows.timing`: the delay model, its LUT-level budget and the path walk on hand-built netlists."""
from __future__ import annotations


import pytest

from hbmforge.flows.timing import US_PLUS_2, analyze, part_of, slowest_endpoints

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

    def module(self, netnames: dict | None = None) -> dict:
        return {"ports": {}, "cells": self.cells, "netnames": netnames or {}}


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


def test_slowest_endpoints_lists_each_register_once_slowest_first_by_its_net_name():
    """A 3-bit register ``deep`` behind 5, 4 and 3 LUT levels (its bits one endpoint, named by their
    output net, at its slowest bit), a register ``flat`` behind one level, and another part's."""
    n = Net()
    q = n.ff("kernel.engine_a.src", n.bit())
    deep_q = []
    for bit, levels in enumerate((5, 4, 3)):
        x = q
        for i in range(levels):
            x = n.lut(f"kernel.engine_a.d{bit}_{i}", x, q)
        deep_q.append(n.ff(f"kernel.engine_a.$auto$ff.cc:1${bit}", x))
    flat_q = n.ff("kernel.engine_a.$auto$ff.cc:2$9", n.lut("kernel.engine_a.f", q))
    n.ff("kernel.port_w.r", n.lut("kernel.port_w.l", q))
    module = n.module({"kernel.engine_a.deep": {"bits": deep_q}, "kernel.engine_a.flat": {"bits": [flat_q]},
                       "d": {"bits": deep_q, "hide_name": 1}})
    by_part = slowest_endpoints(module, parts={"engine_a", "port_w"})
    ends = by_part["engine_a"]
    assert [e.end for e in ends] == ["kernel.engine_a.deep", "kernel.engine_a.flat"]
    assert [e.lut for e in ends] == [5, 1] and ends[0].max_logic_levels == 5
    assert ends[0].start == "kernel.engine_a.src" and len(ends[0].cells) == 6
    assert ends[0].delay_ns == analyze(module, parts={"engine_a", "port_w"})["engine_a"].delay_ns
    assert [e.end for e in by_part["port_w"]] == ["kernel.port_w.r"]
    assert slowest_endpoints(module, parts={"engine_a", "port_w"}, limit=1)["engine_a"] == ends[:1]
    alone = slowest_endpoints(module, only_part="engine_a")["engine_a"]
    assert [e.end for e in alone] == ["kernel.engine_a.deep", "kernel.engine_a.flat", "kernel.port_w.r"]
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(ValueError, match="limit"):
            slowest_endpoints(module, limit=bad)
