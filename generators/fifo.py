"""Synchronous FIFOs whose counters take the late handshakes as selects only.

amaranth's ``SyncFIFO``/``SyncFIFOBuffered`` count their level with ``level + 1`` and
``level - 1`` under ``w_en``/``r_en`` conditions; Yosys shares the two into one adder whose
operand is chosen by the handshake, so a consumer's ``ready`` (often several LUT levels of
routing and decisions already) runs into the bottom of a carry chain. These FIFOs behave
cycle for cycle like amaranth's (same ports, same ``level``, same first-word fall-through and
output register) but keep ``level + 1`` and ``level - 1`` in registers beside the level, so the
handshakes pick one of three flip-flops (docs/estimate.md, timing).
"""
from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Mux, Signal
from amaranth.lib.memory import Memory

from .counters import owned_step_count
from .params import require_positive_ints

__all__ = ["StepFIFO", "StepFIFOBuffered"]


class _FIFOPorts(Elaboratable):
    def __init__(self, *, width: int, depth: int, min_depth: int):
        self._MustUse__silence = True          # a refused FIFO is not an unused one
        require_positive_ints(width=width)
        if not isinstance(depth, int) or depth < min_depth:
            raise ValueError(f"depth must be an int of at least {min_depth}, got {depth!r}")
        self._MustUse__silence = False
        self.width, self.depth = width, depth
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.w_rdy = Signal()
        self.r_data = Signal(width)
        self.r_en = Signal()
        self.r_rdy = Signal()
        self.level = Signal(range(depth + 1))
        self.w_level = Signal(range(depth + 1))
        self.r_level = Signal(range(depth + 1))
        self.storage_attrs: dict[str, str] = {}

    def _pointer(self, m: Module, ptr, step, depth: int) -> None:
        """``ptr`` advances (wrapping at ``depth``) when ``step``: a clock enable, not an adder input."""
        with m.If(step):
            m.d.sync += ptr.eq(Mux(ptr == depth - 1, 0, ptr + 1))


class StepFIFO(_FIFOPorts):
    """``SyncFIFO(width, depth)`` (first-word fall-through, unregistered ``r_data``); depth 0 is
    never ready, as amaranth's."""

    def __init__(self, *, width: int, depth: int):
        super().__init__(width=width, depth=depth, min_depth=0)

    def elaborate(self, platform):
        m = Module()
        depth = self.depth
        if depth == 0:
            return m
        do_write, do_read = Signal(), Signal()
        m.d.comb += [
            self.w_rdy.eq(self.level != depth), self.r_rdy.eq(self.level != 0),
            self.w_level.eq(self.level), self.r_level.eq(self.level),
            do_write.eq(self.w_rdy & self.w_en), do_read.eq(self.r_rdy & self.r_en),
        ]
        m.submodules.storage = storage = Memory(shape=self.width, depth=depth, init=[],
                                                attrs=self.storage_attrs or None)
        w_port, r_port = storage.write_port(), storage.read_port(domain="comb")
        produce, consume = Signal(range(depth)), Signal(range(depth))
        m.d.comb += [w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(do_write),
                     r_port.addr.eq(consume), self.r_data.eq(r_port.data)]
        self._pointer(m, produce, do_write, depth)
        self._pointer(m, consume, do_read, depth)
        owned_step_count(m, self.level, do_write, do_read)
        return m


class StepFIFOBuffered(_FIFOPorts):
    """``SyncFIFOBuffered(width, depth)``: a memory of ``depth - 1`` words read into an output
    register (``r_data`` registered, a read takes effect the cycle after), depth >= 2."""

    def __init__(self, *, width: int, depth: int):
        super().__init__(width=width, depth=depth, min_depth=2)

    def elaborate(self, platform):
        m = Module()
        inner_depth = self.depth - 1
        inner_level = Signal(range(inner_depth + 1))
        inner_rdy = Signal()
        do_write, do_inner_read = Signal(), Signal()
        m.d.comb += [
            self.w_rdy.eq(inner_level != inner_depth), inner_rdy.eq(inner_level != 0),
            do_write.eq(self.w_rdy & self.w_en),
            do_inner_read.eq(inner_rdy & (~self.r_rdy | self.r_en)),
            self.level.eq(inner_level + self.r_rdy),
            self.w_level.eq(self.level), self.r_level.eq(self.level),
        ]
        m.submodules.storage = storage = Memory(shape=self.width, depth=inner_depth, init=[],
                                                attrs=self.storage_attrs or None)
        w_port, r_port = storage.write_port(), storage.read_port(domain="sync")
        produce, consume = Signal(range(inner_depth)), Signal(range(inner_depth))
        m.d.comb += [w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(do_write),
                     r_port.addr.eq(consume), r_port.en.eq(do_inner_read), self.r_data.eq(r_port.data)]
        self._pointer(m, produce, do_write, inner_depth)
        self._pointer(m, consume, do_inner_read, inner_depth)
        owned_step_count(m, inner_level, do_write, do_inner_read)
        with m.If(do_inner_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m
