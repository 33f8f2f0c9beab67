"""One AXI4 memory port shared by several burst readers and an optional writer.

Read requests from several readers are merged round-robin onto AR through one
register stage (a single reader's AR, already registered, passes straight through); read data is registered once and routed to its reader by RID
(every reader has its own ARID, so responses for different readers may
interleave). The readers' credits guarantee FIFO room for every beat in
flight, so RREADY is tied high and R never sees a bubble caused by the port.
Every reader's and the writer's commands, and the writer's data, enter through a register
slice, so an engine's command and output logic and the port's burst arithmetic and FIFO level
are separate register stages.
A port without a writer (weights) drives its write channels idle, and a port
without readers its read channels, so every AXI member is present.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..axi import AXI4Signature
from ..streams import JobDone, dma_command_stream, word_stream
from ..skid import slice_stream
from .dma import BurstReader, BurstWriter, drive_idle_read, drive_idle_write

__all__ = ["ReadChannelSignature", "WriteChannelSignature", "AxiPort", "COUNTER_WIDTH"]

COUNTER_WIDTH = 64
_AR_FIELDS = ("arid", "araddr", "arlen", "arsize", "arburst", "arlock", "arcache", "arprot",
              "arqos", "arregion")
_WRITE_OUT = ("awid", "awaddr", "awlen", "awsize", "awburst", "awlock", "awcache", "awprot",
              "awqos", "awregion", "awvalid", "wdata", "wstrb", "wlast", "wvalid", "bready")
_WRITE_IN = ("awready", "wready", "bid", "bresp", "bvalid")


class ReadChannelSignature(wiring.Signature):
    """A read channel as the port offers it: DmaCommands in, words out, a sticky error flag."""

    def __init__(self, data_width: int):
        self._data_width = data_width
        super().__init__({
            "cmd": In(dma_command_stream()),
            "data": Out(word_stream(data_width)),
            "error": Out(1),
        })

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return isinstance(other, ReadChannelSignature) and other.data_width == self.data_width

    def __repr__(self):
        return f"ReadChannelSignature({self.data_width})"


class WriteChannelSignature(wiring.Signature):
    """A write channel as the port offers it: DmaCommands and words in, one done per command."""

    def __init__(self, data_width: int):
        self._data_width = data_width
        super().__init__({
            "cmd": In(dma_command_stream()),
            "data": In(word_stream(data_width)),
            "done": Out(stream.Signature(JobDone)),
            "error": Out(1),
        })

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return isinstance(other, WriteChannelSignature) and other.data_width == self.data_width

    def __repr__(self):
        return f"WriteChannelSignature({self.data_width})"


class AxiPort(wiring.Component):
    """An AXI4 manager port with named readers (``rd_<name>``) and an optional writer (``wr_<name>``).

    ``readers`` maps reader name -> ARID (distinct, fitting ``id_width``).
    ``reader_fifo_depth``: every reader's FIFO depth, or a map reader name -> depth (readers
    not named keep the default, ``max_burst_beats * max_outstanding``).
    ``background``: readers whose bursts go out only while every other reader is idle (no
    command in hand, no burst in flight: a weight prefetch must not slow the engine that runs);
    the others share the AR channel round-robin.
    ``bytes_read``/``bytes_written`` count data beats on the bus since the
    last ``clear`` (which also clears the readers'/writer's error flags).
    """

    def __init__(self, *, data_width: int, addr_width: int = 64, id_width: int = 4,
                 readers: dict[str, int] | None = None, writer: str | None = None, awid: int = 0,
                 max_burst_beats: int = 32, max_outstanding: int = 8,
                 reader_fifo_depth: int | dict[str, int] | None = None, writer_fifo_depth: int | None = None,
                 background: tuple[str, ...] = ()):
        readers = dict(readers or {})
        for name, arid in readers.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"reader names must be identifiers, got {name!r}")
            if not isinstance(arid, int) or not 0 <= arid < 1 << id_width:
                raise ValueError(f"reader {name!r}: ARID must be an int in [0, {(1 << id_width) - 1}] "
                                 f"(id_width {id_width}), got {arid!r}")
        ids = list(readers.values())
        if len(set(ids)) != len(ids):
            raise ValueError(f"readers must have distinct ARIDs (read data is routed by RID), got {readers}")
        if writer is not None and (not isinstance(writer, str) or not writer.isidentifier()):
            raise ValueError(f"writer must be an identifier or None, got {writer!r}")
        if not readers and writer is None:
            raise ValueError("a port needs at least one reader or a writer")
        self._data_width, self._addr_width, self._id_width = data_width, addr_width, id_width
        self._readers, self._writer, self._awid = readers, writer, awid
        self._max_burst_beats, self._max_outstanding = max_burst_beats, max_outstanding
        self._reader_fifo_depth, self._writer_fifo_depth = reader_fifo_depth, writer_fifo_depth
        background = tuple(background)
        if any(name not in readers for name in background) or len(background) >= max(len(readers), 1):
            raise ValueError(f"background must name some but not all of the readers {sorted(readers)}, "
                             f"got {background}")
        self._background = background
        depths = reader_fifo_depth if isinstance(reader_fifo_depth, dict) else {}
        unknown = sorted(set(depths) - set(readers))
        if unknown:
            raise ValueError(f"reader_fifo_depth names readers the port does not have: {unknown}; "
                             f"readers: {sorted(readers)}")
        # build the engines now so that bad parameters fail in the constructor
        self._reader_blocks = {
            name: BurstReader(data_width=data_width, addr_width=addr_width, id_width=id_width,
                              arid=arid, max_burst_beats=max_burst_beats, max_outstanding=max_outstanding,
                              fifo_depth=depths.get(name) if isinstance(reader_fifo_depth, dict)
                              else reader_fifo_depth)
            for name, arid in readers.items()}
        self._writer_block = None if writer is None else BurstWriter(
            data_width=data_width, addr_width=addr_width, id_width=id_width, awid=awid,
            max_burst_beats=max_burst_beats, max_outstanding=max_outstanding,
            fifo_depth=writer_fifo_depth)
        members = {
            "bus": Out(AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)),
            "clear": In(1),
            "bytes_read": Out(COUNTER_WIDTH),
            "bytes_written": Out(COUNTER_WIDTH),
        }
        for name in readers:
            members[f"rd_{name}"] = Out(ReadChannelSignature(data_width))
        if writer is not None:
            members[f"wr_{writer}"] = Out(WriteChannelSignature(data_width))
        super().__init__(members)

    data_width = property(lambda self: self._data_width)
    addr_width = property(lambda self: self._addr_width)
    id_width = property(lambda self: self._id_width)
    readers = property(lambda self: dict(self._readers))
    writer = property(lambda self: self._writer)
    awid = property(lambda self: self._awid)
    max_burst_beats = property(lambda self: self._max_burst_beats)
    max_outstanding = property(lambda self: self._max_outstanding)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        W = self._data_width
        shift = (W // 8).bit_length() - 1

        # -- readers --------------------------------------------------------------------
        rds = []
        for name, rd in self._reader_blocks.items():
            m.submodules[f"rd_{name}"] = rd
            chan = getattr(self, f"rd_{name}")
            slice_stream(m, f"rd_{name}_cmd_slice", chan.cmd, rd.cmd)
            wiring.connect(m, rd.data, wiring.flipped(chan.data))
            m.d.comb += [chan.error.eq(rd.error), rd.clear.eq(self.clear)]
            rds.append(rd)

        if not rds:
            drive_idle_read(m, bus, W)
        else:
            n = len(rds)
            if n == 1:
                # a single reader's AR is already registered and AXI-stable: pass it through
                rd = rds[0]
                m.d.comb += [getattr(bus, f).eq(getattr(rd.bus, f)) for f in _AR_FIELDS + ("arvalid",)]
                m.d.comb += rd.bus.arready.eq(bus.arready)
            else:
                # AR: one output register, refilled round-robin whenever it is empty or taken
                ar_valid = Signal()
                load = Signal()
                m.d.comb += [bus.arvalid.eq(ar_valid), load.eq(~ar_valid | bus.arready)]
                last = Signal(range(n), init=n - 1)     # reader granted last
                grant = Signal(range(n))
                names = list(self._reader_blocks)
                back = [names.index(b) for b in self._background]
                # a background reader asks only while the others are idle
                fg_busy = Cat(*(rd.busy for i, rd in enumerate(rds) if i not in back)).any()
                asks = [rd.bus.arvalid & ~fg_busy if i in back else rd.bus.arvalid for i, rd in enumerate(rds)]
                any_valid = Signal()
                m.d.comb += any_valid.eq(Cat(*asks).any())
                # priority starts after ``last``; in a chain of Ifs the last one that matches
                # wins, so the highest-priority reader goes last (background readers at the
                # low end: they win only when no other reader asks)
                with m.Switch(last):
                    for prev in range(n):
                        with m.Case(prev):
                            order = [(prev + k) % n for k in range(1, n + 1)]
                            order = [i for i in order if i not in back] + [i for i in order if i in back]
                            for idx in reversed(order):
                                with m.If(asks[idx]):
                                    m.d.comb += grant.eq(idx)
                with m.If(load):
                    m.d.sync += ar_valid.eq(any_valid)
                    with m.If(any_valid):
                        m.d.sync += last.eq(grant)
                        with m.Switch(grant):
                            for i, rd in enumerate(rds):
                                with m.Case(i):
                                    m.d.sync += [getattr(bus, f).eq(getattr(rd.bus, f)) for f in _AR_FIELDS]
                for i, rd in enumerate(rds):
                    m.d.comb += rd.bus.arready.eq(load & any_valid & (grant == i))

            # R: registered once, routed by RID, never back-pressured
            r_valid = Signal()
            r_id = Signal(self._id_width)
            r_data = Signal(W)
            r_resp = Signal(2)
            r_last = Signal()
            m.d.comb += bus.rready.eq(1)
            m.d.sync += [r_valid.eq(bus.rvalid), r_id.eq(bus.rid), r_data.eq(bus.rdata),
                         r_resp.eq(bus.rresp), r_last.eq(bus.rlast)]
            for (name, arid), rd in zip(self._readers.items(), rds):
                m.d.comb += [
                    rd.bus.rvalid.eq(r_valid & (r_id == arid)),
                    rd.bus.rid.eq(r_id), rd.bus.rdata.eq(r_data),
                    rd.bus.rresp.eq(r_resp), rd.bus.rlast.eq(r_last),
                ]
            # the readers' unused write channels
            for rd in rds:
                m.d.comb += [rd.bus.awready.eq(0), rd.bus.wready.eq(0), rd.bus.bvalid.eq(0),
                             rd.bus.bid.eq(0), rd.bus.bresp.eq(0)]

        # -- writer ---------------------------------------------------------------------
        if self._writer_block is None:
            drive_idle_write(m, bus, W)
        else:
            wr = m.submodules[f"wr_{self._writer}"] = self._writer_block
            chan = getattr(self, f"wr_{self._writer}")
            slice_stream(m, f"wr_{self._writer}_cmd_slice", chan.cmd, wr.cmd)
            slice_stream(m, f"wr_{self._writer}_data_slice", chan.data, wr.data)
            wiring.connect(m, wr.done, wiring.flipped(chan.done))
            m.d.comb += [chan.error.eq(wr.error), wr.clear.eq(self.clear)]
            m.d.comb += [getattr(bus, f).eq(getattr(wr.bus, f)) for f in _WRITE_OUT]
            m.d.comb += [getattr(wr.bus, f).eq(getattr(bus, f)) for f in _WRITE_IN]
            m.d.comb += [wr.bus.arready.eq(0), wr.bus.rvalid.eq(0), wr.bus.rid.eq(0),
                         wr.bus.rdata.eq(0), wr.bus.rresp.eq(0), wr.bus.rlast.eq(0)]

        # -- byte counters (beats, scaled by the word size when read out) -------------------
        r_beats = Signal(COUNTER_WIDTH - shift)
        w_beats = Signal(COUNTER_WIDTH - shift)
        with m.If(self.clear):
            m.d.sync += [r_beats.eq(0), w_beats.eq(0)]
        with m.Else():
            with m.If(bus.rvalid & bus.rready):
                m.d.sync += r_beats.eq(r_beats + 1)
            with m.If(bus.wvalid & bus.wready):
                m.d.sync += w_beats.eq(w_beats + 1)
        m.d.comb += [self.bytes_read.eq(r_beats << shift), self.bytes_written.eq(w_beats << shift)]
        return m
