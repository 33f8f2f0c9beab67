"""The kernel: control slave, command processor, memory ports, counters and one engine.

Port names and IDs follow docs/architecture.md §1: ``s_axi_control``,
``interrupt`` and one ``m_axi_<port>`` AXI4 manager per
:attr:`~hbmforge.layout.DesignLayout.ports` entry. On ``m_axi_data`` the
command fetch, activation, scale and requant readers use ARID 0..3 and the
output writer AWID 0; every weight port has one reader with ARID 0.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbmforge.layout import CTRL_ADDR_WIDTH, DesignLayout

from ..axi import AXI4LiteSignature, AXI4Signature
from ..matmul.signature import MatmulEngineSignature
from .cmdproc import CommandProcessor
from .control import ControlSlave
from .port import COUNTER_WIDTH, AxiPort

__all__ = ["Kernel", "DATA_READ_IDS", "DATA_WRITE_ID", "WEIGHT_READ_ID"]

#: ARIDs of the readers on ``m_axi_data`` (docs/architecture.md §1).
DATA_READ_IDS = {"cmd": 0, "act": 1, "scale": 2, "rq": 3}
#: AWID of the output writer on ``m_axi_data``.
DATA_WRITE_ID = 0
#: ARID of the reader on each weight port.
WEIGHT_READ_ID = 0


class Kernel(wiring.Component):
    """One XRT-style RTL kernel for a :class:`~hbmforge.layout.DesignLayout`.

    ``engine`` must have :class:`MatmulEngineSignature` for the layout's
    rows, weight ports and data width; by default it is
    :class:`hbmforge.generators.matmul.engine.MatmulEngine`.

    Counters (cleared when a run is accepted, held after it): CYCLES counts
    the cycles the kernel is busy; STALL_CYCLES the busy cycles in which the
    engine is busy and its array does not fire; MAC_OPS adds
    ``fire_rows * lanes`` per fire; per port, the bytes of every R and W beat.
    """

    def __init__(self, layout: DesignLayout, engine=None, attention=None):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
        cfg = layout.config
        if (1 << cfg.axi.id_width) < len(DATA_READ_IDS):
            raise ValueError(f"axi.id_width {cfg.axi.id_width} is too narrow: m_axi_data needs "
                             f"{len(DATA_READ_IDS)} distinct ARIDs ({DATA_READ_IDS}); use id_width >= 2")
        mm = layout.mm
        expected = MatmulEngineSignature(rows=mm.rows, weight_ports=mm.weight_ports,
                                         data_width=cfg.data_width)
        if engine is None:
            from ..matmul.engine import MatmulEngine
            engine = MatmulEngine(layout)
        if not isinstance(engine, wiring.Component) or engine.signature != expected:
            raise TypeError(f"engine must be a wiring.Component with {expected!r} "
                            f"(rows={mm.rows}, weight_ports={mm.weight_ports}, "
                            f"data_width={cfg.data_width}), got {engine!r}")
        if layout.attention is not None and attention is None:
            from ..attention.engine import AttentionEngine
            attention = AttentionEngine(layout)
        if layout.attention is None and attention is not None:
            raise TypeError("attention engine given, but the config has no attention engine")
        self._layout = layout
        self._engine = engine
        self._attention = attention
        members = {
            "s_axi_control": In(AXI4LiteSignature(addr_width=CTRL_ADDR_WIDTH)),
            "interrupt": Out(1),
        }
        for p in layout.ports:
            members[p.verilog_prefix] = Out(AXI4Signature(addr_width=p.addr_width,
                                                          data_width=p.data_width, id_width=p.id_width))
        super().__init__(members)

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def engine(self):
        return self._engine

    @property
    def attention(self):
        return self._attention

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        cfg = lay.config
        mm = lay.mm
        engine = self._engine
        axi = dict(max_burst_beats=cfg.axi.max_burst_beats, max_outstanding=cfg.axi.max_outstanding)

        m.submodules.control = control = ControlSlave(lay)
        m.submodules.cmdproc = cmdproc = CommandProcessor(lay)
        m.submodules.engine = engine

        ports = {}
        for p in lay.ports:
            common = dict(data_width=p.data_width, addr_width=p.addr_width, id_width=p.id_width, **axi)
            if p.role == "data":
                port = AxiPort(readers=DATA_READ_IDS, writer="out", awid=DATA_WRITE_ID, **common)
            else:
                port = AxiPort(readers={"w": WEIGHT_READ_ID}, **common)
            m.submodules[f"port_{p.name}"] = ports[p.name] = port
            wiring.connect(m, wiring.flipped(getattr(self, p.verilog_prefix)), port.bus)
            m.d.comb += port.clear.eq(control.start)
        data = ports["data"]
        wports = [ports[p.name] for p in lay.ports if p.role == "weights"]

        # host <-> control <-> command processor
        wiring.connect(m, wiring.flipped(self.s_axi_control), control.bus)
        m.d.comb += [
            self.interrupt.eq(control.interrupt),
            cmdproc.start.eq(control.start),
            cmdproc.program.eq(control.program),
            cmdproc.count.eq(control.count),
            control.done.eq(cmdproc.done),
        ]
        wiring.connect(m, data.rd_cmd, cmdproc.fetch)

        # command processor <-> engines <-> DMA. Engines run one at a time: the channels
        # follow ``cmdproc.active``, which changes only when a job is dispatched (the
        # previous engine has received every word it asked for by then).
        engines = [engine] + ([self._attention] if self._attention is not None else [])
        if self._attention is not None:
            m.submodules.attention = self._attention
            wiring.connect(m, cmdproc.job_attn, self._attention.job)
        wiring.connect(m, cmdproc.job, engine.job)
        sel = cmdproc.active
        _select_into(m, sel, [e.done for e in engines], cmdproc.job_done)
        for name in ("act", "scale", "rq"):
            chan = getattr(data, f"rd_{name}")
            _select_into(m, sel, [getattr(e, f"{name}_cmd") for e in engines], chan.cmd)
            _select_from(m, sel, chan.data, [getattr(e, f"{name}_data") for e in engines])
        for i, port in enumerate(wports):
            _select_into(m, sel, [e.w_cmd[i] if i < len(e.w_cmd) else None for e in engines],
                         port.rd_w.cmd)
            _select_from(m, sel, port.rd_w.data,
                         [e.w_data[i] if i < len(e.w_data) else None for e in engines])
        _select_into(m, sel, [e.out_cmd for e in engines], data.wr_out.cmd)
        _select_into(m, sel, [e.out_data for e in engines], data.wr_out.data)
        _select_from(m, sel, data.wr_out.done, [e.out_done for e in engines])
        errors = [data.rd_act.error, data.rd_scale.error, data.rd_rq.error, data.wr_out.error]
        errors += [port.rd_w.error for port in wports]
        m.d.comb += cmdproc.data_error.eq(Cat(*errors).any())

        # performance counters
        cycles = Signal(COUNTER_WIDTH)
        stalls = Signal(COUNTER_WIDTH)
        macs = Signal(COUNTER_WIDTH)
        lanes_shift = mm.lanes.bit_length() - 1
        with m.If(control.start):
            m.d.sync += [cycles.eq(0), stalls.eq(0), macs.eq(0)]
        with m.Elif(control.busy):
            m.d.sync += cycles.eq(cycles + 1)
            stall = engine.busy & ~engine.fire
            mac_inc = Mux(engine.fire, engine.fire_rows << lanes_shift, 0)
            if self._attention is not None:
                stall = stall | self._attention.stall
                mac_inc = mac_inc + self._attention.mac_inc
            with m.If(stall):
                m.d.sync += stalls.eq(stalls + 1)
            m.d.sync += macs.eq(macs + mac_inc)

        sources = {"status": cmdproc.status, "desc_done": cmdproc.desc_done, "cycles": cycles,
                   "stall_cycles": stalls, "mac_ops": macs}
        for name, port in ports.items():
            sources[f"{name}_bytes_read"] = port.bytes_read
            sources[f"{name}_bytes_written"] = port.bytes_written
        for reg in control.input_registers:
            key = reg.name.lower()
            if key not in sources:
                raise ValueError(f"register {reg.name} has no source in the kernel")
            m.d.comb += getattr(control, key).eq(sources[key])
        return m


def _select_into(m, sel, sources, sink):
    """Drive stream ``sink`` from ``sources[sel]`` (``None``: that engine has no such stream)."""
    for i, src in enumerate(sources):
        if src is None:
            continue
        with m.If(sel == i):
            m.d.comb += [sink.valid.eq(src.valid), sink.payload.eq(src.payload), src.ready.eq(sink.ready)]


def _select_from(m, sel, source, sinks):
    """Deliver stream ``source`` to ``sinks[sel]``; the other sinks see no valid."""
    for i, dst in enumerate(sinks):
        if dst is None:
            continue
        picked = sel == i
        m.d.comb += [dst.payload.eq(source.payload), dst.valid.eq(source.valid & picked)]
        with m.If(picked):
            m.d.comb += source.ready.eq(dst.ready)

