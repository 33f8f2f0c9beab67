"""Formal harnesses of the shell: the memory ports with their DMA readers/writer, and the control slave.

Each harness is a top-level Elaboratable that holds one shell component, leaves every input
of it free (a SymbiYosys input may take any value on any cycle, except where a ``mem.*``,
``host.*`` or ``env.*`` assumption says what a legal bus partner does) and adds the
properties of :mod:`.axi4` and :mod:`.control`. The DMA blocks inside a port are replaced by
the ``Checked*`` subclasses below, which add their internal properties (no FIFO is ever
written full or read empty: the credits hold) after the production ``elaborate``; the
production classes carry no verification logic.

Dataflow of a port harness::

    free cmd/data streams --> [CheckedAxiPort: CheckedBurstReader x n, CheckedBurstWriter]
                                   | m_axi (asserted: AXI4 manager rules)
                                   v
    free AXI responses (assumed: a legal memory) --> back into the port
"""
from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, ResetSignal, Signal, Value
from amaranth.lib import wiring

from ..shell.control import ControlSlave
from ..shell.dma import BurstReader, BurstWriter
from ..shell.port import AxiPort
from .axi4 import axi4_manager_properties, stream_properties
from .control import ap_ctrl_hs_properties, axi_lite_subordinate_properties
from .props import Properties

__all__ = ["CheckedBurstReader", "CheckedBurstWriter", "CheckedAxiPort", "PortHarness", "ControlHarness",
           "free_inputs"]


def free_inputs(component: wiring.Component) -> list[Signal]:
    """The input signals of a component (they stay free in the proof unless assumed)."""
    return [Value.cast(value) for _path, member, value in component.signature.flatten(component)
            if member.flow == wiring.In]


def _assume_word_commands(p: Properties, cmd, data_width: int, name: str) -> None:
    """The engine contract (docs/architecture.md §6): DmaCommand address and length are word multiples."""
    shift = (data_width // 8).bit_length() - 1
    if shift:
        p.assume(f"{name}.words", ~cmd.valid | ((cmd.payload.addr[:shift] == 0) & (cmd.payload.bytes[:shift] == 0)))


class CheckedBurstReader(BurstReader):
    """A BurstReader whose elaborate adds: the data FIFO is never written full (``rd.fifo_room``:
    the credits hold, so R needs no back-pressure), the data stream keeps the stream rules, and
    the command stream is assumed to."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self.properties = Properties(m)
        fifo = m.submodules.fifo
        p.assert_("rd.fifo_room", ~fifo.w_en | fifo.w_rdy)
        stream_properties(p, self.data, "rd.data", producer_checked=True)
        stream_properties(p, self.cmd, "env.rd.cmd", producer_checked=False)
        _assume_word_commands(p, self.cmd, self.data_width, "env.rd.cmd")
        p.cover("rd.credits_all_in_fifo", fifo.r_level == self.fifo_depth)   # (the FIFO has one entry more)
        return m


class CheckedBurstWriter(BurstWriter):
    """A BurstWriter whose elaborate adds: its burst-tracking, length and data FIFOs never
    overflow or underflow, ``done`` keeps the stream rules; command and data assumed to."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self.properties = Properties(m)
        for name in ("track", "wlen"):          # the data FIFO's writes are gated by its w_rdy
            fifo = m.submodules[name]
            p.assert_(f"wr.{name}_room", ~fifo.w_en | fifo.w_rdy)
        for name in ("track", "wlen", "fifo"):
            fifo = m.submodules[name]
            p.assert_(f"wr.{name}_no_underflow", ~fifo.r_en | fifo.r_rdy)
        _assume_word_commands(p, self.cmd, self.data_width, "env.wr.cmd")
        stream_properties(p, self.done, "wr.done", producer_checked=True)
        stream_properties(p, self.cmd, "env.wr.cmd", producer_checked=False)
        stream_properties(p, self.data, "env.wr.data", producer_checked=False)
        return m


class CheckedAxiPort(AxiPort):
    """An AxiPort built from :class:`CheckedBurstReader`/:class:`CheckedBurstWriter` blocks.

    ``reader_class``/``writer_class`` let a mutation test put a broken block in their place.
    """

    def __init__(self, *, reader_class=CheckedBurstReader, writer_class=CheckedBurstWriter, **kwargs):
        super().__init__(**kwargs)
        for block in [*self._reader_blocks.values(), self._writer_block]:
            if block is not None:
                block._MustUse__silence = True       # replaced below, never elaborated
        common = dict(data_width=self.data_width, addr_width=self.addr_width, id_width=self.id_width,
                      max_burst_beats=self.max_burst_beats, max_outstanding=self.max_outstanding)
        self._reader_blocks = {name: reader_class(arid=arid, fifo_depth=self._reader_fifo_depth, **common)
                               for name, arid in self.readers.items()}
        if self.writer is not None:
            self._writer_block = writer_class(awid=self.awid, fifo_depth=self._writer_fifo_depth, **common)


class PortHarness(Elaboratable):
    """An AXI4 memory port (``AxiPort`` arguments) with the AXI4 manager properties on its bus.

    The bounds asserted are the promised ones: ``max_outstanding`` read bursts per reader and
    ``max_outstanding`` write bursts; a mutation test passes a ``port`` built with broken blocks.
    """

    def __init__(self, port: AxiPort | None = None, **kwargs):
        self.port = port if port is not None else CheckedAxiPort(**kwargs)
        self.limit = kwargs.get("max_outstanding", self.port.max_outstanding)
        self.properties: Properties | None = None

    @property
    def ports(self) -> list[Signal]:
        return free_inputs(self.port)

    def elaborate(self, platform):
        m = Module()
        m.submodules.port = port = self.port
        p = self.properties = Properties(m)
        p.assume("env.no_reset", ~ResetSignal())
        axi4_manager_properties(
            p, port.bus, data_width=port.data_width, max_burst_beats=port.max_burst_beats,
            read_ids={arid: self.limit for arid in port.readers.values()} or None,
            write_limit=self.limit if port.writer is not None else None)
        return m


class ControlHarness(Elaboratable):
    """The AXI4-Lite control slave with the AXI-Lite subordinate and ap_ctrl_hs properties."""

    def __init__(self, layout=None, *, control: ControlSlave | None = None):
        if control is None and layout is None:
            raise ValueError("ControlHarness needs a layout or a ControlSlave")
        self.control = control if control is not None else ControlSlave(layout)
        self.properties: Properties | None = None

    @property
    def ports(self) -> list[Signal]:
        return free_inputs(self.control)

    def elaborate(self, platform):
        m = Module()
        m.submodules.control = ctl = self.control
        p = self.properties = Properties(m)
        p.assume("env.no_reset", ~ResetSignal())
        axi_lite_subordinate_properties(p, ctl.bus)
        ap_ctrl_hs_properties(p, ctl)
        return m
