"""Up/down counters whose late inputs only select: ``count += up - down`` with the adders on the
register alone.

Written as one expression, ``count + up - down`` puts the two pulses at the bottom of a carry
chain; when they come from a fire or handshake decision (several LUT levels already) the chain
then follows that decision. Here ``count + 1`` and ``count - 1`` are computed from the flip-flops
in parallel with the decision and the pulses pick one of three values: one LUT level after them.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal

__all__ = ["step_count", "owned_step_count", "CountDown"]


def step_count(m: Module, count, up, down) -> None:
    """``count`` becomes ``count + up - down`` next cycle (``up``/``down`` one-bit pulses)."""
    width = len(count)
    m.d.sync += count.eq(Mux(up == down, count, Mux(up, (count + 1)[:width], (count - 1)[:width])))


def owned_step_count(m: Module, level, up, down) -> tuple:
    """``level += up - down`` with ``level + 1`` and ``level - 1`` kept in registers of their own
    (updated by the same selects): the handshakes choose among flip-flops. (``level ± 1`` formed
    from ``level`` feed one multiplexer, and Yosys's ``opt_share`` merges them into one adder
    whose operand the handshakes pick, putting them back in front of a carry chain, which
    :func:`step_count` can suffer.) Only this helper may write ``level`` (no loads or clears
    beside it); reset restores the three registers' consistent initial values. Returns the
    ``(level + 1, level - 1)`` registers (for a caller that needs them without an adder)."""
    width = len(level)
    plus = Signal(width, init=1, name=f"{level.name}_plus")
    minus = Signal(width, init=(1 << width) - 1, name=f"{level.name}_minus")
    with m.If(up & ~down):
        m.d.sync += [level.eq(plus), plus.eq(plus + 1), minus.eq(level)]
    with m.Elif(down & ~up):
        m.d.sync += [level.eq(minus), plus.eq(level), minus.eq(minus - 1)]
    return plus, minus


class CountDown:
    """A loop's iterations after the current one, with its end tests kept as flip-flops: ``last``
    (none after this one) and ``next_last`` (one after this one). A step then moves a flag into
    a flag and compares the counter with a constant, so the loop's step decision (a handshake)
    selects between registers instead of sitting in front of a wide compare of two registers."""

    def __init__(self, width: int, name: str):
        self.left = Signal(width, name=f"{name}_left")
        self.last = Signal(name=f"{name}_last")
        self.next_last = Signal(name=f"{name}_next_last")

    def load(self, left, last, next_last) -> list:
        """Statements starting the loop: ``left`` iterations after the first, ``last`` = ``left == 0``
        and ``next_last`` = ``left == 1`` (registers computed ahead by the caller)."""
        return [self.left.eq(left), self.last.eq(last), self.next_last.eq(next_last)]

    def step(self) -> list:
        """Statements moving to the next iteration."""
        return [self.left.eq(self.left - 1), self.last.eq(self.next_last), self.next_last.eq(self.left == 2)]
