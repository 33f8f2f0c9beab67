"""One-hot state machines: one flip-flop per state, so a state test is that flip-flop.

Amaranth's ``m.FSM`` keeps its state as a binary number, and Yosys leaves it so (its FSM
extraction skips a state register with an initial value, which every Amaranth register has):
each ``with m.State(...)`` then decodes the whole register, up to four LUT levels in front of
whatever the state gates. :class:`OneHotFSM` is the same machine with a flag per state.

Unlike ``m.next``, a transition here cannot be overridden by a later one in the same cycle: the
transitions a state takes in one cycle must sit in exclusive branches (``If``/``Elif``/``Else``,
``Switch`` cases).
"""
from __future__ import annotations

from contextlib import contextmanager

from amaranth.hdl import Module, Signal

__all__ = ["OneHotFSM"]


class OneHotFSM:
    """A state machine of ``states`` (names, the first the initial one unless ``init``) on ``m``."""

    def __init__(self, m: Module, states, *, init: str | None = None, name: str = "fsm"):
        states = list(states)
        if len(set(states)) != len(states) or not states:
            raise ValueError(f"states must be distinct names, got {states}")
        init = states[0] if init is None else init
        if init not in states:
            raise ValueError(f"init {init!r} is not one of {states}")
        self._m = m
        self._flags = {s: Signal(init=int(s == init), name=f"{name}_{s.lower()}") for s in states}
        self._current: str | None = None

    def ongoing(self, state: str) -> Signal:
        """The flag of ``state`` (1 while the machine is in it)."""
        return self._flags[state]

    @contextmanager
    def State(self, state: str):  # noqa: N802 - mirrors Amaranth's m.State
        """Statements that apply while in ``state``."""
        if self._current is not None:
            raise RuntimeError(f"State({state!r}) inside State({self._current!r})")
        self._current = state
        try:
            with self._m.If(self._flags[state]):
                yield
        finally:
            self._current = None

    @property
    def next(self):
        raise AttributeError("next is write-only")

    @next.setter
    def next(self, state: str) -> None:
        """Go to ``state`` next cycle (inside a :meth:`State` block)."""
        if self._current is None:
            raise RuntimeError("a transition outside a State block")
        if state == self._current:
            return
        self._m.d.sync += [self._flags[self._current].eq(0), self._flags[state].eq(1)]
