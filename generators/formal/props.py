"""Named properties: Amaranth ``Assert``/``Assume``/``Cover`` with a name, and "the last cycle".

Every property a checker adds goes through :class:`Properties`, which gives it a unique name
(the ``Assert`` message, so it shows in the RTLIL ``$check`` cell, in a simulation failure and
in SymbiYosys's report) and keeps the list of names a run proves. Amaranth 0.5 has no
``Past``; :meth:`Properties.past` registers a value and a ``past_valid`` flag gates every
property that looks back, so the first cycle (no past yet) never fails one.

Properties are checked at the clock edge (``m.d.sync += Assert(...)``), on the settled values
of the cycle: in ``amaranth.sim`` a combinational check would also see the transient values
of delta cycles. SymbiYosys checks them on the same cycles.
"""
from __future__ import annotations

from contextlib import contextmanager

from amaranth.hdl import Assert, Assume, Cover, Module, Signal, Value

__all__ = ["Properties", "replaced"]


@contextmanager
def replaced(module, **objects):
    """Within the block, ``module``'s globals named in ``objects`` are those objects: a checked
    harness (or a mutation test) elaborates a production component with a checked (or broken)
    subclass of a block it builds by name."""
    saved = {name: getattr(module, name) for name in objects}
    for name, obj in objects.items():
        setattr(module, name, obj)
    try:
        yield
    finally:
        for name, obj in saved.items():
            setattr(module, name, obj)


class Properties:
    """Collects the named properties of one formal harness (see module doc)."""

    def __init__(self, m: Module):
        self.m = m
        self.asserts: list[str] = []
        self.assumes: list[str] = []
        self.covers: list[str] = []
        self.past_valid = Signal(name="past_valid")
        m.d.sync += self.past_valid.eq(1)

    def _name(self, name: str) -> str:
        if not name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"property names are identifiers with dots, got {name!r}")
        if name in self.asserts or name in self.assumes or name in self.covers:
            raise ValueError(f"property {name!r} is defined twice")
        return name

    def past(self, value, name: str | None = None) -> Signal:
        """``value`` one cycle ago (its init value in the first cycle)."""
        value = Value.cast(value)
        reg = Signal(value.shape(), name=name or "past")
        self.m.d.sync += reg.eq(value)
        return reg

    def assert_(self, name: str, test, *, after_first: bool = False) -> None:
        """``test`` holds on every cycle (after the first one when ``after_first``)."""
        self.asserts.append(self._name(name))
        cond = (~self.past_valid | test) if after_first else test
        self.m.d.sync += Assert(cond, name)

    def assume(self, name: str, test, *, after_first: bool = False) -> None:
        """The environment keeps ``test`` (a rule of the bus partner the proof relies on)."""
        self.assumes.append(self._name(name))
        cond = (~self.past_valid | test) if after_first else test
        self.m.d.sync += Assume(cond, name)

    def cover(self, name: str, test) -> None:
        """``test`` can happen (the proof is not vacuous: SymbiYosys cover mode finds a trace)."""
        self.covers.append(self._name(name))
        self.m.d.sync += Cover(test, name)

    def merge(self, other: "Properties") -> None:
        for mine, theirs in ((self.asserts, other.asserts), (self.assumes, other.assumes),
                             (self.covers, other.covers)):
            mine.extend(theirs)
