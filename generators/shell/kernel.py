"""The kernel: control slave, command processor, memory ports, counters and its engines.

Port names and IDs follow docs/architecture.md §1: ``s_axi_control``,
``interrupt`` and one ``m_axi_<port>`` AXI4 manager per
:attr:`~hbmforge.layout.DesignLayout.ports` entry. On ``m_axi_data`` the
descriptor fetch uses ARID 0 and engine data reader ``i`` ARID ``i + 1``; the
data writer uses AWID 0. Every ``w<i>`` port has one reader (ARID 0) when an
engine reads it and one writer (AWID 0) when an engine writes it; an engine with a
``Channels.prefetch`` (the matmul's ``weight_prefetch``) also has a reader of its own on each
port it streams from (ARID 1, a FIFO of ``prefetch`` words), a background reader beside the
other engines' one.

The kernel knows no engine by name: it takes a map opcode -> engine, checks each
engine's :class:`~hbmforge.generators.engine.EngineSignature` against the channels its
family declares (``layout.channels(kind)``), and routes the DMA channels to the engine
of the job in flight (``cmdproc.active``; engines run one at a time, except that the readers
of an engine with a prefetch follow it at all times, so that a job handed to it early
(``Channels.early_during``) streams while the engine before it runs). Top-level AXI4-Stream ports that a
family declares (``Channels.streams``, ``layout.streams``: ``s_axis_<name>``/``m_axis_<name>``)
are wired to their engine permanently; registers a family declares (``layout.registers``
after the shell's) are driven by the engine member of that name.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbmforge.layout import CTRL_ADDR_WIDTH, DesignLayout

from ..axi import AXI4LiteSignature, AXI4Signature
from ..engine import AxiStreamSignature, EngineSignature
from ..skid import slice_hold
from .cmdproc import CommandProcessor
from .control import ControlSlave
from .port import COUNTER_WIDTH, AxiPort

__all__ = ["Kernel", "data_read_ids"]

#: AWID of the writer on every port, ARID of the reader on a ``w<i>`` port.
WRITE_ID = 0
STREAM_READ_ID = 0
#: ARID of a prefetching engine's own reader on a ``w<i>`` port (``Channels.prefetch``)
PREFETCH_READ_ID = 1


def data_read_ids(layout: DesignLayout) -> dict[str, int]:
    """ARIDs on ``m_axi_data``: ``cmd`` (descriptor fetch) 0, engine reader ``r<i>`` ``i + 1``."""
    readers = max(len(layout.channels(f.kind).data_readers) for f in layout.families)
    return {"cmd": 0, **{f"r{i}": i + 1 for i in range(readers)}}


#: cycles from an engine's ``done`` to its next ``job`` when the next descriptor is loaded: the
#: command processor's check-and-dispatch cycles and the job slice's register
JOB_GAP_CYCLES = CommandProcessor.DISPATCH_CYCLES + 1


class Kernel(wiring.Component):
    """One XRT-style RTL kernel for a :class:`~hbmforge.layout.DesignLayout`.

    ``engines`` maps every opcode the layout runs (besides END) to an engine component;
    by default one engine per config entry from :mod:`hbmforge.generators.registry`.

    Counters (cleared when a run is accepted, held after it): CYCLES counts the cycles
    the kernel is busy; STALL_CYCLES the busy cycles in which an engine reports ``stall``;
    MAC_OPS adds every engine's ``mac_inc``; per port, the bytes of every R and W beat.
    """

    def __init__(self, layout: DesignLayout, engines=None):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
        if engines is None:
            from ..registry import default_engines

            engines = default_engines(layout)
        self._layout = layout
        self._engines = self._check_engines(layout, engines)
        members = {
            "s_axi_control": In(AXI4LiteSignature(addr_width=CTRL_ADDR_WIDTH)),
            "interrupt": Out(1),
        }
        for p in layout.ports:
            members[p.verilog_prefix] = Out(AXI4Signature(addr_width=p.addr_width,
                                                          data_width=p.data_width, id_width=p.id_width))
        for s in layout.streams:
            sig = AxiStreamSignature(s.port.data_width)
            members[s.prefix] = In(sig) if s.port.direction == "in" else Out(sig)
        super().__init__(members)

    @staticmethod
    def _check_engines(layout: DesignLayout, engines) -> tuple:
        """One engine per family of the layout, in family order, each with a fitting signature."""
        if not hasattr(engines, "items"):
            raise TypeError(f"engines must map opcodes to engine components, got {type(engines).__name__}")
        wanted = [op for name, op in layout.opcodes.items() if name != "END"]
        given = set(engines)
        if given != set(wanted):
            raise ValueError(f"engines must map exactly the opcodes {[op.name for op in wanted]} of "
                             f"{layout.kernel}; got {sorted(getattr(o, 'name', o) for o in given)}")
        order = []
        for fam in layout.families:
            engine = engines[fam.opcodes[0]]
            if any(engines[op] is not engine for op in fam.opcodes):
                raise ValueError(f"the opcodes of the {fam.kind} family must map to one engine")
            sig = getattr(engine, "signature", None)
            if not isinstance(engine, wiring.Component) or not isinstance(sig, EngineSignature):
                raise TypeError(f"the {fam.kind} engine must be a wiring.Component with an EngineSignature, "
                                f"got {engine!r}")
            want = layout.channels(fam.kind)
            regs = fam.registers(layout)
            faults = bool(fam.runtime_errors)
            if sig.channels != want or sig.data_width != layout.config.data_width or sig.registers != regs \
                    or sig.faults != faults:
                raise TypeError(f"the {fam.kind} engine's EngineSignature must have channels {want!r}, "
                                f"data_width {layout.config.data_width}, registers "
                                f"{[r.name for r in regs]} and faults={faults}, got {sig!r}")
            if any(e is engine for e in order):
                raise ValueError(f"one engine component serves two families ({fam.kind}); give each its own")
            order.append(engine)
        return tuple(order)

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def engines(self) -> tuple:
        """The engines, in ``layout.families`` order."""
        return self._engines

    def engine(self, kind: str):
        for fam, engine in zip(self._layout.families, self._engines):
            if fam.kind == kind:
                return engine
        raise ValueError(f"{self._layout.kernel} has no {kind} engine")

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        cfg = lay.config
        engines = self._engines
        axi = dict(max_burst_beats=cfg.axi.max_burst_beats, max_outstanding=cfg.axi.max_outstanding)

        m.submodules.control = control = ControlSlave(lay)
        pf_index, prefetch, depth = _prefetch_engine(lay, engines)
        # the prefetching engine takes its job during a job of the kinds it names
        during = lay.channels(lay.families[pf_index].kind).early_during if prefetch else ()
        early = (pf_index, tuple(k for k, f in enumerate(lay.families) if f.kind in during)) if during else None
        m.submodules.cmdproc = cmdproc = CommandProcessor(lay, [e.signature.job_layout for e in engines], early)
        for fam, engine in zip(lay.families, engines):
            m.submodules[f"engine_{fam.kind}"] = engine

        # -- memory ports: the channels some engine uses --------------------------------------
        read_ids = data_read_ids(lay)
        ports = {}
        for p in lay.ports:
            common = dict(data_width=p.data_width, addr_width=p.addr_width, id_width=p.id_width, **axi)
            if p.role == "data":
                port = AxiPort(readers=read_ids, writer="out" if p.writes else None, awid=WRITE_ID, **common)
            else:
                i = int(p.name[1:])
                # below ``prefetch`` the prefetching engine has a reader of its own: "w" serves the others
                shared = _shared_readers(engines, i, pf_index, prefetch)
                readers = {"w": STREAM_READ_ID} if p.reads and any(shared) else {}
                if i < prefetch:
                    readers["pf"] = PREFETCH_READ_ID
                port = AxiPort(readers=readers, writer="w" if p.writes else None, awid=WRITE_ID,
                               reader_fifo_depth={"pf": depth} if i < prefetch else None,
                               background=("pf",) if i < prefetch and "w" in readers else (), **common)
            m.submodules[f"port_{p.name}"] = ports[p.name] = port
            wiring.connect(m, wiring.flipped(getattr(self, p.verilog_prefix)), port.bus)
            m.d.comb += port.clear.eq(control.start)
        data = ports["data"]
        streams = [ports[p.name] for p in lay.ports if p.role == "stream"]

        # -- host <-> control <-> command processor ------------------------------------------
        wiring.connect(m, wiring.flipped(self.s_axi_control), control.bus)
        m.d.comb += [
            self.interrupt.eq(control.interrupt),
            cmdproc.start.eq(control.start),
            cmdproc.program.eq(control.program),
            cmdproc.count.eq(control.count),
            control.done.eq(cmdproc.done),
        ]
        wiring.connect(m, data.rd_cmd, cmdproc.fetch)

        # -- command processor <-> engines <-> DMA ------------------------------------------
        # The channels follow ``cmdproc.active``, which changes only when a job is
        # dispatched (the previous engine has received every word it asked for by then).
        # (as one-hot flip-flops set with it: a port's valid into an engine is one AND of registers)
        sel = cmdproc.active_onehot
        # each job record through a one-register slice: the engine's job logic starts from
        # flip-flops, not from the command processor's state and descriptor decode (one cycle a job)
        for e, (fam, engine) in enumerate(zip(lay.families, engines)):
            slice_hold(m, f"job_slice_{fam.kind}", cmdproc.job(e), engine.job)
        _select_into(m, sel, [e.done for e in engines], cmdproc.job_done)
        for e, engine in enumerate(engines):
            if engine.signature.faults:
                with m.If(sel[e]):
                    m.d.comb += cmdproc.job_code.eq(engine.fault)
        errors = []
        for i in range(len(read_ids) - 1):
            chan = getattr(data, f"rd_r{i}")
            names = [e.signature.channels.data_readers for e in engines]
            _select_into(m, sel, [getattr(e, f"{n[i]}_cmd") if i < len(n) else None
                                  for e, n in zip(engines, names)], chan.cmd)
            _select_from(m, sel, chan.data, [getattr(e, f"{n[i]}_data") if i < len(n) else None
                                             for e, n in zip(engines, names)])
            errors.append(chan.error)
        if data.writer is not None:
            writers = [e if e.signature.channels.data_writer else None for e in engines]
            _select_into(m, sel, _members(writers, "out_cmd"), data.wr_out.cmd)
            _select_into(m, sel, _members(writers, "out_data"), data.wr_out.data)
            _select_from(m, sel, data.wr_out.done, _members(writers, "out_done"))
            errors.append(data.wr_out.error)
        for i, port in enumerate(streams):
            owner = next((e for e in engines if i in e.signature.channels.resident), None)
            if owner is not None:
                errors += _connect_resident(m, sel, engines, owner, i, port)
                continue
            if i < prefetch:
                # the prefetching engine's own reader: always connected; its error counts while it runs
                pf_engine = engines[pf_index]
                wiring.connect(m, pf_engine.w_cmd[i], port.rd_pf.cmd)
                wiring.connect(m, port.rd_pf.data, pf_engine.w_data[i])
                errors.append(port.rd_pf.error & sel[pf_index])
            if "w" in port.readers:
                readers = _shared_readers(engines, i, pf_index, prefetch)
                _select_into(m, sel, _members(readers, "w_cmd", i), port.rd_w.cmd)
                _select_from(m, sel, port.rd_w.data, _members(readers, "w_data", i))
                errors.append(port.rd_w.error)
            if port.writer is not None:
                writers = [e if e.signature.channels.stream_writers > i else None for e in engines]
                _select_into(m, sel, _members(writers, "sw_cmd", i), port.wr_w.cmd)
                _select_into(m, sel, _members(writers, "sw_data", i), port.wr_w.data)
                _select_from(m, sel, port.wr_w.done, _members(writers, "sw_done", i))
                errors.append(port.wr_w.error)
        # registered: the OR over every port's flags stays out of the command processor's decisions;
        # a flag rises with the failed beat or response, at least two cycles before the command
        # processor sees that job's done (the engine's done, the done record's register slice)
        m.d.sync += cmdproc.data_error.eq(Cat(*errors).any())

        # -- engine-owned stream ports and registers ----------------------------------------
        for fam, engine in zip(lay.families, engines):
            for port in engine.signature.channels.streams:
                if port.direction == "in":
                    wiring.connect(m, wiring.flipped(getattr(self, port.prefix)), getattr(engine, port.prefix))
                else:
                    wiring.connect(m, getattr(engine, port.prefix), wiring.flipped(getattr(self, port.prefix)))
            if engine.signature.registers:
                m.d.comb += engine.clear.eq(control.start)

        # -- performance counters ----------------------------------------------------------
        # an engine's stall and mac_inc are registered before the 64-bit adds (they come out of
        # its scheduling logic), so each busy cycle's share is added one cycle later
        cycles = Signal(COUNTER_WIDTH)
        stalls = Signal(COUNTER_WIDTH)
        macs = Signal(COUNTER_WIDTH)
        stall_r = Signal()
        incs = [e.mac_inc for e in engines if e.signature.max_mac_inc]
        inc_r = Signal(range(sum(e.signature.max_mac_inc for e in engines) + 1))
        # the running engine's stalls (an engine handed its job early waits, it does not stall)
        m.d.sync += [stall_r.eq(control.busy & Cat(*(e.stall & sel[k] for k, e in enumerate(engines))).any()),
                     inc_r.eq(Mux(control.busy, sum(incs), 0) if incs else 0)]
        with m.If(control.start):
            m.d.sync += [cycles.eq(0), stalls.eq(0), macs.eq(0), stall_r.eq(0), inc_r.eq(0)]
        with m.Else():
            m.d.sync += [cycles.eq(cycles + control.busy), stalls.eq(stalls + stall_r), macs.eq(macs + inc_r)]

        sources = {"status": cmdproc.status, "desc_done": cmdproc.desc_done, "cycles": cycles,
                   "stall_cycles": stalls, "mac_ops": macs}
        for name, port in ports.items():
            sources[f"{name}_bytes_read"] = port.bytes_read
            sources[f"{name}_bytes_written"] = port.bytes_written
        for engine in engines:
            for reg in engine.signature.registers:
                sources[reg.name.lower()] = getattr(engine, reg.name.lower())
        for reg in control.input_registers:
            key = reg.name.lower()
            if key not in sources:
                raise ValueError(f"register {reg.name} has no source in the kernel")
            m.d.comb += getattr(control, key).eq(sources[key])
        return m


def _prefetch_engine(lay: DesignLayout, engines) -> tuple[int, int, int]:
    """``(engine index, stream ports it reads through readers of its own, their FIFO depth)`` of
    the engine whose family declares a ``Channels.prefetch``; ``(0, 0, 0)`` without one."""
    found = [k for k, f in enumerate(lay.families) if lay.channels(f.kind).prefetch]
    if len(found) > 1:
        raise ValueError(f"at most one engine may prefetch, got {[lay.families[k].kind for k in found]}")
    if not found:
        return 0, 0, 0
    k = found[0]
    return k, engines[k].signature.channels.stream_readers, lay.channels(lay.families[k].kind).prefetch


def _shared_readers(engines, i, pf_index, prefetch) -> list:
    """Per engine, itself if it reads port ``w<i>`` through the port's shared reader ("w", following
    ``active``), else None: every engine that reads the port, but the prefetching one below
    ``prefetch`` (it has a reader of its own there)."""
    return [e if e.signature.channels.stream_readers > i and (k != pf_index or i >= prefetch) else None
            for k, e in enumerate(engines)]


def _connect_resident(m, sel, engines, owner, i, port) -> list:
    """Port ``w<i>`` belongs to a resident engine (``Channels.resident``): its reader and writer
    follow that engine at all times; if it interposes the port, the other engines' channels of
    the port reach its ``via_*`` members, still following ``sel``. The port's error flags."""
    if port.readers:
        wiring.connect(m, owner.w_cmd[i], port.rd_w.cmd)
        wiring.connect(m, port.rd_w.data, owner.w_data[i])
    if port.writer is not None:
        wiring.connect(m, owner.sw_cmd[i], port.wr_w.cmd)
        wiring.connect(m, owner.sw_data[i], port.wr_w.data)
        wiring.connect(m, port.wr_w.done, owner.sw_done[i])
    chans = owner.signature.channels
    if i in chans.interposes:
        j = chans.interposes.index(i)
        readers = [e if e is not owner and e.signature.channels.stream_readers > i else None for e in engines]
        _select_into(m, sel, _members(readers, "w_cmd", i), owner.via_cmd[j])
        _select_from(m, sel, owner.via_data[j], _members(readers, "w_data", i))
        writers = [e if e is not owner and e.signature.channels.stream_writers > i else None for e in engines]
        _select_into(m, sel, _members(writers, "sw_cmd", i), owner.via_wcmd[j])
        _select_into(m, sel, _members(writers, "sw_data", i), owner.via_wdata[j])
        _select_from(m, sel, owner.via_wdone[j], _members(writers, "sw_done", i))
    return [c.error for c in (getattr(port, "rd_w", None) if port.readers else None,
                              port.wr_w if port.writer is not None else None) if c is not None]


def _members(engines, name, index=None):
    """Member ``name`` (entry ``index`` of an array member) of each engine; None for None."""
    out = []
    for e in engines:
        member = None if e is None else getattr(e, name)
        out.append(member if member is None or index is None else member[index])
    return out


def _select_into(m, sel, sources, sink):
    """Drive stream ``sink`` from the source whose bit of the one-hot ``sel`` is set (``None``: that
    engine has no such stream)."""
    for i, src in enumerate(sources):
        if src is None:
            continue
        with m.If(sel[i]):
            m.d.comb += [sink.valid.eq(src.valid), sink.payload.eq(src.payload), src.ready.eq(sink.ready)]


def _select_from(m, sel, source, sinks):
    """Deliver stream ``source`` to the sink whose bit of the one-hot ``sel`` is set; the other
    sinks see no valid."""
    for i, dst in enumerate(sinks):
        if dst is None:
            continue
        picked = sel[i]
        m.d.comb += [dst.payload.eq(source.payload), dst.valid.eq(source.valid & picked)]
        with m.If(picked):
            m.d.comb += source.ready.eq(dst.ready)
