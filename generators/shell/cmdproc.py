"""Command processor: runs a program of layer descriptors with one ap_start.

On ``start`` it fetches ``count`` descriptors of ``layout.descriptor_bytes``
from ``program`` through the data port's command reader, validates each one
(docs/architecture.md §3, same checks and order as
:func:`hbmforge.numerics.program.execute`), hands MATMUL descriptors to the
matmul engine as one ``job`` record (ATTENTION descriptors to the attention
engine as ``job_attn``, when the design has one; ``active`` says which engine
runs) and waits for that engine's ``done``. The run
ends at an END opcode, after ``count`` descriptors, or at the first error,
with ``status = 1 | code << 8 | index << 16`` (codes: :class:`hbmforge.layout.ErrorCode`).

The next descriptor is fetched and unloaded into the descriptor register while
the engine runs the current one, so between the engine's ``done`` and the next
``job`` there are two cycles (check, dispatch).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hbmforge.layout import DesignLayout, ErrorCode, Opcode, OutMode, WeightFormat

from ..streams import JobDone, matmul_job_layout
from .port import ReadChannelSignature

__all__ = ["CommandProcessor"]


class CommandProcessor(wiring.Component):
    """Descriptor fetch, validation and dispatch for one matmul engine.

    * ``start`` (pulse) begins a run with the current ``program``/``count``;
      ``done`` pulses once when the run is over; ``status``/``desc_done``
      are cleared by ``start`` and hold their value afterwards.
    * ``fetch`` is the consumer side of the data port's command reader.
    * ``data_error`` is the OR of the engine-facing DMA error flags; it is
      checked (with ``job_done.error``) when the engine reports a job done.
    """

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
        if layout.descriptor_bytes % layout.word_bytes:
            raise ValueError(f"descriptor_bytes {layout.descriptor_bytes} is not a whole number of "
                             f"{layout.word_bytes}-byte words")
        if layout.k_align & (layout.k_align - 1):
            raise ValueError(f"k_align {layout.k_align} is not a power of two")
        self._layout = layout
        W = layout.config.data_width
        members = {}
        if layout.attention is not None:
            from ..attention.signature import attention_job_layout_for

            members["job_attn"] = Out(stream.Signature(attention_job_layout_for(layout)))
        super().__init__(members | {
            "start": In(1),
            "done": Out(1),
            "program": In(64),
            "count": In(32),
            "status": Out(32),
            "desc_done": Out(32),
            "fetch": In(ReadChannelSignature(W)),
            "job": Out(stream.Signature(matmul_job_layout(layout.mm.weight_ports))),
            "job_done": In(stream.Signature(JobDone)),
            # which engine the last dispatched job went to: 0 matmul, 1 attention
            "active": Out(1),
            "data_error": In(1),
            "busy": Out(1),
        })

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def descriptor_words(self) -> int:
        return self._layout.descriptor_bytes // self._layout.word_bytes

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        mm = lay.mm
        W = lay.config.data_width
        nwords = self.descriptor_words
        dbytes = lay.descriptor_bytes
        align_bits = (lay.addr_align).bit_length() - 1

        running = Signal()
        stopping = Signal()
        count = Signal(32)
        idx = Signal(32)           # descriptor being loaded / checked / run
        m.d.comb += self.busy.eq(running)

        # -- prefetch: at most the current and the next descriptor requested -------------
        fetch_idx = Signal(32)
        fetch_addr = Signal(64)
        cmd_valid = Signal()
        words_pending = Signal(range(2 * nwords + 1))
        m.d.comb += [
            self.fetch.cmd.valid.eq(cmd_valid),
            self.fetch.cmd.payload.bytes.eq(dbytes),
        ]
        want = Signal()
        m.d.comb += want.eq(running & ~stopping & ~cmd_valid & (fetch_idx != count)
                            & (fetch_idx - idx < 2))
        with m.If(want):
            m.d.sync += [
                cmd_valid.eq(1),
                self.fetch.cmd.payload.addr.eq(fetch_addr),
                fetch_addr.eq(fetch_addr + dbytes),
                fetch_idx.eq(fetch_idx + 1),
            ]
        with m.Elif(self.fetch.cmd.ready):
            m.d.sync += cmd_valid.eq(0)
        pop = Signal()
        m.d.comb += pop.eq(self.fetch.data.valid & self.fetch.data.ready)
        m.d.sync += words_pending.eq(words_pending + (want * nwords) - pop)

        # -- the descriptor, one field per u64 -------------------------------------------
        desc = Signal(nwords * W)
        fields = {name: desc[8 * lay.field_offset(name):8 * lay.field_offset(name) + 64]
                  for name in lay.descriptor_fields}
        word_cnt = Signal(range(nwords))

        att = lay.attention
        att_fields = {}
        if att is not None:
            att_fields = {name: desc[8 * lay.field_offset(name, Opcode.ATTENTION):
                                     8 * lay.field_offset(name, Opcode.ATTENTION) + 64]
                          for name in lay.attention_fields}
            ajob = self.job_attn.payload
            for name in ajob.shape().members:
                m.d.comb += getattr(ajob, name).eq(att_fields[name])

        job = self.job.payload
        m.d.comb += [
            job.m.eq(fields["m"]), job.k.eq(fields["k"]), job.n.eq(fields["n"]),
            job.wbits.eq(fields["wbits"]), job.out_mode.eq(fields["out_mode"]),
            job.out_shift.eq(fields["out_shift"]),
            job.x_addr.eq(fields["x_addr"]), job.s_addr.eq(fields["s_addr"]),
            job.q_addr.eq(fields["q_addr"]), job.y_addr.eq(fields["y_addr"]),
        ]
        for i in range(mm.weight_ports):
            m.d.comb += job.w_addr[i].eq(fields[f"w_addr{i}"])

        # -- validation (same order as hbmforge.numerics.program) -------------------------
        def misaligned(v):
            return v[:align_bits].any() if align_bits else 0

        k = fields["k"]
        out_mode = fields["out_mode"]
        int8 = out_mode == OutMode.INT8
        addr_bad = misaligned(fields["x_addr"]) | misaligned(fields["s_addr"]) \
            | misaligned(fields["y_addr"]) | (int8 & misaligned(fields["q_addr"]))
        for i in range(mm.weight_ports):
            addr_bad = addr_bad | misaligned(fields[f"w_addr{i}"])
        k_align_bits = lay.k_align.bit_length() - 1
        is_attn = Signal()
        if att is not None:
            m.d.comb += is_attn.eq(fields["op"] == Opcode.ATTENTION)
        checks = [
            ((fields["op"] != Opcode.MATMUL) & ~is_attn, ErrorCode.BAD_OPCODE),
            (~Cat(*(fields["wbits"] == WeightFormat.code(b) for b in mm.weight_bits)).any(), ErrorCode.BAD_WBITS),
            ((k == 0) | (k > mm.max_k) | k[:k_align_bits].any(), ErrorCode.BAD_K),
            ((fields["m"] == 0) | (fields["n"] == 0)
             | fields["m"][32:].any() | fields["n"][32:].any(), ErrorCode.BAD_SHAPE),
            ((out_mode != OutMode.INT32) & ~int8, ErrorCode.BAD_OUT_MODE),
            ((out_mode == OutMode.INT32) & (fields["out_shift"] > lay.widths.max_out_shift),
             ErrorCode.BAD_OUT_MODE),
            (addr_bad, ErrorCode.MISALIGNED),
        ]
        mm_code = Signal(8)
        for cond, value in reversed(checks):     # the first failing check wins
            with m.If(cond):
                m.d.comb += mm_code.eq(value)
        code = Signal(8)
        m.d.comb += code.eq(mm_code)
        if att is not None:
            from ..attention.checks import attention_checks

            att_code = Signal(8)
            for cond, value in reversed(attention_checks(att_fields, lay)):
                with m.If(cond):
                    m.d.comb += att_code.eq(value)
            with m.If(is_attn):
                m.d.comb += code.eq(att_code)

        def status(error_code):
            """STATUS value for an error at the current descriptor."""
            if isinstance(error_code, int):
                error_code = Const(error_code, 8)
            return Cat(Const(1, 1), Const(0, 7), error_code, idx[:16])

        # Loader: shifts descriptor words into ``desc`` while the FSM allows it (LOAD, and
        # WAIT: the engine took its job record at the handshake, so the next descriptor may
        # replace it while the engine runs). ``loaded``: ``desc`` holds an unchecked descriptor.
        loaded = Signal()
        load_en = Signal()
        drain = Signal()
        take = Signal()
        last_word = Signal()
        m.d.comb += [
            take.eq(load_en & ~loaded & self.fetch.data.valid),
            last_word.eq(take & (word_cnt == nwords - 1)),
            self.fetch.data.ready.eq((load_en & ~loaded) | drain),
        ]
        with m.If(take):
            m.d.sync += desc.eq(Cat(desc[W:], self.fetch.data.payload))
            with m.If(word_cnt == nwords - 1):
                m.d.sync += [word_cnt.eq(0), loaded.eq(1)]
            with m.Else():
                m.d.sync += word_cnt.eq(word_cnt + 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        running.eq(1), stopping.eq(0), count.eq(self.count),
                        idx.eq(0), fetch_idx.eq(0), fetch_addr.eq(self.program), word_cnt.eq(0),
                        loaded.eq(0), self.status.eq(0), self.desc_done.eq(0),
                    ]
                    with m.If(self.count == 0):
                        m.d.sync += stopping.eq(1)
                        m.next = "DRAIN"
                    with m.Elif(misaligned(self.program)):
                        # descriptor 0 cannot be fetched from a misaligned program address
                        m.d.sync += [stopping.eq(1), self.status.eq(1 | ErrorCode.MISALIGNED << 8)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += load_en.eq(1)
                with m.If(loaded | last_word):
                    m.next = "CHECK"
            with m.State("CHECK"):
                # the reader's error flag covers every word delivered so far, this
                # descriptor's last word included (it rose, if at all, when that word left)
                m.d.sync += loaded.eq(0)
                with m.If(self.fetch.error):
                    m.d.sync += [self.status.eq(status(ErrorCode.AXI_RESP)), stopping.eq(1)]
                    m.next = "DRAIN"
                with m.Elif(fields["op"] == Opcode.END):
                    m.d.sync += stopping.eq(1)
                    m.next = "DRAIN"
                with m.Elif(code != 0):
                    m.d.sync += [self.status.eq(status(code)), stopping.eq(1)]
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                if att is not None:
                    m.d.sync += self.active.eq(is_attn)
                    with m.If(is_attn):
                        m.d.comb += self.job_attn.valid.eq(1)
                        with m.If(self.job_attn.ready):
                            m.next = "WAIT"
                    with m.Else():
                        m.d.comb += self.job.valid.eq(1)
                        with m.If(self.job.ready):
                            m.next = "WAIT"
                else:
                    m.d.comb += self.job.valid.eq(1)
                    with m.If(self.job.ready):
                        m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [load_en.eq(1), self.job_done.ready.eq(1)]
                with m.If(self.job_done.valid):
                    with m.If(self.job_done.payload.error | self.data_error):
                        m.d.sync += [self.status.eq(status(ErrorCode.AXI_RESP)), stopping.eq(1)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += [self.desc_done.eq(self.desc_done + 1), idx.eq(idx + 1)]
                        with m.If(idx + 1 == count):
                            m.d.sync += stopping.eq(1)
                            m.next = "DRAIN"
                        with m.Elif(loaded | last_word):
                            m.next = "CHECK"
                        with m.Else():
                            m.next = "LOAD"
            with m.State("DRAIN"):
                # discard prefetched words so that the next run starts clean
                m.d.comb += drain.eq(1)
                with m.If(~cmd_valid & (words_pending == 0)):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
        return m
