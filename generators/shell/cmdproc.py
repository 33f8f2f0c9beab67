"""Command processor: runs a program of descriptors with one ap_start.

On ``start`` it fetches ``count`` descriptors of ``layout.descriptor_bytes``
from ``program`` through the data port's command reader, validates each one
with its family's checks (``layout.checks(opcode)``, the same rules and order as
:func:`hbmforge.numerics.program.execute` and the host's ProgramBuilder), hands
it to the engine of its opcode as one ``job<e>`` record (``active`` = ``e``) and
waits for ``job_done``. The run ends at an END opcode, after ``count``
descriptors, or at the first error, with ``status = 1 | code << 8 | index << 16``
(codes: :class:`hbmforge.encodings.ErrorCode`; an engine may end a job with a run-time code of
its family on ``job_code``, read with ``job_done``, which stops the run like a bad descriptor).

The next descriptor is fetched and unloaded into the descriptor register while
the engine runs the current one, so between the engine's ``done`` and the next
``job`` there are five cycles (the done record's register slice, register the checks'
products, evaluate the checks, pick the first failing one, dispatch); the kernel's job slice
adds one before the engine sees it.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, ValueCastable
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import ErrorCode, Opcode
from hbmforge.layout import DesignLayout

from ..counters import step_count
from ..engine import RtlOps
from ..skid import SkidBuffer
from ..streams import JobDone
from .port import ReadChannelSignature

__all__ = ["CommandProcessor"]


class _Factor(ValueCastable):
    """A check operand (a descriptor field, or ``ops.low()`` of one): the product of two is a
    register (its own pipeline stage, e.g. the attention check's 11 x 11 ``kv_heads x
    q_per_kv``), and so are the sum of two (the vector check's ``pos0 + m``) and the magnitude
    compare of two (the attention check's 64-bit ``n_q > ctx_len``), whose carry chains would
    otherwise share a cycle with the rest of the check; every other operator acts on the value
    itself. The registers are loaded in EVAL, the check's verdict in VERDICT, as before."""

    def __init__(self, m: Module, value):
        self._m, self._v = m, Value.cast(value)

    def shape(self):
        return self._v.shape()

    def as_value(self):
        return self._v

    def _registered(self, value, name: str) -> Signal:
        reg = Signal(Value.cast(value).shape(), name=name)
        self._m.d.sync += reg.eq(value)
        return reg

    def __mul__(self, other):
        return self._registered(self._v * Value.cast(other), "check_product")

    __rmul__ = __mul__


def _of_two_fields(op_name: str, reg_name: str):
    """``_Factor`` operator ``op_name``: registered when both operands are ``_Factor``s."""
    def op(self, other):
        if not isinstance(other, _Factor):
            return getattr(self._v, op_name)(other)
        return self._registered(getattr(self._v, op_name)(other._v), reg_name)
    op.__name__ = op_name
    return op


_Factor.__add__ = _Factor.__radd__ = _of_two_fields("__add__", "check_sum")
for _name in ("__lt__", "__le__", "__gt__", "__ge__"):     # a wide magnitude compare
    setattr(_Factor, _name, _of_two_fields(_name, "check_compare"))


def _delegate(name):
    def op(self, *args):
        return getattr(self._v, name)(*args)
    op.__name__ = name
    return op


for _name in ("__sub__", "__rsub__", "__lshift__", "__rlshift__", "__rshift__",
              "__rrshift__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__eq__",
              "__ne__", "__getitem__", "__invert__", "__neg__",
              "__len__", "bool", "any", "all"):
    setattr(_Factor, _name, _delegate(_name))


class _StagedOps(RtlOps):
    """:class:`RtlOps` whose ``low()`` operands register their products (see :class:`_Factor`)."""

    def __init__(self, m: Module):
        self._m = m

    def low(self, value, bits: int):
        return _Factor(self._m, value[:bits])


class CommandProcessor(wiring.Component):
    """Descriptor fetch, validation and dispatch for the engines of a design.

    ``jobs``: one job layout per engine, in ``layout.families`` order (engine ``e`` runs
    the opcodes of ``layout.families[e]``); the member ``job<e>`` carries its records.

    * ``start`` (pulse) begins a run with the current ``program``/``count``;
      ``done`` pulses once when the run is over; ``status``/``desc_done``
      are cleared by ``start`` and hold their value afterwards.
    * ``fetch`` is the consumer side of the data port's command reader.
    * ``active`` is the engine of the last dispatched job (the kernel routes DMA by it).
    * ``data_error`` is the OR of the engine-facing DMA error flags; it is
      checked (with ``job_done.error``) when the engine reports a job done.
    * ``job_code``: the running engine's run-time error code (``EngineSignature.fault``),
      sampled with ``job_done``; non-zero stops the run with that code.
    * ``early = (engine, during)``: engine ``engine`` (the matmul with ``weight_prefetch``) takes
      its job as soon as its descriptor has passed its checks while an engine of ``during``
      (vector, attention) runs the descriptor before it; ``active`` still moves to it only when
      that descriptor is done, so its data-port traffic waits while its weight streams run. If
      the descriptor before it fails, the early job still runs to its end (its engine cannot
      drop a job) and the run stops with the earlier descriptor's error.
    """

    #: cycles from an engine's ``done`` to the next ``job`` when the next descriptor is loaded
    #: (the done slice, register the checks' products, evaluate the checks, pick the first
    #: failing one, dispatch)
    DISPATCH_CYCLES = 5

    def __init__(self, layout: DesignLayout, jobs, early: tuple[int, tuple[int, ...]] | None = None):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {layout!r}")
        if layout.descriptor_bytes % layout.word_bytes:
            raise ValueError(f"descriptor_bytes {layout.descriptor_bytes} is not a whole number of "
                             f"{layout.word_bytes}-byte words")
        jobs = [data.Layout.cast(j) for j in jobs]
        if len(jobs) != len(layout.families):
            raise ValueError(f"jobs must give one job layout per engine of the design "
                             f"({[f.kind for f in layout.families]}), got {len(jobs)}")
        for fam, job in zip(layout.families, jobs):
            slots = set()
            for op in fam.opcodes:
                slots.update(layout.fields_for(op))
            for name, member in job:
                wanted = ([f"{name}{i}" for i in range(member.shape.length)]
                          if isinstance(member.shape, data.ArrayLayout) else [name])
                missing = [w for w in wanted if w not in slots]
                if missing:
                    raise ValueError(f"{fam.kind} job member {name!r} has no descriptor slot {missing[0]!r}; "
                                     f"slots: {sorted(slots)}")
        if early is not None:
            engine, during = early
            if not 0 <= engine < len(jobs) or any(not 0 <= d < len(jobs) or d == engine for d in during):
                raise ValueError(f"early must be (engine, engines during which it may take its job) of "
                                 f"{len(jobs)} engines, the engine not among the others; got {early!r}")
        self._layout = layout
        self._jobs = tuple(jobs)
        self._early = early
        W = layout.config.data_width
        members = {f"job{e}": Out(stream.Signature(job)) for e, job in enumerate(jobs)}
        super().__init__(members | {
            "start": In(1),
            "done": Out(1),
            "program": In(64),
            "count": In(32),
            "status": Out(32),
            "desc_done": Out(32),
            "fetch": In(ReadChannelSignature(W)),
            "job_done": In(stream.Signature(JobDone)),
            "job_code": In(ErrorCode),
            "active": Out(range(max(2, len(jobs)))),
            "active_onehot": Out(max(2, len(jobs)), init=1),   # bit e: active == e (flip-flops)
            "data_error": In(1),
            "busy": Out(1),
        })

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def descriptor_words(self) -> int:
        return self._layout.descriptor_bytes // self._layout.word_bytes

    def job(self, engine: int):
        return getattr(self, f"job{engine}")

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        W = lay.config.data_width
        nwords = self.descriptor_words
        dbytes = lay.descriptor_bytes

        running = Signal()
        stopping = Signal()
        idx = Signal(32)           # descriptor being loaded / checked / run
        # idx + 1 == count as a registered flag (a down-counter of the descriptors after idx), not
        # an adder feeding a 32-bit compare on the job-done path
        desc_left = Signal(32)
        last_desc = Signal()
        m.d.comb += self.busy.eq(running)

        # the engine's done record and run-time code through a register slice: the engine's done
        # logic and this FSM's next state are separate register stages (one cycle per job)
        done_rec, job_code = self.job_done.payload.as_value(), Value.cast(self.job_code)
        m.submodules.done_slice = dsl = SkidBuffer(len(done_rec) + len(job_code))
        m.d.comb += [dsl.i.valid.eq(self.job_done.valid), self.job_done.ready.eq(dsl.i.ready),
                     dsl.i.payload.eq(Cat(done_rec, job_code))]
        done_valid = dsl.o.valid
        done_error = dsl.o.payload[0]                  # JobDone.error
        done_code = dsl.o.payload[len(done_rec):]

        # -- prefetch: at most the current and the next descriptor requested -------------
        # what the prefetch decision reads, as flags: descriptors not yet requested (a down-counter
        # and its zero flag) and requested ahead of the current one (0..2), not 32-bit compares
        fetch_left = Signal(32)
        fetch_all = Signal()                 # every descriptor requested
        fetch_ahead = Signal(range(3))       # requested minus finished
        desc_next = Signal()                 # the current descriptor finished (idx steps)
        fetch_addr = Signal(64)
        cmd_valid = Signal()
        words_pending = Signal(range(2 * nwords + 1))
        m.d.comb += [
            self.fetch.cmd.valid.eq(cmd_valid),
            self.fetch.cmd.payload.bytes.eq(dbytes),
        ]
        want = Signal()
        m.d.comb += want.eq(running & ~stopping & ~cmd_valid & ~fetch_all & (fetch_ahead != 2))
        step_count(m, fetch_ahead, want, desc_next)
        with m.If(want):
            m.d.sync += [
                cmd_valid.eq(1),
                self.fetch.cmd.payload.addr.eq(fetch_addr),
                fetch_addr.eq(fetch_addr + dbytes),
                fetch_left.eq(fetch_left - 1), fetch_all.eq(fetch_left == 1),
            ]
        with m.Elif(self.fetch.cmd.ready):
            m.d.sync += cmd_valid.eq(0)
        pop = Signal()
        m.d.comb += pop.eq(self.fetch.data.valid & self.fetch.data.ready)
        m.d.sync += words_pending.eq(words_pending + (want * nwords) - pop)

        # -- the descriptor: u64 slots, read by each opcode's format ---------------------
        desc = Signal(nwords * W)
        word_cnt = Signal(range(nwords))
        op = desc[:64]

        def slots(opcode):
            return {name: desc[64 * i:64 * i + 64] for i, name in enumerate(lay.fields_for(opcode))}

        # -- validation and routing: one check set per opcode ----------------------------
        # A check's products are registered (EVAL: one cycle after the descriptor's last word), its
        # verdict one cycle later (VERDICT), and CHECK picks the first failing one: the products,
        # the checks' comparisons and the priority choice are three register stages, not one path.
        ops = _StagedOps(m)
        code = Signal(ErrorCode)
        target = Signal(range(max(2, len(self._jobs))))
        m.d.comb += code.eq(ErrorCode.BAD_OPCODE)
        is_ops = {}              # opcode -> "desc holds it", registered (settled from EVAL on)
        for e, fam in enumerate(lay.families):
            for opcode in fam.opcodes:
                tag = opcode.name.lower()
                is_ops[opcode] = is_op = Signal(name=f"{tag}_is_op")
                m.d.sync += is_op.eq(op == opcode)
                op_code = Signal(ErrorCode, name=f"{tag}_code")
                check_fields = {name: _Factor(m, v) for name, v in slots(opcode).items()}
                for i, check in reversed(list(enumerate(lay.checks(opcode)))):   # the first check wins
                    fails = Signal(name=f"{tag}_fails{i}")
                    m.d.sync += fails.eq(RtlOps._bit(check.fails(check_fields, ops)))
                    with m.If(fails):
                        m.d.comb += op_code.eq(check.code)
                with m.If(is_op):
                    m.d.comb += [code.eq(op_code), target.eq(e)]
        is_end = Signal()
        m.d.sync += is_end.eq(op == Opcode.END)

        # job records: each member from its slot (an array member x from x0, x1, ...)
        for e, (fam, job_layout) in enumerate(zip(lay.families, self._jobs)):
            job = self.job(e).payload
            for name, member in job_layout:
                sources = []
                for opcode in fam.opcodes:
                    s = slots(opcode)
                    if name == "op":
                        sources.append((opcode, op))
                    elif isinstance(member.shape, data.ArrayLayout):
                        sources.append((opcode, Cat(*(s[f"{name}{i}"][:Shape.cast(member.shape.elem_shape).width]
                                                      for i in range(member.shape.length)))))
                    else:               # a member of another opcode of the family: 0 here
                        sources.append((opcode, s[name] if name in s else Const(0, 1)))
                # by the registered opcode flags: a job is offered only after its checks' verdict
                value = sources[0][1]
                for opcode, src in sources[1:]:
                    value = Mux(is_ops[opcode], src, value)
                m.d.comb += Value.cast(job[name]).eq(value)

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

        # -- early hand-over (``early``): the next descriptor's verdict while the engine runs --------
        # desc holds it once ``loaded``; its checks' verdict (``code``, ``target``) settles two
        # cycles later (the EVAL and VERDICT stages) and is registered as one flag a cycle after
        # that (the offer starts at flip-flops), which ``loaded_age`` counts
        early_go = Signal()                 # this cycle the early engine is offered its job
        early_held = Signal()               # the early engine holds the next descriptor's job
        loaded_age = Signal(range(4))
        m.d.sync += loaded_age.eq(Mux(loaded & (loaded_age != 3), loaded_age + 1, Mux(loaded, 3, 0)))
        if self._early is not None:
            early_engine, during = self._early
            running_during = Cat(*(self.active_onehot[d] for d in during)).any()
            early_ok = Signal()             # the verdict: a valid job for the early engine
            m.d.sync += early_ok.eq(~is_end & (code == ErrorCode.NONE) & (target == early_engine))
            verdict_ok = (loaded_age == 3) & early_ok & ~self.fetch.error
            m.d.comb += early_go.eq(running_during & verdict_ok & ~early_held)

        misaligned = RtlOps.misaligned
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        running.eq(1), stopping.eq(0),
                        idx.eq(0), desc_left.eq(self.count - 1), last_desc.eq(self.count == 1),
                        fetch_left.eq(self.count), fetch_all.eq(self.count == 0), fetch_ahead.eq(0),
                        fetch_addr.eq(self.program), word_cnt.eq(0),
                        loaded.eq(0), self.status.eq(0), self.desc_done.eq(0), early_held.eq(0),
                    ]
                    with m.If(self.count == 0):
                        m.d.sync += stopping.eq(1)
                        m.next = "DRAIN"
                    with m.Elif(misaligned(self.program, lay.addr_align)):
                        # descriptor 0 cannot be fetched from a misaligned program address
                        m.d.sync += [stopping.eq(1), self.status.eq(1 | ErrorCode.MISALIGNED << 8)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += load_en.eq(1)
                with m.If(loaded | last_word):
                    m.next = "EVAL"
            with m.State("EVAL"):
                # desc is complete: the checks' products register it this cycle
                m.next = "VERDICT"
            with m.State("VERDICT"):
                # the check verdicts register this cycle (desc and the products are settled)
                m.next = "CHECK"
            with m.State("CHECK"):
                # the reader's error flag covers every word delivered so far, this
                # descriptor's last word included (it rose, if at all, when that word left)
                m.d.sync += loaded.eq(0)
                with m.If(self.fetch.error):
                    m.d.sync += [self.status.eq(status(ErrorCode.AXI_RESP)), stopping.eq(1)]
                    m.next = "FLUSH"
                with m.Elif(is_end):
                    m.d.sync += stopping.eq(1)
                    m.next = "DRAIN"
                with m.Elif(code != ErrorCode.NONE):
                    m.d.sync += [self.status.eq(status(code)), stopping.eq(1)]
                    m.next = "DRAIN"
                with m.Else():
                    m.d.sync += [self.active.eq(target), self.active_onehot.eq(1 << target)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(early_held):
                    # the engine took this job early (WAIT below): it runs now that it is active
                    m.d.sync += early_held.eq(0)
                    m.next = "WAIT"
                with m.Else():
                    for e in range(len(self._jobs)):
                        with m.If(self.active_onehot[e]):
                            m.d.comb += self.job(e).valid.eq(1)
                            with m.If(self.job(e).ready):
                                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [load_en.eq(1), dsl.o.ready.eq(1)]
                if self._early is not None:
                    with m.If(early_go & ~done_valid):
                        m.d.comb += self.job(early_engine).valid.eq(1)
                        with m.If(self.job(early_engine).ready):
                            m.d.sync += early_held.eq(1)
                with m.If(done_valid):
                    with m.If(done_code != 0):          # the engine's own run-time error
                        m.d.sync += [self.status.eq(status(done_code)), stopping.eq(1)]
                        m.next = "FLUSH"
                    with m.Elif(done_error | self.data_error):
                        m.d.sync += [self.status.eq(status(ErrorCode.AXI_RESP)), stopping.eq(1)]
                        m.next = "FLUSH"
                    with m.Else():
                        m.d.comb += desc_next.eq(1)
                        m.d.sync += [self.desc_done.eq(self.desc_done + 1), idx.eq(idx + 1),
                                     desc_left.eq(desc_left - 1), last_desc.eq(desc_left == 1)]
                        with m.If(last_desc):
                            m.d.sync += stopping.eq(1)
                            m.next = "DRAIN"
                        with m.Elif(loaded | last_word):
                            m.next = "EVAL"
                        with m.Else():
                            m.next = "LOAD"
            with m.State("FLUSH"):
                # an error stopped the run: a job handed over early runs to its end (its output
                # is written; status keeps the earlier error), then the run drains
                with m.If(early_held):
                    if self._early is not None:
                        m.d.sync += [self.active.eq(early_engine), self.active_onehot.eq(1 << early_engine)]
                    m.next = "FLUSH_WAIT"
                with m.Else():
                    m.next = "DRAIN"
            with m.State("FLUSH_WAIT"):
                m.d.comb += dsl.o.ready.eq(1)
                with m.If(done_valid):
                    m.d.sync += early_held.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # discard prefetched words so that the next run starts clean
                m.d.comb += drain.eq(1)
                with m.If(~cmd_valid & (words_pending == 0)):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
        return m
