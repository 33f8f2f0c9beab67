"""AXI4-Lite control slave: the XRT ap_ctrl_hs register block of the kernel.

The register map is not written here: every offset, width and access kind comes
from :attr:`hbmforge.layout.DesignLayout.registers` (see docs/architecture.md
§2), so the RTL, the manifest and the host driver cannot disagree.

* ``CTRL``/``GIE``/``IER``/``ISR`` implement the Vitis ap_ctrl_hs protocol.
* Every other ``rw`` register (``program``, ``count``, ``w<i>``) is stored and
  presented on an ``Out`` member named after it in lower case.
* Every other ``ro`` register except the constants ``ID``/``VERSION``/``HASH``
  (``STATUS``, ``DESC_DONE``, the counters) is read from an ``In`` member
  named after it in lower case.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbmforge.layout import CTRL_ADDR_WIDTH, KERNEL_ID, LAYOUT_VERSION, DesignLayout

from ..axi import AXI4LiteSignature, RESP_OKAY

__all__ = ["ControlSlave", "CTRL_BITS"]

#: Bit positions in the CTRL register (ap_ctrl_hs).
CTRL_BITS = {"ap_start": 0, "ap_done": 1, "ap_idle": 2, "ap_ready": 3, "auto_restart": 7}

_PROTOCOL_REGS = ("CTRL", "GIE", "IER", "ISR")
_CONSTANT_REGS = ("ID", "VERSION", "HASH")


class ControlSlave(wiring.Component):
    """AXI4-Lite register block with ap_ctrl_hs semantics.

    Handshake with the kernel: ``start`` pulses for one cycle when a run is
    accepted (ap_start was set and the kernel was idle; ap_start clears in the
    same cycle); the kernel pulses ``done`` when the run is over, which sets
    ap_done and ap_ready and returns to idle. ``busy`` is high from the
    accepted start to the done pulse.

    The bus accepts AW and W in either order and on any cycles, and holds B
    and R until the host takes them; every response is OKAY. Reads of
    unmapped addresses return 0 and writes to them are ignored.
    """

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
        self._layout = layout
        regs = {r.name: r for r in layout.registers}
        for name in _PROTOCOL_REGS + _CONSTANT_REGS:
            if name not in regs:
                raise ValueError(f"layout has no {name} register; ControlSlave needs it")
        for r in layout.registers:
            if r.width not in (32, 64):
                raise ValueError(f"register {r.name} has width {r.width}; only 32 and 64 are supported")
            if r.offset % 4 or r.offset + r.width // 8 > 1 << CTRL_ADDR_WIDTH:
                raise ValueError(f"register {r.name} at offset {r.offset:#x} is not a word inside "
                                 f"the {1 << CTRL_ADDR_WIDTH}-byte control window")
        self._args = tuple(r for r in layout.registers
                           if r.name not in _PROTOCOL_REGS and r.access == "rw")
        self._inputs = tuple(r for r in layout.registers
                             if r.name not in _CONSTANT_REGS and r.access == "ro")
        unknown = [r.name for r in layout.registers
                   if r.name not in _PROTOCOL_REGS + _CONSTANT_REGS
                   and r not in self._args and r not in self._inputs]
        if unknown:
            raise ValueError(f"registers {unknown} have an access kind ControlSlave does not implement")
        members = {
            "bus": In(AXI4LiteSignature(addr_width=CTRL_ADDR_WIDTH)),
            "interrupt": Out(1),
            "start": Out(1),
            "done": In(1),
            "busy": Out(1),
        }
        for r in self._args:
            members[r.name.lower()] = Out(r.width)
        for r in self._inputs:
            members[r.name.lower()] = In(r.width)
        super().__init__(members)

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def arg_registers(self):
        """The stored argument registers (``rw``), in register-map order."""
        return self._args

    @property
    def input_registers(self):
        """The read-only registers fed by the kernel, in register-map order."""
        return self._inputs

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        bus = self.bus
        off = {r.name: r.offset for r in lay.registers}

        # -- ap_ctrl_hs state --------------------------------------------------------
        ap_start = Signal()
        ap_done = Signal()
        ap_ready = Signal()
        auto_restart = Signal()
        busy = Signal()
        gie = Signal()
        ier = Signal(2)
        isr = Signal(2)
        m.d.comb += [self.busy.eq(busy),
                     self.interrupt.eq(gie & (ier & isr).any())]

        accept = Signal()
        m.d.comb += accept.eq(ap_start & ~busy)
        m.d.comb += self.start.eq(accept)
        with m.If(accept):
            m.d.sync += busy.eq(1)
        with m.Elif(self.done):
            m.d.sync += busy.eq(0)

        # -- write path: AW and W latched independently, then one write + B ----------
        aw_full = Signal()
        aw_addr = Signal(CTRL_ADDR_WIDTH - 2)
        w_full = Signal()
        w_data = Signal(32)
        w_strb = Signal(4)
        b_valid = Signal()
        m.d.comb += [
            bus.awready.eq(~aw_full),
            bus.wready.eq(~w_full),
            bus.bvalid.eq(b_valid),
            bus.bresp.eq(RESP_OKAY),
        ]
        with m.If(bus.awvalid & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr[2:CTRL_ADDR_WIDTH])]
        with m.If(bus.wvalid & ~w_full):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        do_write = Signal()
        m.d.comb += do_write.eq(aw_full & w_full & ~b_valid)
        with m.If(do_write):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), b_valid.eq(1)]
        with m.Elif(b_valid & bus.bready):
            m.d.sync += b_valid.eq(0)

        def wr(name, word=0):
            return do_write & (aw_addr == (off[name] >> 2) + word)

        # byte-enable merge of one 32-bit word
        def merged(old):
            return Cat(*(Mux(w_strb[i], w_data[8 * i:8 * i + 8], old[8 * i:8 * i + 8]) for i in range(4)))

        for r in self._args:
            store = getattr(self, r.name.lower())
            for word in range(r.width // 32):
                with m.If(wr(r.name, word)):
                    m.d.sync += store[32 * word:32 * word + 32].eq(merged(store[32 * word:32 * word + 32]))

        with m.If(wr("GIE") & w_strb[0]):
            m.d.sync += gie.eq(w_data[0])
        with m.If(wr("IER") & w_strb[0]):
            m.d.sync += ier.eq(w_data[0:2])
        ctrl_write = wr("CTRL") & w_strb[0]
        with m.If(ctrl_write & w_data[CTRL_BITS["auto_restart"]]):
            m.d.sync += auto_restart.eq(1)
        with m.Elif(ctrl_write):
            m.d.sync += auto_restart.eq(0)
        # ap_start: host writes 1 to set; cleared when the run is accepted.
        with m.If(ctrl_write & w_data[CTRL_BITS["ap_start"]]):
            m.d.sync += ap_start.eq(1)
        with m.Elif(accept):
            m.d.sync += ap_start.eq(0)

        # -- read path: registered data, held until the host takes it ----------------
        r_valid = Signal()
        r_data = Signal(32)
        m.d.comb += [
            bus.arready.eq(~r_valid),
            bus.rvalid.eq(r_valid),
            bus.rdata.eq(r_data),
            bus.rresp.eq(RESP_OKAY),
        ]
        ar_hs = Signal()
        m.d.comb += ar_hs.eq(bus.arvalid & ~r_valid)
        ar_word = bus.araddr[2:CTRL_ADDR_WIDTH]
        with m.If(ar_hs):
            m.d.sync += r_valid.eq(1)
        with m.Elif(r_valid & bus.rready):
            m.d.sync += r_valid.eq(0)

        bits = CTRL_BITS
        ctrl_value = Signal(32)
        m.d.comb += [
            ctrl_value[bits["ap_start"]].eq(ap_start),
            ctrl_value[bits["ap_done"]].eq(ap_done),
            ctrl_value[bits["ap_idle"]].eq(~busy),
            ctrl_value[bits["ap_ready"]].eq(ap_ready),
            ctrl_value[bits["auto_restart"]].eq(auto_restart),
        ]
        words = {
            off["CTRL"] >> 2: ctrl_value,
            off["GIE"] >> 2: gie,
            off["IER"] >> 2: ier,
            off["ISR"] >> 2: isr,
        }
        consts = {"ID": KERNEL_ID, "VERSION": LAYOUT_VERSION, "HASH": lay.hash64}
        for name, value in consts.items():
            reg = lay.reg(name)
            for word in range(reg.width // 32):
                words[(reg.offset >> 2) + word] = Const((value >> (32 * word)) & 0xFFFF_FFFF, 32)
        for r in self._args + self._inputs:
            sig = getattr(self, r.name.lower())
            for word in range(r.width // 32):
                words[(r.offset >> 2) + word] = sig[32 * word:32 * word + 32]
        with m.If(ar_hs):
            with m.Switch(ar_word):
                for index in sorted(words):
                    with m.Case(index):
                        m.d.sync += r_data.eq(words[index])
                with m.Default():
                    m.d.sync += r_data.eq(0)

        # ap_done / ap_ready: set at the end of a run (set wins), clear on a CTRL read.
        ctrl_read = ar_hs & (ar_word == off["CTRL"] >> 2)
        with m.If(self.done):
            m.d.sync += [ap_done.eq(1), ap_ready.eq(1)]
        with m.Elif(ctrl_read):
            m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]

        # ISR: a bit is set by its event when enabled in IER (event wins); writing 1 toggles it.
        isr_toggle = Signal(2)
        with m.If(wr("ISR") & w_strb[0]):
            m.d.comb += isr_toggle.eq(w_data[0:2])
        for bit in range(2):
            with m.If(self.done & ier[bit]):
                m.d.sync += isr[bit].eq(1)
            with m.Elif(isr_toggle[bit]):
                m.d.sync += isr[bit].eq(~isr[bit])

        return m
