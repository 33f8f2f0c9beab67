"""The low-bit matmul engine: int8 activations x int4/int8 weights, group scales, requant.

Dataflow (docs/architecture.md §6)::

    job -> JobSequencer -> act/w/scale/rq/out DMA commands
    w_data[P] -> WeightUnpacker --\\
    act_data -> ActivationBuffer ---> MacArray -> GroupAccumulator
    scale_data, rq_data -> WidthAdapter --/                            |
                                                                 OutputStage
    out_data <- OutputPacker <- column FIFO <--------------------------/

With ``arch: tlmm`` the array is a :class:`~.tlmm.TlmmArray` (ternary table lookup):
the scheduler first builds the row block's tables from the activation buffer, then
fires exactly as for the MAC array (same sums, same accumulators and output path).

Everything from the array's fire register on is a fixed-latency pipeline without
stalls; :class:`FireScheduler` only lets a column's last fire through when the
column FIFO has a free slot for every column in flight, so back-pressure on
``out_data`` stalls the array instead of losing or reordering results.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered

from ...layout import DesignLayout
from .accum import GroupAccumulator
from .actbuf import ActivationBuffer
from .array import MacArray
from .gearbox import WidthAdapter
from .pack import OutputPacker, column_layout
from .requant import OutputStage
from .scheduler import FireScheduler
from .sequencer import JobSequencer
from .signature import matmul_signature
from ...numerics.tlmm import table_entries as tlmm_table_entries
from .tlmm import TlmmArray, tlmm_array_latency
from .unpack import WeightUnpacker

__all__ = ["MatmulEngine"]


class MatmulEngine(wiring.Component):
    """The matmul engine for one :class:`~hbmforge.layout.DesignLayout`.

    All widths come from ``layout.matmul.widths``; ``rows``, ``lanes``, ``weight_ports``,
    ``group_size``, ``scale_bits`` and ``max_k`` from ``layout.config.matmul``.
    """

    def __init__(self, layout: DesignLayout, *, levels_per_stage: int = 2):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        if not isinstance(levels_per_stage, int) or levels_per_stage < 1:
            raise ValueError(f"levels_per_stage must be a positive int, got {levels_per_stage!r}")
        mm = layout.mm
        self._layout = layout
        self._levels_per_stage = levels_per_stage
        self._groups = max(1, mm.lanes // mm.group_size)
        self._fires_per_group = max(1, mm.group_size // mm.lanes)
        lane_w = max(layout.matmul.lane_bits(f) for f in mm.weight_bits)
        self._tlmm = mm.arch == "tlmm"
        # latency of the pipeline behind the fire registers, and the column FIFO that absorbs it
        if self._tlmm:
            arr_lat = tlmm_array_latency(lanes=mm.lanes, group_size=mm.group_size, g=mm.tlmm_group,
                                         levels_per_stage=levels_per_stage)
        else:
            arr_lat = 2 + -(-(min(mm.lanes, mm.group_size).bit_length() - 1) // levels_per_stage)
        tree = self._groups.bit_length() - 1
        acc_lat = 3 + (-(-tree // levels_per_stage) if tree else 0)
        self._latency = arr_lat + acc_lat + OutputStage.LATENCY
        self._fifo_depth = self._latency + 4
        self._lane_w = lane_w
        super().__init__(matmul_signature(layout))

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def latency(self) -> int:
        """Cycles from a column's last fire to its results entering the column FIFO."""
        return self._latency

    @property
    def fifo_depth(self) -> int:
        """Columns the output FIFO holds (the array's output credit)."""
        return self._fifo_depth

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        mm, wd = lay.mm, lay.matmul.widths
        R, L, P, G = mm.rows, mm.lanes, mm.weight_ports, mm.group_size
        W = lay.config.data_width
        NG, sb = self._groups, mm.scale_bits

        m.submodules.seq = seq = JobSequencer(rows=R, lanes=L, weight_ports=P, data_width=W,
                                              group_size=G, max_k=mm.max_k, ternary_packing=mm.ternary_packing)
        m.submodules.unpack = unpack = WeightUnpacker(lanes=L, weight_ports=P, data_width=W,
                                                      weight_bits=tuple(mm.weight_bits), ternary_packing=mm.ternary_packing)
        m.submodules.actbuf = actbuf = ActivationBuffer(rows=R, lanes=L, data_width=W, max_k=mm.max_k)
        m.submodules.scales = scales = WidthAdapter(W, 16 * NG)
        m.submodules.rqparams = rqparams = WidthAdapter(W, 64)
        tlmm = self._tlmm
        m.submodules.sched = sched = FireScheduler(
            rows=R, lanes=L, group_size=G, max_k=mm.max_k,
            table_entries=tlmm_table_entries(mm.tlmm_group) if tlmm else None,
            build_gap=TlmmArray.BUILD_GAP)

        # -- job and DMA commands --------------------------------------------------------
        wiring.connect(m, wiring.flipped(self.job), seq.job)
        wiring.connect(m, wiring.flipped(self.done), seq.done)
        wiring.connect(m, wiring.flipped(self.out_done), seq.out_done)
        for name in ("act_cmd", "scale_cmd", "rq_cmd", "out_cmd"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(seq, name))
        for i in range(P):
            wiring.connect(m, wiring.flipped(self.w_cmd[i]), seq.w_cmd[i])
            wiring.connect(m, wiring.flipped(self.w_data[i]), unpack.w_data[i])
        wiring.connect(m, wiring.flipped(self.act_data), actbuf.data)
        wiring.connect(m, wiring.flipped(self.scale_data), scales.i)
        wiring.connect(m, wiring.flipped(self.rq_data), rqparams.i)
        m.d.comb += [
            unpack.wbits.eq(seq.wbits),
            actbuf.start.eq(seq.start), actbuf.m.eq(seq.m), actbuf.kc.eq(seq.kc),
            sched.start.eq(seq.start), sched.m.eq(seq.m), sched.n.eq(seq.n), sched.kc.eq(seq.kc),
            sched.int8.eq(seq.int8),
        ]

        # -- fire ---------------------------------------------------------------------
        m.d.comb += [
            sched.w_valid.eq(unpack.o.valid), unpack.o.ready.eq(sched.w_take), unpack.o_last.eq(sched.w_last),
            sched.s_valid.eq(scales.o.valid), scales.o.ready.eq(sched.s_take), scales.o_last.eq(sched.s_last),
            sched.q_valid.eq(rqparams.o.valid), rqparams.o.ready.eq(sched.q_take),
            rqparams.o_last.eq(sched.q_last),
            sched.a_ready.eq(actbuf.ready), actbuf.release.eq(sched.a_release),
            actbuf.rd_line.eq(sched.rd_line),
        ]
        out_tag = data.StructLayout({"mult": signed(wd.mult_bits), "shift": range(wd.max_requant_shift + 1),
                                     "rows": range(R + 1), "last": 1})
        acc_tag = data.StructLayout({"grp_first": 1, "grp_last": 1, "col_first": 1, "col_last": 1,
                                     "scales": data.ArrayLayout(unsigned(sb), NG), "out": out_tag})
        f_tag = Signal(acc_tag)
        m.d.comb += [
            f_tag.grp_first.eq(sched.grp_first), f_tag.grp_last.eq(sched.grp_last),
            f_tag.col_first.eq(sched.col_first), f_tag.col_last.eq(sched.col_last),
            f_tag.out.mult.eq(rqparams.o.payload[:32]), f_tag.out.shift.eq(rqparams.o.payload[32:39]),
            f_tag.out.rows.eq(sched.rows_valid), f_tag.out.last.eq(sched.job_last),
        ]
        m.d.comb += [f_tag.scales[j].eq(scales.o.payload[16 * j:16 * j + sb]) for j in range(NG)]
        # counters: a fire multiplies ``rows_valid`` rows by ``lanes`` weights; a busy cycle
        # without a fire is a stall (waiting for weights, activations, scales or credit)
        m.d.comb += [self.busy.eq(seq.busy), self.stall.eq(seq.busy & ~sched.fire),
                     self.mac_inc.eq(Mux(sched.fire, sched.rows_valid * L, 0))]

        # -- datapath -----------------------------------------------------------------
        lane_shape = getattr(unpack, "lane_shape", signed(self._lane_w))
        if tlmm:
            m.submodules.array = array = TlmmArray(
                rows=R, lanes=L, group_size=G, g=mm.tlmm_group, max_k=mm.max_k, weight_shape=lane_shape,
                tag_layout=acc_tag, levels_per_stage=self._levels_per_stage)
            m.d.comb += [array.build.eq(sched.build), array.build_line.eq(sched.build_line),
                         array.build_entry.eq(sched.build_entry), array.line.eq(sched.line)]
        else:
            # a ternary-only engine gets the plain baseline: a sign select per lane, no multiplier
            lane_format = "ternary" if list(mm.weight_bits) == ["ternary"] else None
            m.submodules.array = array = MacArray(rows=R, lanes=L, group_size=G, weight_shape=lane_shape,
                                                  tag_layout=acc_tag, levels_per_stage=self._levels_per_stage,
                                                  lane_format=lane_format)
        m.d.comb += [array.valid.eq(sched.fire), array.w.eq(unpack.o.payload), array.x.eq(actbuf.rd_data),
                     array.tag.eq(f_tag)]
        m.submodules.accum = accum = GroupAccumulator(
            rows=R, groups=NG, sum_shape=array.sum_shape, group_bits=wd.group_bits, scale_bits=sb,
            acc_bits=wd.acc_bits, tag_layout=out_tag, fires_per_group=self._fires_per_group,
            levels_per_stage=self._levels_per_stage)
        m.d.comb += [accum.valid.eq(array.o_valid), accum.sums.eq(array.sums),
                     accum.grp_first.eq(array.o_tag.grp_first), accum.grp_last.eq(array.o_tag.grp_last),
                     accum.col_first.eq(array.o_tag.col_first), accum.col_last.eq(array.o_tag.col_last),
                     accum.scales.eq(array.o_tag.scales), accum.tag.eq(array.o_tag.out)]
        m.submodules.requant = rq = OutputStage(rows=R, acc_bits=wd.acc_bits, mult_bits=wd.mult_bits,
                                                max_out_shift=wd.max_out_shift,
                                                max_requant_shift=wd.max_requant_shift)
        m.d.comb += [rq.valid.eq(accum.o_valid), rq.acc.eq(accum.acc), rq.int8.eq(seq.int8),
                     rq.out_shift.eq(seq.out_shift), rq.mult.eq(accum.o_tag.mult),
                     rq.shift.eq(accum.o_tag.shift), rq.rows_valid.eq(accum.o_tag.rows),
                     rq.tag.eq(accum.o_tag.last)]
        assert array.latency + accum.latency + rq.latency == self._latency

        # -- output -------------------------------------------------------------------
        col = column_layout(R)
        m.submodules.colfifo = fifo = SyncFIFOBuffered(width=col.size, depth=self._fifo_depth)
        wcol = Signal(col)
        m.d.comb += [wcol.y.eq(rq.y), wcol.last.eq(rq.o_tag), fifo.w_data.eq(wcol), fifo.w_en.eq(rq.o_valid)]
        m.submodules.packer = packer = OutputPacker(rows=R, data_width=W)
        m.d.comb += [packer.i.payload.eq(fifo.r_data), packer.i.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(packer.i.ready), packer.int8.eq(seq.int8), packer.start.eq(seq.start),
                     seq.finished.eq(packer.finished)]
        wiring.connect(m, packer.o, wiring.flipped(self.out_data))

        # Output credit: columns fired and not yet taken out of the FIFO.
        inflight = Signal(range(self._fifo_depth + 1))
        col_fire = sched.fire & sched.col_last
        col_read = fifo.r_rdy & fifo.r_en
        m.d.sync += inflight.eq(inflight + col_fire - col_read)
        m.d.comb += sched.credit.eq(inflight < self._fifo_depth)
        return m
