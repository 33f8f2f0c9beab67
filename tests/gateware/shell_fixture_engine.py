"""A test-only engine with the matmul signature: exercises the whole shell without the real matmul.

For each job it writes X (``round_words(M*K)`` bytes from ``x_addr``) to
``y_addr`` unchanged, and reads and discards the weights (every stripe), the
group scales and, in INT8 mode, the requant parameters, with the byte counts
of docs/architecture.md §4. It reports ``done`` after the writer's
``out_done`` and after every word it asked for has arrived. Each copied word
is one "fire" of ``min(M, rows)`` rows x ``lanes``, so the MAC/stall counters move.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring

from hbmforge.generators.matmul.signature import matmul_signature
from hbmforge.encodings import OutMode
from hbmforge.layout import DesignLayout


def expected_bytes(layout: DesignLayout, m, k, n, wbits, out_mode):
    """What the fixture reads and writes for one job: dict of byte counts."""
    return {
        "act": layout.matmul.act_bytes(m, k),
        "out": layout.matmul.act_bytes(m, k),
        "scale": layout.matmul.scale_bytes(n, k),
        "rq": layout.matmul.requant_bytes(n) if out_mode == OutMode.INT8 else 0,
        "w": layout.matmul.weight_port_bytes(n, k, wbits),
        "fires": layout.matmul.act_bytes(m, k) // layout.word_bytes,
        "fire_rows": min(m, layout.mm.rows),
    }


class PassThroughEngine(wiring.Component):
    def __init__(self, layout: DesignLayout):
        self._layout = layout
        mm = layout.mm
        super().__init__(matmul_signature(layout))

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        mm = lay.mm
        P = mm.weight_ports
        W = lay.config.data_width
        shift = lay.word_bytes.bit_length() - 1
        gshift = mm.group_size.bit_length() - 1
        pwshift = (P * W).bit_length() - 1
        job = self.job.payload

        def words(nbytes):
            return (nbytes + lay.word_bytes - 1) >> shift

        # byte counts, combinational from the job record (held while job.valid)
        mk = job.m * job.k
        act_bytes = Signal(64)
        scale_bytes = Signal(64)
        rq_bytes = Signal(64)
        w_bytes = Signal(64)
        m.d.comb += [
            act_bytes.eq(words(mk) << shift),
            scale_bytes.eq(words(job.n * (job.k >> gshift) * 2) << shift),
            rq_bytes.eq(Mux(job.out_mode == OutMode.INT8, words(job.n * 8) << shift, 0)),
            w_bytes.eq(((job.n * job.k * job.wbits + P * W - 1) >> pwshift) << shift),
        ]

        streams = ["act", "scale", "rq", "out"] + [f"w{i}" for i in range(P)]
        cmd_streams = {"act": self.act_cmd, "scale": self.scale_cmd, "rq": self.rq_cmd,
                       "out": self.out_cmd, **{f"w{i}": self.w_cmd[i] for i in range(P)}}
        pending = {s: Signal(name=f"{s}_pending") for s in streams}
        left = {s: Signal(32, name=f"{s}_left") for s in streams if s != "out"}
        busy = Signal()
        out_seen = Signal()
        out_error = Signal()
        rows = Signal(range(mm.rows + 1))
        m.d.comb += self.busy.eq(busy)

        for s in streams:
            cmd = cmd_streams[s]
            m.d.comb += cmd.valid.eq(pending[s])
            with m.If(pending[s] & cmd.ready):
                m.d.sync += pending[s].eq(0)

        m.d.comb += self.job.ready.eq(~busy)
        with m.If(self.job.valid & ~busy):
            m.d.sync += [busy.eq(1), out_seen.eq(0), out_error.eq(0),
                         rows.eq(Mux(job.m < mm.rows, job.m, mm.rows))]
            addrs = {"act": (job.x_addr, act_bytes), "out": (job.y_addr, act_bytes),
                     "scale": (job.s_addr, scale_bytes), "rq": (job.q_addr, rq_bytes),
                     **{f"w{i}": (job.w_addr[i], w_bytes) for i in range(P)}}
            for s in streams:
                addr, nbytes = addrs[s]
                cmd = cmd_streams[s]
                m.d.sync += [cmd.payload.addr.eq(addr), cmd.payload.bytes.eq(nbytes),
                             pending[s].eq(nbytes != 0)]
                if s != "out":
                    m.d.sync += left[s].eq(nbytes >> shift)

        # copy X to Y; each copied word is one "fire"
        fire = Signal()
        m.d.comb += [
            self.out_data.valid.eq(self.act_data.valid & (left["act"] != 0)),
            self.out_data.payload.eq(self.act_data.payload),
            self.act_data.ready.eq(self.out_data.ready & (left["act"] != 0)),
            fire.eq(self.act_data.valid & self.act_data.ready),
            self.stall.eq(busy & ~fire),
            self.mac_inc.eq(Mux(fire, rows * mm.lanes, 0)),
        ]
        with m.If(fire):
            m.d.sync += left["act"].eq(left["act"] - 1)
        data_streams = {"scale": self.scale_data, "rq": self.rq_data,
                        **{f"w{i}": self.w_data[i] for i in range(P)}}
        for s, ds in data_streams.items():
            m.d.comb += ds.ready.eq(left[s] != 0)
            with m.If(ds.valid & (left[s] != 0)):
                m.d.sync += left[s].eq(left[s] - 1)

        m.d.comb += self.out_done.ready.eq(busy & ~out_seen)
        with m.If(self.out_done.valid & busy & ~out_seen):
            m.d.sync += [out_seen.eq(1), out_error.eq(self.out_done.payload.error)]

        finished = busy & out_seen
        for s in streams:
            finished = finished & ~pending[s]
        for s in left:
            finished = finished & (left[s] == 0)
        done_valid = Signal()
        m.d.comb += [self.done.valid.eq(done_valid), self.done.payload.error.eq(out_error)]
        with m.If(finished & ~done_valid):
            m.d.sync += done_valid.eq(1)
        with m.If(done_valid & self.done.ready):
            m.d.sync += [done_valid.eq(0), busy.eq(0), out_seen.eq(0)]
        return m


def passthrough_engines(layout: DesignLayout) -> dict:
    """The kernel's engine map with the pass-through engine as the matmul engine."""
    from hbmforge.encodings import Opcode

    return {Opcode.MATMUL: PassThroughEngine(layout)}
