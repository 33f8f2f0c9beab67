"""Small queues for the tile cache: register FIFOs whose entries can be searched, and the
chunking writer front that keeps one memory writer shared by several sources deadlock-free.

A :class:`RegQueue` is a FIFO of a few records kept in registers, so the cache can ask
"is any pending entry about this line?" in one cycle (its hazard checks).

:class:`ChunkedWriter` puts several sources in front of one BurstWriter channel
(``cmd``/``data``/``done``). Each source hands it jobs (address, words) and the words of
those jobs; a writer command is issued only for a chunk whose words are all staged already,
so the writer never waits on one source while another could go on: no source can block the
others, whatever order their words arrive in. ``done`` pulses per source when the last chunk
of its oldest job is acknowledged (with the job's tag).
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..skid import slice_stream
from ..streams import JobDone, dma_command_stream, word_stream

__all__ = ["RegQueue", "RegFIFO", "WriteJob", "ChunkedWriter"]


class RegQueue:
    """A FIFO of ``depth`` records of ``layout`` in registers, built into module ``m``.

    Drive ``push``/``push_data`` and ``pop`` combinationally; ``head`` is the oldest record,
    ``full``/``empty``/``level`` its state; :meth:`any` searches the valid entries.
    """

    def __init__(self, m: Module, name: str, layout, depth: int):
        self.depth = depth
        self.layout = data.Layout.cast(layout)
        self.entries = [Signal(self.layout, name=f"{name}_e{i}") for i in range(depth)]
        self.valid = [Signal(name=f"{name}_v{i}") for i in range(depth)]
        self.push = Signal(name=f"{name}_push")
        self.push_data = Signal(self.layout, name=f"{name}_pushd")
        self.pop = Signal(name=f"{name}_pop")
        self.head_i = Signal(range(depth), name=f"{name}_hi")
        self.tail_i = Signal(range(depth), name=f"{name}_ti")
        self.level = Signal(range(depth + 1), name=f"{name}_level")
        self.head = Signal(self.layout, name=f"{name}_head")
        self.full = Signal(name=f"{name}_full")
        self.empty = Signal(name=f"{name}_empty")
        # full and empty registered beside the level (a compare of the level was a LUT level in
        # front of every push/pop decision)
        full_r = Signal(name=f"{name}_full_r")
        empty_r = Signal(init=1, name=f"{name}_empty_r")
        m.d.comb += [self.full.eq(full_r), self.empty.eq(empty_r)]
        with m.If(self.push & ~self.pop):
            m.d.sync += [empty_r.eq(0), full_r.eq(self.level == depth - 1)]
        with m.Elif(self.pop & ~self.push):
            m.d.sync += [full_r.eq(0), empty_r.eq(self.level == 1)]
        # the head kept in a register: on a pop it takes the next entry (mux by the registered
        # next index) or, when the queue held one, the record pushed with it; a push into an
        # empty queue writes it (the head's mux by head_i was two LUT levels into each decision)
        head_r = Signal(self.layout, name=f"{name}_head_r")
        hn_i = Signal(range(depth), init=1 % depth, name=f"{name}_hn")
        nxt = Signal(self.layout, name=f"{name}_next")
        with m.Switch(hn_i):
            for i in range(depth):
                with m.Case(i):
                    m.d.comb += nxt.eq(self.entries[i])
        m.d.comb += self.head.eq(head_r)
        with m.If(self.pop):
            m.d.sync += [head_r.eq(Mux(self.level == 1, self.push_data, nxt)),
                         hn_i.eq(Mux(hn_i == depth - 1, 0, hn_i + 1))]
        with m.Elif(empty_r):
            m.d.sync += head_r.eq(self.push_data)
        with m.If(self.push):
            with m.Switch(self.tail_i):
                for i in range(depth):
                    with m.Case(i):
                        m.d.sync += [self.entries[i].eq(self.push_data), self.valid[i].eq(1)]
            m.d.sync += self.tail_i.eq(Mux(self.tail_i == depth - 1, 0, self.tail_i + 1))
        with m.If(self.pop):
            with m.Switch(self.head_i):
                for i in range(depth):
                    with m.Case(i):
                        m.d.sync += self.valid[i].eq(0)
            m.d.sync += self.head_i.eq(Mux(self.head_i == depth - 1, 0, self.head_i + 1))
        m.d.sync += self.level.eq(self.level + self.push - self.pop)

    def any(self, pred):
        """A 1-bit value: some valid entry satisfies ``pred(entry)``."""
        return Cat(*(v & pred(e) for v, e in zip(self.valid, self.entries))).any()


class RegFIFO(Elaboratable):
    """A :class:`RegQueue` behind the ``w_en``/``w_data``/``w_rdy``, ``r_en``/``r_data``/``r_rdy``
    ports of Amaranth's FIFOs, for a short queue written from several places: its level and
    full flag take a push in one LUT level (``SyncFIFOBuffered`` put two of its own between a
    push and its level). A write while full and a read while empty are ignored, as in a FIFO."""

    def __init__(self, layout, depth: int):
        """``layout``: a data layout, or a width in bits."""
        if isinstance(layout, int):
            layout = data.StructLayout({"bits": layout})
        self._layout, self.depth = data.Layout.cast(layout), depth
        self.w_en, self.w_rdy = Signal(), Signal()
        self.w_data = Signal(self._layout)
        self.r_en, self.r_rdy = Signal(), Signal()
        self.r_data = Signal(self._layout)

    def elaborate(self, platform):
        m = Module()
        q = RegQueue(m, "q", self._layout, self.depth)
        m.d.comb += [q.push.eq(self.w_en & ~q.full), q.push_data.eq(self.w_data), self.w_rdy.eq(~q.full),
                     q.pop.eq(self.r_en & ~q.empty), self.r_data.eq(q.head), self.r_rdy.eq(~q.empty)]
        return m


class WriteJob(data.Struct):
    addr: 64
    words: 24
    tag: 8


class ChunkedWriter(wiring.Component):
    """``sources`` job/word inputs in front of one writer channel; a done pulse per source."""

    def __init__(self, *, data_width: int, sources: int, chunk_words: int = 16, job_depth: int = 8):
        self._W, self._n, self._chunk, self._jobs = data_width, sources, chunk_words, job_depth
        members = {
            "cmd": Out(dma_command_stream()), "data": Out(word_stream(data_width)),
            "done": In(stream.Signature(JobDone)),
            "error": Out(1),
        }
        for i in range(sources):
            members[f"job{i}"] = In(stream.Signature(WriteJob))
            members[f"words{i}"] = In(word_stream(data_width))
            members[f"fin{i}"] = Out(1)             # a job of this source was acknowledged
            members[f"fin_tag{i}"] = Out(8)
            members[f"pending{i}"] = Out(1)         # jobs of this source not yet acknowledged
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        W, n, chunk = self._W, self._n, self._chunk
        WB = W // 8
        shift = WB.bit_length() - 1
        fifos, jobq = [], []
        for i in range(n):
            m.submodules[f"stage{i}"] = stage = SyncFIFOBuffered(width=W, depth=2 * chunk)
            m.submodules[f"jobs{i}"] = jq = SyncFIFOBuffered(width=data.Layout.cast(WriteJob).size, depth=self._jobs)
            words_in = getattr(self, f"words{i}")
            m.d.comb += [stage.w_data.eq(words_in.payload), stage.w_en.eq(words_in.valid),
                         words_in.ready.eq(stage.w_rdy)]
            job_in = getattr(self, f"job{i}")
            m.d.comb += [jq.w_data.eq(job_in.payload), jq.w_en.eq(job_in.valid), job_in.ready.eq(jq.w_rdy)]
            fifos.append(stage)
            jobq.append(jq)

        # per source: words of its head job already chunked, and words staged not yet chunked
        done_words = [Signal(24, name=f"chunked{i}") for i in range(n)]
        staged = [Signal(range(2 * chunk + 2), name=f"staged{i}") for i in range(n)]
        heads = [data.View(WriteJob, jobq[i].r_data) for i in range(n)]
        want = [Signal(24, name=f"want{i}") for i in range(n)]
        ready = [Signal(name=f"ready{i}") for i in range(n)]
        # registered every cycle, in three steps (the words left of the head job, the chunk, then
        # whether its words are staged): a command is issued at most every fifth cycle
        # (cmd_valid, then ``cool``, hold the three cycles after, then a cycle to decide), and a
        # head is used once it has been there three cycles, so what they saw is the head job and
        # chunk count at the issue, and ``staged`` only grew since (its issued words leave it a
        # cycle after the issue) (timing: the subtract, compare and pick in one cycle were 5.6
        # ns in the Yosys estimate, the chunk's compare and the staged compare in one 3.4 ns)
        last_of = [Signal(name=f"lastc{i}") for i in range(n)]
        addr_of = [Signal(64, name=f"caddr{i}") for i in range(n)]
        left_of = [Signal(24, name=f"left{i}") for i in range(n)]
        rdy_d = [Signal(name=f"rdy_d{i}") for i in range(n)]
        rdy_d2 = [Signal(name=f"rdy_dd{i}") for i in range(n)]
        for i in range(n):
            m.d.sync += [left_of[i].eq(heads[i].words - done_words[i]), rdy_d[i].eq(jobq[i].r_rdy),
                         rdy_d2[i].eq(rdy_d[i])]
            left = left_of[i]
            m.d.sync += [want[i].eq(Mux(left < chunk, left, chunk)), last_of[i].eq(left <= chunk),
                         addr_of[i].eq(heads[i].addr + (done_words[i] << shift))]
            m.d.sync += ready[i].eq(jobq[i].r_rdy & rdy_d[i] & rdy_d2[i] & (staged[i] >= want[i]) & (want[i] != 0))

        # done order: (source, last chunk of its job, tag)
        # buffered: its head comes from a register (from the LUT RAM, the done decode behind it
        # was a 4 ns path)
        m.submodules.order = order = SyncFIFOBuffered(width=n.bit_length() + 1 + 8, depth=16)
        active = Signal()
        src = Signal(range(max(n, 2)))
        count = Signal(range(chunk + 1))
        last_chunk = Signal()
        pick = Signal(range(max(n, 2)))
        any_ready = Signal()
        rr = Signal(range(max(n, 2)))
        with m.Switch(rr):                          # round robin from ``rr``: the last match wins
            for i in range(n):
                with m.Case(i):
                    for k in reversed(range(n)):
                        with m.If(ready[(i + k) % n]):
                            m.d.comb += pick.eq((i + k) % n)
        m.d.comb += any_ready.eq(Cat(*ready).any())
        cmd_valid = Signal()
        cmd_addr = Signal(64)
        cmd_words = Signal(range(chunk + 1))
        m.d.comb += [self.cmd.valid.eq(cmd_valid), self.cmd.payload.addr.eq(cmd_addr),
                     self.cmd.payload.bytes.eq(cmd_words << shift)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cmd_valid.eq(0)
        pulls = [Signal(name=f"pull{i}") for i in range(n)]
        # a command in two steps: decided (issue, pick_r: registered), then issued; what the
        # decision saw holds (only an issue changes it, and the next decision waits for cool)
        issue = Signal()
        pick_r = Signal(range(max(n, 2)))
        cool = Signal(3)
        m.d.sync += [issue.eq(~active & ~cmd_valid & ~cool[1] & ~cool[2] & ~issue & any_ready & order.w_rdy),
                     pick_r.eq(pick), cool.eq(Cat(issue, cool[:2]))]
        with m.If(issue):
            for i in range(n):
                with m.If(pick_r == i):
                    lc = last_of[i]
                    m.d.sync += [cmd_valid.eq(1), cmd_addr.eq(addr_of[i]),
                                 cmd_words.eq(want[i]), active.eq(1), src.eq(i), count.eq(want[i]),
                                 last_chunk.eq(lc)]
                    m.d.comb += [order.w_en.eq(1), order.w_data.eq(Cat(Const(i, n.bit_length()), lc, heads[i].tag))]
                    with m.If(lc):
                        m.d.comb += jobq[i].r_en.eq(1)
                        m.d.sync += done_words[i].eq(0)
                    with m.Else():
                        m.d.sync += done_words[i].eq(done_words[i] + want[i])
                    m.d.sync += rr.eq(Mux(pick_r == n - 1, 0, pick_r + 1) if n > 1 else 0)
        # the words out through a register slice (the writer port's ready reached the staging
        # FIFOs' levels across parts: 3.6 ns)
        words_out = self.data.signature.create()
        slice_stream(m, "data_slice", words_out, self.data)
        with m.If(active):
            for i in range(n):
                with m.If(src == i):
                    m.d.comb += [words_out.valid.eq(fifos[i].r_rdy), words_out.payload.eq(fifos[i].r_data),
                                 fifos[i].r_en.eq(words_out.ready), pulls[i].eq(fifos[i].r_rdy & words_out.ready)]
            with m.If(words_out.valid & words_out.ready):
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.d.sync += active.eq(0)
        for i in range(n):
            took = Signal.like(want[i], name=f"took{i}")          # the words of an issue, a cycle later
            m.d.sync += [took.eq(Mux(issue & (pick_r == i), want[i], 0)),
                         staged[i].eq(staged[i] + (fifos[i].w_en & fifos[i].w_rdy) - took)]
        # acknowledgements, in command order
        m.d.comb += [self.done.ready.eq(order.r_rdy), order.r_en.eq(self.done.valid & order.r_rdy)]
        o_src = order.r_data[:n.bit_length()]
        o_last = order.r_data[n.bit_length()]
        o_tag = order.r_data[n.bit_length() + 1:]
        for i in range(n):
            m.d.comb += [getattr(self, f"fin{i}").eq(self.done.valid & order.r_rdy & (o_src == i) & o_last),
                         getattr(self, f"fin_tag{i}").eq(o_tag)]
        with m.If(self.done.valid & self.done.ready & self.done.payload.error):
            m.d.sync += self.error.eq(1)
        # pending: a job queued, or an acknowledgement outstanding
        outstanding = [Signal(range(64), name=f"out{i}") for i in range(n)]
        for i in range(n):
            job_in = getattr(self, f"job{i}")
            m.d.sync += outstanding[i].eq(outstanding[i] + (job_in.valid & job_in.ready) - getattr(self, f"fin{i}"))
            m.d.comb += getattr(self, f"pending{i}").eq(outstanding[i] != 0)
        return m
