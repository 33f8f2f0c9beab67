"""Burst DMA engines: turn DmaCommand streams into AXI4 INCR bursts and back.

:class:`BurstReader` and :class:`BurstWriter` each own a whole
:class:`~hbmforge.generators.axi.AXI4Signature` manager interface (the unused
direction tied idle) so that they can be tested alone against a memory model;
the port block (:mod:`.port`) merges several of them onto one memory port.

Rules both obey (docs/architecture.md §1): INCR bursts of full-width beats,
at most ``max_burst_beats`` beats, never crossing a 4 KiB boundary.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..axi import AXI4Signature, BURST_INCR, RESP_OKAY
from ..counters import step_count
from ..fifo import StepFIFO, StepFIFOBuffered
from ..streams import JobDone, dma_command_stream, word_stream

__all__ = ["BurstReader", "BurstWriter", "AXCACHE", "drive_idle_read", "drive_idle_write"]

#: ARCACHE/AWCACHE: normal non-cacheable bufferable, what Vitis m_axi masters use.
AXCACHE = 0b0011
_PAGE = 4096


def _check_common(data_width, addr_width, id_width, max_burst_beats, max_outstanding):
    if data_width not in (32, 64, 128, 256, 512, 1024):
        raise ValueError(f"data_width must be a power of two in [32, 1024], got {data_width!r}")
    if not isinstance(addr_width, int) or not 13 <= addr_width <= 64:
        raise ValueError(f"addr_width must be an int in [13, 64], got {addr_width!r}")
    if not isinstance(id_width, int) or not 1 <= id_width <= 16:
        raise ValueError(f"id_width must be an int in [1, 16], got {id_width!r}")
    if max_burst_beats not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        raise ValueError(f"max_burst_beats must be a power of two in [1, 256], got {max_burst_beats!r}")
    if not isinstance(max_outstanding, int) or not 1 <= max_outstanding <= 64:
        raise ValueError(f"max_outstanding must be an int in [1, 64], got {max_outstanding!r}")


def _axsize(data_width):
    return (data_width // 8).bit_length() - 1


def drive_idle_read(m, bus, data_width):
    """Tie a manager's read channels idle (every member driven, responses accepted)."""
    m.d.comb += [
        bus.arvalid.eq(0), bus.arid.eq(0), bus.araddr.eq(0), bus.arlen.eq(0),
        bus.arsize.eq(_axsize(data_width)), bus.arburst.eq(BURST_INCR), bus.arlock.eq(0),
        bus.arcache.eq(AXCACHE), bus.arprot.eq(0), bus.arqos.eq(0), bus.arregion.eq(0),
        bus.rready.eq(1),
    ]


def drive_idle_write(m, bus, data_width):
    """Tie a manager's write channels idle (every member driven, responses accepted)."""
    m.d.comb += [
        bus.awvalid.eq(0), bus.awid.eq(0), bus.awaddr.eq(0), bus.awlen.eq(0),
        bus.awsize.eq(_axsize(data_width)), bus.awburst.eq(BURST_INCR), bus.awlock.eq(0),
        bus.awcache.eq(AXCACHE), bus.awprot.eq(0), bus.awqos.eq(0), bus.awregion.eq(0),
        bus.wvalid.eq(0), bus.wdata.eq(0), bus.wstrb.eq(0), bus.wlast.eq(0),
        bus.bready.eq(1),
    ]


class _BurstSplitter:
    """Shared arithmetic: the next burst of a command, cut at max_burst and at 4 KiB.

    ``addr`` and ``left`` (words) are registers the caller changes only through :meth:`load` and
    :meth:`advance` (which keep ``to_page``, the words to the page's end, beside them). ``beats``
    (the length of the burst that starts at ``addr``) and ``last`` (it is the command's last) are
    registers computed from them one cycle later, so the burst arithmetic (three compares and a
    choice) and the issue decision are two register stages;
    ``fresh`` says they belong to the current ``addr``/``left``. A mover issues at most one
    burst per two cycles anyway (into an empty AR/AW register), so the stage costs one cycle per
    command, not bandwidth.
    """

    def __init__(self, m, *, data_width, addr_width, max_burst_beats):
        self._m = m
        self.shift = _axsize(data_width)
        page_words = _PAGE >> self.shift
        self.addr = Signal(addr_width)
        self.left = Signal(32 - self.shift + 1)
        self.beats = Signal(range(max(max_burst_beats, 1) + 1))
        self.last = Signal()
        self.fresh = Signal()
        self._touch = Signal()
        # words from addr to the 4 KiB page's end: a register kept with addr (load: from the new
        # address; advance: down by the burst, a full page after a burst that reached the end),
        # so the burst compares below start at flip-flops, not behind a subtraction
        self._page_words = page_words
        self.to_page = to_page = Signal(range(page_words + 1), init=page_words)
        limit = min(max_burst_beats, page_words)
        # min(left, limit, to_page), with ``limit`` a constant: the three pairwise compares side by
        # side, then one choice (not a compare after a min); ``last``: the min is ``left``
        left_first = Signal()
        m.d.comb += left_first.eq((self.left <= limit) & (self.left <= to_page))
        beats = Signal.like(self.beats)
        m.d.comb += beats.eq(Mux(left_first, self.left, Mux(to_page < limit, to_page, limit)))
        m.d.sync += [self.beats.eq(beats), self.last.eq(left_first), self.fresh.eq(~self._touch)]

    def load(self, addr, words):
        """Start a command: its first word's address and its length in words (sync)."""
        self._m.d.comb += self._touch.eq(1)
        self._m.d.sync += [self.addr.eq(addr), self.left.eq(words),
                           self.to_page.eq(self._page_words - addr[self.shift:12])]

    def advance(self):
        """Step past the burst ``beats`` describes (sync; only while ``fresh``)."""
        self._m.d.comb += self._touch.eq(1)
        self._m.d.sync += [self.addr.eq(self.addr + (self.beats << self.shift)), self.left.eq(self.left - self.beats),
                           self.to_page.eq(Mux(self.to_page == self.beats, self._page_words,
                                               self.to_page - self.beats))]


#: reader FIFOs deeper than this (a weight prefetch) ask for UltraRAM: a 4096 x 513-bit FIFO is 8
#: URAM blocks instead of 57 BRAM36 (Vivado's default for such a memory)
URAM_FIFO_DEPTH = 2048


def _read_fifo(width: int, depth: int) -> StepFIFOBuffered:
    """The reader's data FIFO; its storage carries ``ram_style = "ultra"`` when it is deep."""
    fifo = StepFIFOBuffered(width=width, depth=depth)
    if depth > URAM_FIFO_DEPTH:
        fifo.storage_attrs["ram_style"] = "ultra"
    return fifo


class _BurstMover(wiring.Component):
    """What a reader and a writer share: validated AXI parameters, a command stream, a bus."""

    def __init__(self, members: dict, *, id_name: str, id_value: int, data_width: int, addr_width: int,
                 id_width: int, max_burst_beats: int, max_outstanding: int, fifo_depth: int):
        _check_common(data_width, addr_width, id_width, max_burst_beats, max_outstanding)
        if not isinstance(id_value, int) or not 0 <= id_value < 1 << id_width:
            raise ValueError(f"{id_name} must be an int in [0, {(1 << id_width) - 1}], got {id_value!r}")
        if not isinstance(fifo_depth, int) or fifo_depth < max_burst_beats:
            raise ValueError(f"fifo_depth must be an int >= max_burst_beats ({max_burst_beats}), "
                             f"got {fifo_depth!r}")
        self._data_width, self._addr_width, self._id_width = data_width, addr_width, id_width
        self._id_value, self._max_burst_beats = id_value, max_burst_beats
        self._max_outstanding, self._fifo_depth = max_outstanding, fifo_depth
        super().__init__({
            "cmd": In(dma_command_stream()),
            **members,
            "error": Out(1),
            "clear": In(1),
            "bus": Out(AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)),
        })

    data_width = property(lambda self: self._data_width)
    addr_width = property(lambda self: self._addr_width)
    id_width = property(lambda self: self._id_width)
    max_burst_beats = property(lambda self: self._max_burst_beats)
    max_outstanding = property(lambda self: self._max_outstanding)
    fifo_depth = property(lambda self: self._fifo_depth)


class BurstReader(_BurstMover):
    """Reads memory for a stream of DmaCommands and delivers the words in order.

    Credits make R back-pressure-free: a burst is issued only when the data
    FIFO has room for all its beats (counting beats already in flight), so
    ``rready`` is always high and readers sharing a port cannot deadlock one
    another. With ``fifo_depth`` beats of credit (default ``max_burst_beats *
    max_outstanding``) and up to ``max_outstanding`` bursts in flight, a
    memory latency below about ``fifo_depth - max_burst_beats`` cycles is
    hidden and the reader sustains one beat per cycle.

    ``error`` is sticky: it rises when a beat that came with RRESP != OKAY is
    delivered on ``data`` (so a consumer that checks it after taking its
    words knows whether those words were good) and falls on ``clear``.
    """

    def __init__(self, *, data_width: int, addr_width: int = 64, id_width: int = 4, arid: int = 0,
                 max_burst_beats: int = 32, max_outstanding: int = 8, fifo_depth: int | None = None):
        super().__init__({"data": Out(word_stream(data_width)), "busy": Out(1)}, id_name="arid", id_value=arid,
                         data_width=data_width, addr_width=addr_width, id_width=id_width,
                         max_burst_beats=max_burst_beats, max_outstanding=max_outstanding,
                         fifo_depth=max_burst_beats * max_outstanding if fifo_depth is None else fifo_depth)

    arid = property(lambda self: self._id_value)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        W = self._data_width
        drive_idle_write(m, bus, W)

        sp = _BurstSplitter(m, data_width=W, addr_width=self._addr_width,
                            max_burst_beats=self._max_burst_beats)
        active = Signal()

        # command intake: one command at a time; zero-byte commands are dropped
        m.d.comb += self.cmd.ready.eq(~active)
        with m.If(self.cmd.valid & ~active):
            words = self.cmd.payload.bytes[sp.shift:]
            sp.load(self.cmd.payload.addr, words)
            m.d.sync += active.eq(words != 0)

        # data FIFO: word + "came with an error response" bit. One entry more than the
        # credits: the inner memory then has a power-of-two depth (a whole BRAM, and no
        # address wrap compare, which Verilator evaluates markedly faster).
        m.submodules.fifo = fifo = _read_fifo(W + 1, self._fifo_depth + 1)
        free = Signal(range(self._fifo_depth + 1), init=self._fifo_depth)
        outstanding = Signal(range(self._max_outstanding + 1))

        ar_valid = Signal()
        issue = Signal()
        # issue only into an empty AR register: ARREADY (a module input) then reaches
        # nothing but ARVALID's clear, keeping the burst arithmetic off the port's input
        # path. At most one AR per two cycles, which full-rate R allows down to 2-beat bursts.
        # "the FIFO has room for the next burst" as a register formed only from a fresh burst length
        # (as the writer's ``enough``): an issue sets ar_valid and makes the length stale, so the flag
        # never runs ahead of ``free``, which only pops raise in between. One AR per three cycles at
        # most, one cycle more per command; the compare is off the path into the counters.
        room = Signal()
        m.d.sync += room.eq(sp.fresh & (free >= sp.beats))
        m.d.comb += issue.eq(active & ~ar_valid & sp.fresh & room & (outstanding != self._max_outstanding))
        m.d.comb += [
            bus.arvalid.eq(ar_valid), bus.arid.eq(self._id_value), bus.arsize.eq(sp.shift),
            bus.arburst.eq(BURST_INCR), bus.arlock.eq(0), bus.arcache.eq(AXCACHE),
            bus.arprot.eq(0), bus.arqos.eq(0), bus.arregion.eq(0),
        ]
        with m.If(issue):
            m.d.sync += [ar_valid.eq(1), bus.araddr.eq(sp.addr), bus.arlen.eq(sp.beats - 1)]
            sp.advance()
            with m.If(sp.last):
                m.d.sync += active.eq(0)
        with m.Elif(ar_valid & bus.arready):
            m.d.sync += ar_valid.eq(0)

        # busy: a command in hand or a burst in flight (a port's background reader waits for it)
        m.d.comb += self.busy.eq(active | ar_valid | (outstanding != 0))

        # R: never back-pressured (credits guarantee FIFO room)
        beat = Signal()
        m.d.comb += [
            bus.rready.eq(1),
            beat.eq(bus.rvalid),
            fifo.w_en.eq(beat),
            fifo.w_data.eq(Cat(bus.rdata, bus.rresp != RESP_OKAY)),
        ]
        burst_done = Signal()
        m.d.comb += burst_done.eq(beat & bus.rlast)
        step_count(m, outstanding, issue, burst_done)

        # consumer side
        pop = Signal()
        m.d.comb += [
            self.data.valid.eq(fifo.r_rdy),
            self.data.payload.eq(fifo.r_data[:W]),
            fifo.r_en.eq(self.data.ready),
            pop.eq(fifo.r_rdy & self.data.ready),
        ]
        # a popped word's credit returns a cycle later: the consumer's ready (its routing and
        # decisions) then ends at a flip-flop, not in the credit counter's carry chain
        pop_r = Signal()
        m.d.sync += [pop_r.eq(pop), free.eq(free - Mux(issue, sp.beats, 0) + pop_r)]
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.Elif(pop & fifo.r_data[W]):
            m.d.sync += self.error.eq(1)
        return m


class BurstWriter(_BurstMover):
    """Writes a word stream to memory, one DmaCommand at a time, and reports each one done.

    Store-and-forward per burst: AW is issued only when the data FIFO already
    holds every beat of the burst, so W never stalls inside a burst (the
    memory port is not held by a slow producer). WVALID does not wait for
    AWREADY (AXI allows the memory to wait for either). One ``done`` record
    follows each command once all its B responses are in; its ``error`` bit
    says whether any of them was not OKAY. Zero-byte commands complete at once
    (in order). ``error`` is a sticky copy, cleared by ``clear``.
    """

    def __init__(self, *, data_width: int, addr_width: int = 64, id_width: int = 4, awid: int = 0,
                 max_burst_beats: int = 32, max_outstanding: int = 8, fifo_depth: int | None = None):
        super().__init__({"data": In(word_stream(data_width)), "done": Out(stream.Signature(JobDone))},
                         id_name="awid", id_value=awid, data_width=data_width, addr_width=addr_width,
                         id_width=id_width, max_burst_beats=max_burst_beats, max_outstanding=max_outstanding,
                         fifo_depth=2 * max_burst_beats if fifo_depth is None else fifo_depth)

    awid = property(lambda self: self._id_value)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        W = self._data_width
        drive_idle_read(m, bus, W)

        sp = _BurstSplitter(m, data_width=W, addr_width=self._addr_width,
                            max_burst_beats=self._max_burst_beats)
        active = Signal()

        # per issued burst, in order: (last burst of its command, zero-byte command marker)
        m.submodules.track = track = StepFIFO(width=2, depth=self._max_outstanding)
        # per issued burst: awlen, consumed by the W sequencer
        m.submodules.wlen = wlen = StepFIFO(width=8, depth=self._max_outstanding)
        m.submodules.fifo = fifo = StepFIFOBuffered(width=W, depth=self._fifo_depth + 1)

        # command intake
        words = self.cmd.payload.bytes[sp.shift:]
        m.d.comb += self.cmd.ready.eq(~active & track.w_rdy)
        empty_cmd = Signal()
        m.d.comb += empty_cmd.eq(self.cmd.valid & ~active & track.w_rdy & (words == 0))
        with m.If(self.cmd.valid & ~active & track.w_rdy):
            sp.load(self.cmd.payload.addr, words)
            m.d.sync += active.eq(words != 0)

        # words in the FIFO not yet promised to an issued burst (the FIFO has one entry
        # more than ``fifo_depth``, for a power-of-two memory as in BurstReader)
        avail = Signal(range(self._fifo_depth + 2))
        push = Signal()
        m.d.comb += [
            fifo.w_data.eq(self.data.payload),
            fifo.w_en.eq(self.data.valid),
            self.data.ready.eq(fifo.w_rdy),
            push.eq(self.data.valid & fifo.w_rdy),
        ]

        aw_valid = Signal()
        issue = Signal()
        # "every beat of the next burst is in the FIFO" as a register, taken only when it was formed
        # from a fresh burst length: an issue sets aw_valid (no issue next cycle) and makes the length
        # stale for a cycle, so the flag never runs ahead of avail; a word pushed this cycle counts
        # from the next (the compare is off the path from the flag to the AW register and the levels)
        enough = Signal()
        m.d.sync += enough.eq(sp.fresh & (avail >= sp.beats))
        m.d.comb += issue.eq(active & ~aw_valid & sp.fresh & enough & track.w_rdy)   # see BurstReader
        m.d.sync += avail.eq(avail + push - Mux(issue, sp.beats, 0))
        m.d.comb += [
            bus.awvalid.eq(aw_valid), bus.awid.eq(self._id_value), bus.awsize.eq(sp.shift),
            bus.awburst.eq(BURST_INCR), bus.awlock.eq(0), bus.awcache.eq(AXCACHE),
            bus.awprot.eq(0), bus.awqos.eq(0), bus.awregion.eq(0),
        ]
        last_burst = sp.last
        with m.If(issue):
            m.d.sync += [aw_valid.eq(1), bus.awaddr.eq(sp.addr), bus.awlen.eq(sp.beats - 1)]
            sp.advance()
            with m.If(last_burst):
                m.d.sync += active.eq(0)
        with m.Elif(aw_valid & bus.awready):
            m.d.sync += aw_valid.eq(0)
        m.d.comb += [
            track.w_en.eq(issue | empty_cmd),
            track.w_data.eq(Mux(issue, last_burst, 0b11)),
            wlen.w_en.eq(issue),
            wlen.w_data.eq(sp.beats - 1),
        ]

        # W sequencer: one burst after another from the wlen queue, no bubbles between bursts
        # (the burst's last beat as a flag kept beside the beat counter: WLAST and the next burst's
        # load start at a flip-flop, not at a compare)
        w_active = Signal()
        w_left = Signal(8)
        w_last = Signal()                    # w_left == 0
        w_beat = Signal()
        m.d.comb += [
            bus.wvalid.eq(w_active & fifo.r_rdy),
            bus.wdata.eq(fifo.r_data),
            bus.wstrb.eq(Const(-1, W // 8)),
            bus.wlast.eq(w_last),
            w_beat.eq(w_active & fifo.r_rdy & bus.wready),
            fifo.r_en.eq(w_beat),
        ]
        load = Signal()
        m.d.comb += load.eq((~w_active | (w_beat & w_last)) & wlen.r_rdy)
        m.d.comb += wlen.r_en.eq(load)
        with m.If(load):
            m.d.sync += [w_active.eq(1), w_left.eq(wlen.r_data), w_last.eq(wlen.r_data == 0)]
        with m.Elif(w_beat):
            with m.If(w_last):
                m.d.sync += w_active.eq(0)
            with m.Else():
                m.d.sync += [w_left.eq(w_left - 1), w_last.eq(w_left == 1)]

        # B: retire bursts in order; one done record per command
        done_valid = Signal()
        done_error = Signal()
        err_acc = Signal()
        head_last = track.r_data[0]
        head_empty = track.r_data[1]
        b_hs = Signal()
        retire_empty = Signal()
        m.d.comb += [
            bus.bready.eq(track.r_rdy & ~head_empty & ~done_valid),
            b_hs.eq(bus.bvalid & bus.bready),
            retire_empty.eq(track.r_rdy & head_empty & ~done_valid),
            track.r_en.eq(b_hs | retire_empty),
            self.done.valid.eq(done_valid),
            self.done.payload.error.eq(done_error),
        ]
        bad = Signal()
        m.d.comb += bad.eq(b_hs & (bus.bresp != RESP_OKAY))
        with m.If((b_hs & head_last) | retire_empty):
            m.d.sync += [done_valid.eq(1), done_error.eq(err_acc | bad), err_acc.eq(0)]
        with m.Else():
            with m.If(bad):
                m.d.sync += err_acc.eq(1)
            with m.If(self.done.ready):
                m.d.sync += done_valid.eq(0)
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.Elif(bad):
            m.d.sync += self.error.eq(1)
        return m
