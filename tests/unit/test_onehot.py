"""OneHotFSM: one flag per state, exactly one set, transitions as written."""
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hbmforge.generators.onehot import OneHotFSM


def _machine():
    m = Module()
    go, out = Signal(), Signal(2)
    fsm = OneHotFSM(m, ["A", "B", "C"], name="t")
    with fsm.State("A"):
        with m.If(go):
            fsm.next = "B"
    with fsm.State("B"):
        m.d.comb += out.eq(1)
        with m.If(go):
            fsm.next = "C"
        with m.Else():
            fsm.next = "A"
    with fsm.State("C"):
        m.d.comb += out.eq(2)
        fsm.next = "A"
    return m, go, out, fsm


def test_transitions_follow_the_states_and_one_flag_is_set():
    m, go, out, fsm = _machine()
    seen = []

    async def bench(ctx):
        for g in [0, 1, 1, 0, 1, 0, 0]:
            ctx.set(go, g)
            await ctx.tick()
            flags = [ctx.get(fsm.ongoing(s)) for s in "ABC"]
            assert sum(flags) == 1
            seen.append("ABC"[flags.index(1)])

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == ["A", "B", "C", "A", "B", "A", "A"]


def test_bad_uses_are_refused():
    m = Module()
    with pytest.raises(ValueError, match="distinct"):
        OneHotFSM(m, ["A", "A"])
    with pytest.raises(ValueError, match="init"):
        OneHotFSM(m, ["A"], init="B")
    fsm = OneHotFSM(m, ["A", "B"])
    with pytest.raises(RuntimeError, match="outside"):
        fsm.next = "B"
    with pytest.raises(RuntimeError, match="inside"):
        with fsm.State("A"):
            with fsm.State("B"):
                pass
