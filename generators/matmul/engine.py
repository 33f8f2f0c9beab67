"""The low-bit matmul engine: int8 activations x int2/int4/int8/ternary weights, group scales,
bias, exact split-K, requant; weights and activations held on chip in tiles.

Dataflow (docs/architecture.md §6, docs/engines/matmul.md)::

    job -> JobSequencer -> DMA commands (act, w[P], scale, rq, out) and one record per pass
    w_data[P] -> WeightUnpacker (2:4 sparse groups expanded) --\\
    scale_data -> WidthAdapter ----> WeightTileBuffer (ring of 2 x tile_n columns) --\\
    act_data -> PartialCollector --fill--> ActivationBuffer (ring of row blocks) -------> MacArray
                                 \\--partial sums ----------------------------\\            |
    rq_data -> ColumnParams (mult, shift, bias per tile column) ---------------+--> GroupAccumulator
                                                                                \\          |
    out_data <- OutputPacker <- column FIFO <-------------------------- OutputStage (init, requant)

The FireScheduler walks each pass (a K slice over a chunk of row blocks) tile by tile, every row
block of the chunk against the tile's columns, so GEMM reads each weight once per chunk and the
array fires at its full rate even when the weight ports deliver less than a fire per cycle.

With ``arch: tlmm`` the array is a :class:`~.tlmm.TlmmArray` (ternary table lookup): the
scheduler first builds the row block's tables from the activation ring (a chunk is one block),
then fires exactly as for the MAC array (same sums, same accumulators and output path).

Timing: the scheduler decides a fire in the *issue* cycle, when the rings' synchronous reads
start; one register stage later the array gets the fire, the weight line and its tag (scales
from the weight line, column parameters from ColumnParams), the activations one cycle after that.
Everything from there on is a fixed-latency pipeline without stalls; a column's last fire needs a
free slot in the column FIFO for every column in flight, so back-pressure on ``out_data`` stalls
the array instead of losing or reordering results.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from ...layout import DesignLayout
from ...mathutil import exact_log2
from .accum import GroupAccumulator, accum_latency
from .actbuf import ActivationBuffer
from .array import MacArray, array_latency
from .colparams import ColumnParams
from .gearbox import ScaleItems, WidthAdapter
from .inline import InlineScaleDemux
from .geometry import EngineGeometry, pass_layout
from .pack import OutputPacker, column_layout
from .partials import PartialCollector
from .pipe import delay
from .requant import OutputStage
from .scheduler import OUT_RAW, FireScheduler
from .sequencer import JobSequencer
from .signature import matmul_signature
from ..counters import owned_step_count
from ..fifo import StepFIFOBuffered
from ..skid import SkidBuffer, slice_stream
from .tlmm import TlmmArray, tlmm_array_latency
from .unpack import WeightUnpacker, lane_width
from .wtile import WeightTileBuffer

__all__ = ["MatmulEngine", "array_lane_format"]

#: cycles from the issue decision to the array's fire input (the rings' read register)
ISSUE_LATENCY = 1


def array_lane_format(mm, lane_width: int) -> str | None:
    """The MacArray lane format of matmul engine config ``mm`` with ``lane_width``-bit lanes.

    A ternary-only engine gets the plain baseline: a sign select per lane, no multiplier;
    ``int4_products: lut``: int4 lanes are shift-and-add (no weight_bits 8: config check);
    otherwise the array's default for the width.
    """
    if list(mm.weight_bits) == ["ternary"]:
        return "ternary"
    return "int4" if mm.int4_products == "lut" and lane_width > 2 else None


class MatmulEngine(wiring.Component):
    """The matmul engine for one :class:`~hbmforge.layout.DesignLayout`.

    All widths come from ``layout.matmul.widths``; sizes from ``layout.matmul`` and the config's
    matmul engine (``rows``, ``lanes``, ``weight_ports``, ``group_size``, ``tile_n``, ``tile_m``, ...).
    """

    def __init__(self, layout: DesignLayout, *, levels_per_stage: int = 2):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        if not isinstance(levels_per_stage, int) or levels_per_stage < 1:
            raise ValueError(f"levels_per_stage must be a positive int, got {levels_per_stage!r}")
        mm = layout.mm
        self._layout = layout
        self._geom = EngineGeometry.of(layout)
        self._levels_per_stage = levels_per_stage
        self._groups = max(1, mm.lanes // mm.group_size)
        self._fires_per_group = max(1, mm.group_size // mm.lanes)
        self._tlmm = mm.arch == "tlmm"
        self._pairs = self._geom.pairs
        # partial sums a fire hands the accumulator: groups, or half groups for the pair fire
        self._parts = self._groups * (2 if self._pairs else 1)
        # latency of the pipeline behind the issue decision, and the column FIFO that absorbs it
        if self._tlmm:
            arr_lat = tlmm_array_latency(lanes=mm.lanes, group_size=mm.group_size, g=mm.tlmm_group,
                                         levels_per_stage=levels_per_stage)
        else:
            folded = (bool(self._geom.dense_pair_codes)
                      and array_lane_format(mm, lane_width(mm.weight_bits)) == "int4")
            arr_lat = array_latency(lanes=mm.lanes, group_size=mm.group_size, levels_per_stage=levels_per_stage,
                                    pairs=self._pairs, folded=folded)
        acc_lat = accum_latency(groups=self._parts, levels_per_stage=levels_per_stage, pairs=self._pairs)
        self._latency = ISSUE_LATENCY + arr_lat + acc_lat + OutputStage.LATENCY
        self._fifo_depth = self._latency + 4
        super().__init__(matmul_signature(layout))

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    @property
    def geometry(self) -> EngineGeometry:
        return self._geom

    @property
    def latency(self) -> int:
        """Cycles from a column's last issued fire to its results entering the column FIFO."""
        return self._latency

    @property
    def fifo_depth(self) -> int:
        """Columns the output FIFO holds (the array's output credit)."""
        return self._fifo_depth

    def elaborate(self, platform):
        m = Module()
        lay, G = self._layout, self._geom
        mm, wd = lay.mm, lay.matmul.widths
        R, L, P = G.rows, G.lanes, G.weight_ports
        W = G.data_width
        NG, sb = self._groups, G.scale_bits

        geom = lay.matmul
        inline = geom.inline_scales
        m.submodules.seq = seq = JobSequencer(G, ternary_packing=mm.ternary_packing, sparse24=bool(mm.sparse24),
                                              inline_scales=inline)
        pairs = self._pairs
        m.submodules.unpack = unpack = WeightUnpacker(lanes=L, weight_ports=P, data_width=W,
                                                      weight_bits=tuple(mm.weight_bits),
                                                      ternary_packing=mm.ternary_packing,
                                                      sparse24=tuple(mm.sparse24_formats),
                                                      pairs=G.sparse_pairs,
                                                      dense_pairs=tuple(mm.dense_pair_formats)
                                                      if mm.dense_pairs else ())
        # inline: the scale words come out of the weight stripes, P*W bits at a time; a pair line
        # takes two columns' scales
        m.submodules.scales = scales = (ScaleItems(P * W if inline else W, 16 * NG) if pairs
                                        else WidthAdapter(P * W if inline else W, 16 * NG))
        m.submodules.wtile = wtile = WeightTileBuffer(G)
        m.submodules.actbuf = actbuf = ActivationBuffer(G)
        m.submodules.partials = partials = PartialCollector(rows=R, data_width=W, depth=self._fifo_depth + 4,
                                                            pairs=pairs)
        m.submodules.params = params = ColumnParams(G)
        m.submodules.sched = sched = FireScheduler(G, build_gap=TlmmArray.BUILD_GAP)

        # -- job, DMA commands, pass records --------------------------------------------------
        wiring.connect(m, wiring.flipped(self.job), seq.job)
        wiring.connect(m, wiring.flipped(self.done), seq.done)
        wiring.connect(m, wiring.flipped(self.out_done), seq.out_done)
        # the data-port commands (activations, scales, requant/bias, outputs) through a register
        # slice each: the port's ready (as the shell selects it) meets the slice's flip-flop, not
        # the sequencer's loop-step logic
        for name in ("act_cmd", "scale_cmd", "rq_cmd", "out_cmd"):
            slice_stream(m, f"{name}_slice", getattr(seq, name), getattr(self, name))
        # the weight words through a register slice each: the ports see a registered ready, not the
        # unpacker's and the weight ring's write condition
        w_in = []
        for i in range(P):
            m.submodules[f"w_skid{i}"] = skid = SkidBuffer(W)
            wiring.connect(m, wiring.flipped(self.w_data[i]), skid.i)
            w_in.append(skid.o)
        if not inline:
            for i in range(P):
                wiring.connect(m, wiring.flipped(self.w_cmd[i]), seq.w_cmd[i])
                wiring.connect(m, w_in[i], unpack.w_data[i])
        else:
            # the combined words of each pass (w0's command bytes) tell the demultiplexer where passes
            # end; w0's commands wait while the queue is full (the other ports' data waits for w0's)
            ratios = {int(c): geom.inline_ratio(int(c)) for c in geom.weight_codes}
            m.submodules.demux = demux = InlineScaleDemux(weight_ports=P, data_width=W, max_ratio=max(ratios.values()))
            m.submodules.pass_words = pw = StepFIFOBuffered(width=32, depth=4)
            for i in range(1, P):
                wiring.connect(m, wiring.flipped(self.w_cmd[i]), seq.w_cmd[i])
            c0, o0 = seq.w_cmd[0], self.w_cmd[0]
            m.d.comb += [o0.payload.eq(c0.payload), o0.valid.eq(c0.valid & pw.w_rdy),
                         c0.ready.eq(o0.ready & pw.w_rdy),
                         pw.w_data.eq(c0.payload.bytes >> exact_log2(G.word_bytes)),
                         pw.w_en.eq(c0.valid & o0.ready & pw.w_rdy),
                         demux.words.payload.eq(pw.r_data), demux.words.valid.eq(pw.r_rdy),
                         pw.r_en.eq(demux.words.ready)]
            ratio = Signal(range(max(ratios.values()) + 1))
            sel = 0
            for code, r in ratios.items():
                sel = Mux(seq.wbits == code, r, sel)
            m.d.sync += ratio.eq(sel)
            m.d.comb += [demux.ratio.eq(ratio), demux.start.eq(seq.start)]
            for i in range(P):
                wiring.connect(m, w_in[i], demux.w_in[i])
                wiring.connect(m, demux.w_out[i], unpack.w_data[i])
        rec = pass_layout(G)
        for src, dst, name in ((seq.pass_fill, actbuf.passes, "fill"), (seq.pass_load, wtile.passes, "load"),
                               (seq.pass_param, params.passes, "param"), (seq.pass_fire, sched.passes, "fire")):
            f = StepFIFOBuffered(width=rec.size, depth=4)
            m.submodules[f"pass_{name}"] = f
            out = Signal(rec, name=f"pass_{name}_head")
            m.d.comb += [f.w_data.eq(src.payload), f.w_en.eq(src.valid), src.ready.eq(f.w_rdy),
                         out.eq(f.r_data), dst.payload.eq(out), dst.valid.eq(f.r_rdy), f.r_en.eq(dst.ready)]
        m.submodules.route_q = route_q = StepFIFOBuffered(width=seq.act_route.payload.shape().size, depth=16)
        m.d.comb += [route_q.w_data.eq(seq.act_route.payload), route_q.w_en.eq(seq.act_route.valid),
                     seq.act_route.ready.eq(route_q.w_rdy),
                     partials.route.payload.eq(route_q.r_data), partials.route.valid.eq(route_q.r_rdy),
                     route_q.r_en.eq(partials.route.ready)]
        m.submodules.entries_q = entries_q = StepFIFOBuffered(width=32, depth=4)
        # through a register slice: the queue's level logic sees a flip-flop, not the sequencer's
        # command handshake (a cycle of latency on a count the collector needs much later)
        m.submodules.entries_skid = e_skid = SkidBuffer(32)
        m.d.comb += [e_skid.i.payload.eq(seq.partial_entries.payload), e_skid.i.valid.eq(seq.partial_entries.valid),
                     seq.partial_entries.ready.eq(e_skid.i.ready),
                     entries_q.w_data.eq(e_skid.o.payload), entries_q.w_en.eq(e_skid.o.valid),
                     e_skid.o.ready.eq(entries_q.w_rdy),
                     partials.entries.payload.eq(entries_q.r_data), partials.entries.valid.eq(entries_q.r_rdy),
                     entries_q.r_en.eq(partials.entries.ready)]

        # -- streams into the buffers --------------------------------------------------------------
        # activations / partial sums and column parameters through register slices too (registered
        # ready to the data port)
        m.submodules.act_skid = act_skid = SkidBuffer(W)
        m.submodules.rq_skid = rq_skid = SkidBuffer(W)
        wiring.connect(m, wiring.flipped(self.act_data), act_skid.i)
        wiring.connect(m, wiring.flipped(self.rq_data), rq_skid.i)
        wiring.connect(m, act_skid.o, partials.data)
        wiring.connect(m, partials.fill, actbuf.data)
        if inline:
            wiring.connect(m, demux.s, scales.i)          # scale_data stays idle (never commanded)
        else:                                             # the group scales through a register slice too
            m.submodules.scale_skid = scale_skid = SkidBuffer(W)
            wiring.connect(m, wiring.flipped(self.scale_data), scale_skid.i)
            wiring.connect(m, scale_skid.o, scales.i)
        wiring.connect(m, rq_skid.o, params.data)
        wiring.connect(m, unpack.o, wtile.w)
        wiring.connect(m, scales.o, wtile.scales)
        start = seq.start
        if pairs:                                         # a job constant: the pipeline is empty between jobs
            m.d.comb += [unpack.pair.eq(seq.pair), scales.pair.eq(seq.pair), partials.pair.eq(seq.pair),
                         params.pair.eq(seq.pair)]
        m.d.comb += [
            unpack.wbits.eq(seq.wbits), unpack.o_last.eq(wtile.w_last), scales.o_last.eq(wtile.s_last),
            wtile.start.eq(start), wtile.n.eq(seq.n),
            actbuf.start.eq(start), actbuf.stride_log.eq(seq.stride_log), actbuf.slots_log.eq(seq.slots_log),
            partials.start.eq(start),
            params.start.eq(start), params.int8.eq(seq.int8), params.bias.eq(seq.bias),
            params.tiles.eq(seq.tiles), params.last_cols.eq(seq.last_cols),
            sched.start.eq(start), sched.tiles.eq(seq.tiles), sched.last_cols.eq(seq.last_cols),
            sched.stride_log.eq(seq.stride_log), sched.int8.eq(seq.int8), sched.bias.eq(seq.bias),
            sched.cols_ahead.eq(wtile.cols_ahead), sched.cur_lines.eq(wtile.cur_lines),
            sched.act_ahead.eq(actbuf.ahead), sched.param_tiles.eq(params.tiles_ahead),
            wtile.free.eq(sched.free_col), actbuf.release.eq(sched.release), params.free.eq(sched.free_params),
            wtile.rd_addr.eq(sched.w_addr), actbuf.rd_addr.eq(sched.a_addr), params.rd_addr.eq(sched.p_addr),
        ]

        # -- the issue register: fire and tag meet the rings' read data ---------------------------
        col_params = {"mult": signed(wd.mult_bits), "shift": range(wd.max_requant_shift + 1), "bias": signed(32)}
        out_tag = data.StructLayout(col_params | ({"odd": data.StructLayout(col_params)} if pairs else {})
                                    | {"rows": range(R + 1), "mode": 2, "init": 2, "last": 1})
        acc_tag = data.StructLayout({"grp_first": 1, "grp_last": 1, "col_first": 1, "col_last": 1,
                                     "scales": data.ArrayLayout(unsigned(sb), G.scale_slots), "out": out_tag})
        issue = Signal(data.StructLayout({"grp_first": 1, "grp_last": 1, "col_first": 1, "col_last": 1,
                                          "rows": range(R + 1), "mode": 2, "init": 2, "last": 1}))
        m.d.comb += [issue.grp_first.eq(sched.grp_first), issue.grp_last.eq(sched.grp_last),
                     issue.col_first.eq(sched.col_first), issue.col_last.eq(sched.col_last),
                     issue.rows.eq(sched.rows_valid), issue.mode.eq(sched.mode), issue.init.eq(sched.init),
                     issue.last.eq(sched.flush)]
        fire = delay(m, sched.fire, ISSUE_LATENCY, name="fire")
        itag = delay(m, issue, ISSUE_LATENCY, name="itag", reset_less=True)
        f_tag = Signal(acc_tag)
        m.d.comb += [
            f_tag.grp_first.eq(itag.grp_first), f_tag.grp_last.eq(itag.grp_last),
            f_tag.col_first.eq(itag.col_first), f_tag.col_last.eq(itag.col_last),
            f_tag.scales.eq(wtile.rd_scales),
            f_tag.out.mult.eq(params.rd_mult), f_tag.out.shift.eq(params.rd_shift), f_tag.out.bias.eq(params.rd_bias),
            f_tag.out.rows.eq(itag.rows), f_tag.out.mode.eq(itag.mode), f_tag.out.init.eq(itag.init),
            f_tag.out.last.eq(itag.last),
        ]
        if pairs:
            m.d.comb += [f_tag.out.odd.mult.eq(params.rd_mult_odd), f_tag.out.odd.shift.eq(params.rd_shift_odd),
                         f_tag.out.odd.bias.eq(params.rd_bias_odd)]
        # counters: a fire multiplies ``rows_valid`` rows by ``lanes`` weights; a busy cycle
        # without a fire is a stall (waiting for weights, activations, parameters or credit)
        # (stall and mac_inc registered: one cycle late, the same totals; not the fire condition into
        # the kernel's counters)
        m.d.comb += self.busy.eq(seq.busy)
        m.d.sync += self.stall.eq(seq.busy & ~sched.fire)
        m.d.sync += self.mac_inc.eq(Mux(sched.fire, sched.rows_valid * L, 0))

        # -- datapath -----------------------------------------------------------------------
        lane_shape = unpack.lane_shape
        if self._tlmm:
            m.submodules.array = array = TlmmArray(
                rows=R, lanes=L, group_size=G.group_size, g=mm.tlmm_group, max_k=G.k_slice, weight_shape=lane_shape,
                tag_layout=acc_tag, levels_per_stage=self._levels_per_stage)
            m.d.comb += [array.build.eq(delay(m, sched.build, ISSUE_LATENCY, name="build")),
                         array.build_line.eq(delay(m, sched.build_line, ISSUE_LATENCY, name="build_line")),
                         array.build_entry.eq(delay(m, sched.build_entry, ISSUE_LATENCY, name="build_entry")),
                         array.line.eq(delay(m, sched.line, ISSUE_LATENCY, name="line"))]
        else:
            lane_format = array_lane_format(mm, lane_shape.width)
            m.submodules.array = array = MacArray(rows=R, lanes=L, group_size=G.group_size, weight_shape=lane_shape,
                                                  tag_layout=acc_tag, levels_per_stage=self._levels_per_stage,
                                                  lane_format=lane_format, pairs=pairs,
                                                  dense_pairs=bool(G.dense_pair_codes))
            if pairs:
                m.d.comb += [array.pair.eq(seq.pair), array.dense.eq(seq.dense)]
        assert ActivationBuffer.READ_LATENCY == ISSUE_LATENCY + 1     # x arrives one cycle after the fire
        m.d.comb += [array.valid.eq(fire), array.w.eq(wtile.rd_lanes), array.x.eq(actbuf.rd_data),
                     array.tag.eq(f_tag)]
        m.submodules.accum = accum = GroupAccumulator(
            rows=R, groups=self._parts, sum_shape=array.sum_shape, group_bits=wd.group_bits, scale_bits=sb,
            acc_bits=wd.acc_bits, tag_layout=out_tag, fires_per_group=self._fires_per_group,
            levels_per_stage=self._levels_per_stage, pairs=pairs)
        m.d.comb += [accum.valid.eq(array.o_valid), accum.sums.eq(array.sums),
                     accum.grp_first.eq(array.o_tag.grp_first), accum.grp_last.eq(array.o_tag.grp_last),
                     accum.col_first.eq(array.o_tag.col_first), accum.col_last.eq(array.o_tag.col_last),
                     accum.tag.eq(array.o_tag.out)]
        if pairs:
            # a dense fire's group scale on both its halves; a pair line holds column 0's NG scales,
            # then column 1's, and half 2j + h is column h's group j
            sc = array.o_tag.scales
            m.d.comb += [accum.pair.eq(seq.pair),
                         *(accum.scales[k].eq(Mux(seq.pair, sc[(k % 2) * NG + k // 2], sc[k // 2]))
                           for k in range(self._parts))]
        else:
            m.d.comb += accum.scales.eq(array.o_tag.scales)
        col_tag = data.StructLayout({"mode": 2, "last": 1})
        m.submodules.requant = rq = OutputStage(rows=R * (2 if pairs else 1), acc_bits=wd.acc_bits,
                                                mult_bits=wd.mult_bits, max_out_shift=wd.max_out_shift,
                                                max_requant_shift=wd.max_requant_shift, tag_layout=col_tag,
                                                halves=2 if pairs else 1)
        t = accum.o_tag
        m.d.comb += [rq.valid.eq(accum.o_valid), rq.acc.eq(accum.acc), rq.int8.eq(t.mode == 1),
                     rq.raw.eq(t.mode == OUT_RAW), rq.out_shift.eq(seq.out_shift), rq.mult.eq(t.mult),
                     rq.shift.eq(t.shift), rq.rows_valid.eq(t.rows), rq.init.eq(t.init), rq.bias.eq(t.bias),
                     rq.bias_shift.eq(seq.bias_shift), rq.partial.eq(partials.head),
                     rq.tag.mode.eq(t.mode), rq.tag.last.eq(t.last), partials.pop.eq(rq.pop)]
        if pairs:
            m.d.comb += [rq.mult_odd.eq(t.odd.mult), rq.shift_odd.eq(t.odd.shift), rq.bias_odd.eq(t.odd.bias)]
        assert ISSUE_LATENCY + array.latency + accum.latency + rq.latency == self._latency

        # partial sums: queued, claimed by a column's last fire, popped by the output stage. The
        # entries queued and not yet claimed are counted on their own (pushes up, claims down), so
        # the scheduler's flag is a compare of that count with constants, the claim only selecting
        # (a push shows one cycle late, never early).
        unclaimed = Signal(range(partials.depth + 1))
        owned_step_count(m, unclaimed, partials.pushed, sched.claim)
        avail = Signal()
        m.d.sync += avail.eq(Mux(sched.claim, unclaimed > 1, unclaimed != 0))
        m.d.comb += sched.partials.eq(avail)

        # -- output -------------------------------------------------------------------------
        col = column_layout(R, pairs)
        m.submodules.colfifo = fifo = StepFIFOBuffered(width=col.size, depth=self._fifo_depth)
        wcol = Signal(col)
        m.d.comb += [wcol.y.eq(rq.y), wcol.mode.eq(rq.o_tag.mode), wcol.last.eq(rq.o_tag.last),
                     fifo.w_data.eq(wcol), fifo.w_en.eq(rq.o_valid)]
        if pairs:
            m.d.comb += wcol.pair.eq(seq.pair)
        m.submodules.packer = packer = OutputPacker(rows=R, data_width=W, pairs=pairs)
        m.d.comb += [packer.i.payload.eq(fifo.r_data), packer.i.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(packer.i.ready), packer.start.eq(start)]
        # the output words through a register slice: the port's ready reaches the packer and the column
        # FIFO's level logic only through a flip-flop
        slice_stream(m, "out_skid", packer.o, self.out_data)

        # Output credit: columns issued and not yet taken out of the FIFO.
        inflight = Signal(range(self._fifo_depth + 1))
        col_fire = sched.fire & sched.col_last
        col_read = fifo.r_rdy & fifo.r_en
        owned_step_count(m, inflight, col_fire, col_read)
        # credit (inflight < depth) as a register: next cycle's, by cases of this cycle's fire and read
        # (a read alone frees a column; a fire with no read takes one; otherwise it holds), so the
        # packer's late read meets one select between flip-flops and a compare of the count
        credit = Signal(init=1)
        D = self._fifo_depth
        m.d.sync += credit.eq(Mux(col_fire & ~col_read, inflight < D - 1, credit | col_read))
        m.d.comb += sched.credit.eq(credit)
        return m
