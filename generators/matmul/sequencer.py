"""Job sequencer: takes a MATMUL job, sizes its buffers and issues the DMA commands.

Byte counts follow ``DesignLayout.{act,weight_port,scale,requant,out}_bytes``
(§4) and are computed once per job in a few registered setup cycles. Each
command stream has its own per-block counter, so every reader gets its next
row block's command as soon as it takes the previous one: the shell can
prefetch across block boundaries and the weight stream never pauses between
blocks. ``done`` follows the writer's ``out_done`` for the job's output.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ...mathutil import ceil_div, exact_log2
from ..streams import JobDone, dma_command_stream
from .signature import matmul_job_layout
from ..params import require_positive_ints, require_powers_of_two

__all__ = ["JobSequencer", "ceil_div_const"]

SETUP_CYCLES = 3


def ceil_div_const(value, divisor: int, value_bits: int):
    """``ceil(value / divisor)`` for an unsigned ``value_bits``-bit value and a constant divisor.

    Powers of two are a shift; other divisors multiply by ``ceil(2^s / d)`` with
    ``s = value_bits + 1 + ceil(log2 d)``, exact for every input of that width.
    """
    if divisor & (divisor - 1) == 0:
        return (value + divisor - 1) >> exact_log2(divisor)
    s = value_bits + 1 + (divisor - 1).bit_length()      # (d - 1).bit_length() = ceil(log2 d), any d
    recip = ceil_div(1 << s, divisor)
    return ((value + divisor - 1) * recip) >> s


class _JobRegs:
    """One register per descriptor field (see :func:`matmul_job_layout`)."""

    def __init__(self, weight_ports: int):
        layout = matmul_job_layout(weight_ports)
        self._names = []
        for name, field in layout:
            if name == "w_addr":
                continue
            setattr(self, name, Signal(Shape.cast(field.shape), name=f"job_{name}"))
            self._names.append(name)
        self.w_addr = [Signal(64, name=f"job_w_addr{i}") for i in range(weight_ports)]

    def load(self, payload):
        return ([getattr(self, n).eq(getattr(payload, n)) for n in self._names]
                + [w.eq(payload.w_addr[i]) for i, w in enumerate(self.w_addr)])


class JobSequencer(wiring.Component):
    """One job at a time: IDLE -> SETUP -> RUN (commands, then wait) -> DONE.

    ``start`` pulses once the job's parameters (``m``, ``n``, ``kc``, ``wbits``,
    ``int8``, ``out_shift``) are valid; ``finished`` from the output packer and
    ``out_done`` from the writer end the job.
    """

    def __init__(self, *, rows: int, lanes: int, weight_ports: int, data_width: int, group_size: int,
                 max_k: int, ternary_packing: str = "2bit"):
        require_positive_ints(rows=rows, lanes=lanes, weight_ports=weight_ports, data_width=data_width, group_size=group_size, max_k=max_k)
        require_powers_of_two(lanes=lanes, weight_ports=weight_ports, data_width=data_width, group_size=group_size)
        if group_size < 16 or data_width < 64:
            raise ValueError(f"group_size must be >= 16 and data_width >= 64, got {group_size}, {data_width}")
        if ternary_packing not in ("2bit", "5trit"):
            raise ValueError(f"ternary_packing must be '2bit' or '5trit', got {ternary_packing!r}")
        self._packing = ternary_packing
        self._rows, self._lanes, self._ports = rows, lanes, weight_ports
        self._width, self._group, self._max_k = data_width, group_size, max_k
        self._lines = max_k // lanes
        super().__init__({
            "job": In(stream.Signature(matmul_job_layout(weight_ports))),
            "done": Out(stream.Signature(JobDone)),
            "act_cmd": Out(dma_command_stream()),
            "scale_cmd": Out(dma_command_stream()),
            "rq_cmd": Out(dma_command_stream()),
            "w_cmd": Out(dma_command_stream()).array(weight_ports),
            "out_cmd": Out(dma_command_stream()),
            "out_done": In(stream.Signature(JobDone)),
            "start": Out(1),
            "m": Out(32),
            "n": Out(32),
            "kc": Out(range(self._lines + 1)),
            "wbits": Out(4),
            "int8": Out(1),
            "out_shift": Out(6),
            "finished": In(1),
            "busy": Out(1),
        })

    def _weight_bytes(self, code, nk, cw: int, B: int):
        """Bytes per weight stripe (``DesignLayout.weight_port_bytes``): the stream of ``nk``
        weights (b bits each by descriptor code 2/3/4/8, or ceil(nk/5) bytes for 5-trit
        ternary) in whole combined words of ``cw`` bits, one ``B``-byte word per stripe."""
        bits = Mux(code == 8, nk << 3, Mux(code == 4, nk << 2, nk << 1))
        words = (bits + cw - 1) >> exact_log2(cw)
        if self._packing == "5trit":       # ceil(ceil(nk / 5) / (cw / 8)) = ceil(nk / (5 cw / 8))
            nk_bits = 33 + self._max_k.bit_length()
            words = Mux(code == 3, ceil_div_const(nk[:nk_bits], 5 * cw // 8, nk_bits), words)
        return words << exact_log2(B)

    def elaborate(self, platform):
        m = Module()
        R, P = self._rows, self._ports
        B = self._width // 8
        cw = P * self._width                       # combined weight word, bits

        # The job's fields as separate registers (one wide struct register would be copied as a
        # whole every cycle by a simulator).
        job = _JobRegs(P)
        m.d.comb += [self.m.eq(job.m), self.n.eq(job.n), self.kc.eq(job.k >> exact_log2(self._lanes)),
                     self.wbits.eq(job.wbits), self.int8.eq(job.out_mode), self.out_shift.eq(job.out_shift)]

        def round_words(v):
            return ((v + B - 1) >> exact_log2(B)) << exact_log2(B)

        # -- setup: byte counts (registered; settled after SETUP_CYCLES) ---------------------
        nk = Signal(64)
        mk = Signal(64)
        nblocks = Signal(34)
        rk = Signal(32)
        w_bytes = Signal(32)
        s_bytes = Signal(32)
        q_bytes = Signal(32)
        o_bytes = Signal(32)
        out_elems = Signal(64)
        setup = Signal()
        with m.If(setup):
            m.d.sync += [
                nk.eq(job.n * job.k),
                mk.eq(job.m * job.k),
                nblocks.eq(ceil_div_const(job.m, R, 32)),
                rk.eq(job.k * R),
                w_bytes.eq(self._weight_bytes(job.wbits, nk, cw, B)),
                s_bytes.eq(round_words(nk >> (exact_log2(self._group) - 1))),
                q_bytes.eq(round_words(job.n << 3)),
                out_elems.eq((nblocks * R)[:32] * job.n),
                o_bytes.eq(round_words(Mux(job.out_mode, out_elems, out_elems << 2))),
            ]

        # -- command streams --------------------------------------------------------------
        out_pending = Signal()
        act_left = Signal(64)                      # activation bytes not yet requested
        act_addr = Signal(64)
        w_left = [Signal(34, name=f"w{i}_left") for i in range(P)]
        s_left = Signal(34)
        q_left = Signal(34)
        running = Signal()
        act_bytes = Mux(act_left < rk, act_left, rk)

        m.d.comb += [
            self.out_cmd.valid.eq(running & out_pending),
            self.out_cmd.payload.addr.eq(job.y_addr),
            self.out_cmd.payload.bytes.eq(o_bytes),
            self.act_cmd.valid.eq(running & (act_left != 0)),
            self.act_cmd.payload.addr.eq(act_addr),
            self.act_cmd.payload.bytes.eq(act_bytes),
            self.scale_cmd.valid.eq(running & (s_left != 0)),
            self.scale_cmd.payload.addr.eq(job.s_addr),
            self.scale_cmd.payload.bytes.eq(s_bytes),
            self.rq_cmd.valid.eq(running & (q_left != 0)),
            self.rq_cmd.payload.addr.eq(job.q_addr),
            self.rq_cmd.payload.bytes.eq(q_bytes),
        ]
        for i in range(P):
            m.d.comb += [self.w_cmd[i].valid.eq(running & (w_left[i] != 0)),
                         self.w_cmd[i].payload.addr.eq(job.w_addr[i]),
                         self.w_cmd[i].payload.bytes.eq(w_bytes)]
        with m.If(self.start):
            m.d.sync += [out_pending.eq(1), act_left.eq(mk), act_addr.eq(job.x_addr),
                         s_left.eq(nblocks), q_left.eq(Mux(job.out_mode, nblocks, 0))]
            m.d.sync += [w.eq(nblocks) for w in w_left]
        with m.Else():
            with m.If(self.out_cmd.ready & self.out_cmd.valid):
                m.d.sync += out_pending.eq(0)
            with m.If(self.act_cmd.ready & self.act_cmd.valid):
                m.d.sync += [act_left.eq(act_left - act_bytes), act_addr.eq(act_addr + rk)]
            with m.If(self.scale_cmd.ready & self.scale_cmd.valid):
                m.d.sync += s_left.eq(s_left - 1)
            with m.If(self.rq_cmd.ready & self.rq_cmd.valid):
                m.d.sync += q_left.eq(q_left - 1)
            for i in range(P):
                with m.If(self.w_cmd[i].ready & self.w_cmd[i].valid):
                    m.d.sync += w_left[i].eq(w_left[i] - 1)

        # -- job state ----------------------------------------------------------------------
        count = Signal(range(SETUP_CYCLES + 1))
        error = Signal()
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.job.ready.eq(1)
                with m.If(self.job.valid):
                    m.d.sync += [job.load(self.job.payload), count.eq(0)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += [setup.eq(1), self.busy.eq(1)]
                m.d.sync += count.eq(count + 1)
                with m.If(count == SETUP_CYCLES - 1):
                    m.d.comb += self.start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [running.eq(1), self.busy.eq(1)]
                m.d.comb += self.out_done.ready.eq(self.finished)
                with m.If(self.finished & self.out_done.valid):
                    m.d.sync += error.eq(self.out_done.payload.error)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.error.eq(error), self.busy.eq(1)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m
