"""The COPY/FILL engine.

Dataflow::

    job -> command issue: read (src_addr, bytes) on the source port's reader (COPY),
                          write (dst_addr, bytes) on the destination port's writer
    source reader words (COPY) | the repeated 64-bit value (FILL)
        -> FIFO of ``buffer_words`` -> destination writer words
    destination writer's done -> ``done`` (its error flag passed on)

Port ``0`` is the data port (reader ``src``, writer ``out``); port ``1 + i`` is ``w<i>``
(``w_cmd[i]``/``w_data[i]``, ``sw_cmd[i]``/``sw_data[i]``/``sw_done[i]``). Source and
destination may be the same port: its reader and writer are separate channels. Every stream
tolerates back-pressure on any cycle; the FIFO decouples the reader from the writer and
passes one word per cycle when neither side stalls, at every ``buffer_words``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered

from hbmforge.encodings import CopyMode
from hbmforge.layout import DesignLayout

from .signature import copy_signature

__all__ = ["CopyEngine"]


class CopyEngine(wiring.Component):
    """The copy engine of a :class:`~hbmforge.layout.DesignLayout` with a ``copy`` engine."""

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        cfg = layout.config.engine("copy")
        if cfg is None:
            raise ValueError(f"config {layout.config.name!r} has no copy engine")
        self._layout = layout
        self._buffer_words = cfg.buffer_words
        super().__init__(copy_signature(layout))

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def buffer_words(self) -> int:
        return self._buffer_words

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        W = lay.config.data_width
        shift = lay.word_bytes.bit_length() - 1
        nports = 1 + lay.config.shared_stream_ports     # a tile cache's store is not copied to or from
        readers = [(self.src_cmd, self.src_data)] + [(self.w_cmd[i], self.w_data[i])
                                                     for i in range(nports - 1)]
        writers = [(self.out_cmd, self.out_data, self.out_done)] + [
            (self.sw_cmd[i], self.sw_data[i], self.sw_done[i]) for i in range(nports - 1)]

        # -- the job, held while it runs -----------------------------------------------------
        busy = Signal()
        fill = Signal()
        src = Signal(range(nports))
        dst = Signal(range(nports))
        src_addr = Signal(64)
        dst_addr = Signal(64)
        nbytes = Signal(32)
        value = Signal(64)
        rd_pending = Signal()       # read command not yet taken
        wr_pending = Signal()       # write command not yet taken
        to_make = Signal(32 - shift + 1)    # FILL words still to put into the FIFO
        wr_seen = Signal()
        wr_error = Signal()
        job = self.job.payload
        m.d.comb += self.job.ready.eq(~busy)
        with m.If(self.job.valid & ~busy):
            is_fill = job.mode == CopyMode.FILL
            m.d.sync += [busy.eq(1), fill.eq(is_fill), src.eq(job.src_port), dst.eq(job.dst_port),
                         src_addr.eq(job.src_addr), dst_addr.eq(job.dst_addr), nbytes.eq(job.bytes),
                         value.eq(job.value), rd_pending.eq(~is_fill), wr_pending.eq(1),
                         to_make.eq(Mux(is_fill, job.bytes >> shift, 0)), wr_seen.eq(0), wr_error.eq(0)]

        # -- commands --------------------------------------------------------------------------
        for i, (cmd, _) in enumerate(readers):
            m.d.comb += [cmd.payload.addr.eq(src_addr), cmd.payload.bytes.eq(nbytes),
                         cmd.valid.eq(rd_pending & (src == i))]
            with m.If(cmd.valid & cmd.ready):
                m.d.sync += rd_pending.eq(0)
        for i, (cmd, _, _) in enumerate(writers):
            m.d.comb += [cmd.payload.addr.eq(dst_addr), cmd.payload.bytes.eq(nbytes),
                         cmd.valid.eq(wr_pending & (dst == i))]
            with m.If(cmd.valid & cmd.ready):
                m.d.sync += wr_pending.eq(0)

        # -- words: source -> FIFO -> destination -------------------------------------------
        # SyncFIFOBuffered(depth=2) is one memory word plus its output register and takes a word
        # only every other cycle; an unbuffered 2-entry FIFO (registers) keeps one word per cycle.
        if self._buffer_words > 2:
            m.submodules.buffer = fifo = SyncFIFOBuffered(width=W, depth=self._buffer_words)
        else:
            m.submodules.buffer = fifo = SyncFIFO(width=W, depth=self._buffer_words)
        pattern = Cat(*([value] * (W // 64)))
        with m.If(fill):
            m.d.comb += [fifo.w_data.eq(pattern), fifo.w_en.eq(to_make != 0)]
            with m.If(fifo.w_en & fifo.w_rdy):
                m.d.sync += to_make.eq(to_make - 1)
        for i, (_, data) in enumerate(readers):
            picked = busy & ~fill & (src == i)
            m.d.comb += data.ready.eq(picked & fifo.w_rdy)
            with m.If(picked):
                m.d.comb += [fifo.w_data.eq(data.payload), fifo.w_en.eq(data.valid)]
        moved = Signal()
        for i, (_, data, _) in enumerate(writers):
            picked = busy & (dst == i)
            m.d.comb += [data.payload.eq(fifo.r_data), data.valid.eq(picked & fifo.r_rdy)]
            with m.If(picked):
                m.d.comb += [fifo.r_en.eq(data.ready), moved.eq(data.valid & data.ready)]

        # -- completion: the destination writer acknowledged every word --------------------------
        for i, (_, _, done) in enumerate(writers):
            m.d.comb += done.ready.eq(busy & ~wr_seen & (dst == i))
            with m.If(done.valid & done.ready):
                m.d.sync += [wr_seen.eq(1), wr_error.eq(done.payload.error)]
        finished = busy & wr_seen & ~rd_pending
        m.d.comb += [self.done.valid.eq(finished), self.done.payload.error.eq(wr_error)]
        with m.If(self.done.valid & self.done.ready):
            m.d.sync += busy.eq(0)

        m.d.comb += [self.busy.eq(busy), self.stall.eq(busy & ~moved)]
        return m
