"""Tile and segment sequencer: walks the tiles of a job (per KV head, ``rows`` query rows at a
time), issues each tile's Q record reads, cuts its token ranges (mask union) into per-page
segments, reads one block-table word per segment, and emits the K/V commands and the
consumers' segment records.

Token ranges per tile (``hbmforge.engines.attention.token_ranges``): causal, the rows' window
and sink ranges (at most two); bidirectional, ``[0, keys)`` for every tile (``keys`` =
``valid_len`` or ``ctx_len``), so padded keys are never read."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...encodings import AttentionMode
from ...engines.attention import CTX_BITS, KV_HEAD_PARALLEL, MAX_HEADS
from ...mathutil import exact_log2
from ..fifo import StepFIFOBuffered
from ..onehot import OneHotFSM
from ..streams import dma_command_stream
from .geometry import DatapathGeometry
from .qload import q_tile_layout
from .signature import attention_job_layout
from .value import out_tile_layout

__all__ = ["Sequencer", "kv_cmd_layout"]


def kv_cmd_layout(rows: int = 1) -> data.StructLayout:
    """The two reads of one segment on one port: scale words, then value records. ``rows`` > 1
    (a head-parallel engine): one pair of addresses per row (row r's port group); the byte
    counts are the same for every row."""
    if rows == 1:
        return data.StructLayout({"s_addr": 64, "s_bytes": 32, "v_addr": 64, "v_bytes": 32})
    return data.StructLayout({"s_addr": data.ArrayLayout(64, rows), "s_bytes": 32,
                              "v_addr": data.ArrayLayout(64, rows), "v_bytes": 32})


class Sequencer(wiring.Component):
    def __init__(self, geometry: DatapathGeometry):
        self._geom = geometry
        rows = geometry.rows
        seg = geometry.seg_layout()
        super().__init__({
            "job": In(stream.Signature(attention_job_layout())),
            "start": Out(1),
            "bits4": Out(1),
            "window": Out(CTX_BITS),
            "sink": Out(CTX_BITS),
            "bidir": Out(1),
            "o_addr": Out(64),
            "act_cmd": Out(dma_command_stream()),
            "scale_cmd": Out(dma_command_stream()),
            "bt_data": In(stream.Signature(geometry.data_width)),
            "qtile": Out(stream.Signature(q_tile_layout(rows))),
            "otile": Out(stream.Signature(out_tile_layout(rows))),
            "kcmd": Out(stream.Signature(kv_cmd_layout(geometry.addr_rows))),
            "vcmd": Out(stream.Signature(kv_cmd_layout(geometry.addr_rows))),
            "hp": Out(1),           # the job is head-parallel (kv_layout 1; job constant)
            "kseg": Out(stream.Signature(seg)),
            "vseg": Out(stream.Signature(seg)),
            "gen_done": Out(1),
            "tiles": Out(32),
            "idle": In(1),          # the rest of the engine finished the job
        })

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        rows, page_tokens, word_bytes = geom.rows, geom.page_tokens, geom.word_bytes
        groups, mants_per_word = geom.groups, geom.mants_per_word
        page_shift, word_shift = exact_log2(page_tokens), exact_log2(word_bytes)
        entry_shift = word_shift - 2          # log2 of the u32 block-table entries per word

        job = {name: Signal(shape, name=f"job_{name}") for name, shape in
               ((n, f.shape) for n, f in attention_job_layout())}
        bits4 = Signal()
        bidir = Signal()
        hp = Signal()               # head-parallel job: row r of tile t is head r * (kv_heads / rows) + t
        ar = geom.addr_rows
        m.d.comb += self.hp.eq(hp)
        # the tile walk of a head-parallel job is the shared walk of kv_heads / rows "KV heads" with
        # rows "query heads" each; the row index steps by kv_heads / rows instead of 1
        kvh_e = Signal(11)
        qpk_e = Signal(11)
        if geom.head_parallel:
            # registered (job constants: they settle in SETUP's second cycle, their products and
            # steps by the first ROWS cycle): the mux stays out of the DSPs' inputs
            m.d.sync += [kvh_e.eq(Mux(hp, job["kv_heads"] >> exact_log2(rows), job["kv_heads"])),
                         qpk_e.eq(Mux(hp, rows, job["q_per_kv"]))]
        else:
            m.d.comb += [kvh_e.eq(job["kv_heads"]), qpk_e.eq(job["q_per_kv"])]
        ri_step = Mux(hp, kvh_e, 1)
        # the head counters' last values, registered (job constants: an equality, not an add and compare)
        qpk_m1, kvh_m1 = Signal(11), Signal.like(kvh_e)
        m.d.sync += [qpk_m1.eq(qpk_e - 1), kvh_m1.eq(kvh_e - 1)]
        hb_step = Mux(hp, 1, job["q_per_kv"])
        m.d.comb += [self.bits4.eq(bits4), self.window.eq(job["window"]), self.sink.eq(job["sink"]),
                     self.bidir.eq(bidir), self.o_addr.eq(job["o_addr"])]

        def by_bits(f):
            return geom.select_format(bits4, int4=f(4), int8=f(8))

        # -- setup constants -------------------------------------------------------------
        q_heads = Signal(22)
        total = Signal(33)
        base = Signal(CTX_BITS)
        keys = Signal(CTX_BITS)             # bidirectional: keys [0, keys) (valid_len, 0 = ctx_len)
        # widths from the geometry (one DSP48E2 per product): kv_heads <= MAX_HEADS (checked)
        head_area = Signal(range(max(geom.head_area(b) for b in geom.kv_bits) + 1))
        vrec = Signal(16)
        stride = Signal(len(head_area) + MAX_HEADS.bit_length())
        m.d.sync += [q_heads.eq(job["kv_heads"] * job["q_per_kv"]), total.eq(job["n_q"] * qpk_e),
                     base.eq(job["ctx_len"] - job["n_q"]), head_area.eq(by_bits(geom.head_area)),
                     keys.eq(Mux(job["valid_len"] == 0, job["ctx_len"], job["valid_len"])),
                     vrec.eq(by_bits(geom.value_bytes)),
                     stride.eq(kvh_e[:MAX_HEADS.bit_length()] * head_area)]

        # -- tile walk ---------------------------------------------------------------------
        h = Signal(11)
        i = Signal(33)
        hi = Signal(11)
        pos_idx = Signal(CTX_BITS)
        ri = Signal(32)
        hbase = Signal(32)
        h_off = Signal(64)
        rr = Signal(range(rows + 1))
        nv = Signal(range(rows + 1))
        rpos = [Signal(CTX_BITS, name=f"rpos{r}") for r in range(rows)]
        rri = [Signal(32, name=f"rri{r}") for r in range(rows)]
        p_min = Signal(CTX_BITS)
        p_max = Signal(CTX_BITS)
        # the tile's window bounds, registered every cycle: p_min and p_max are set in ROWS and
        # then hold through QCMD and TILE (a cycle each at least), so RANGES sees lo one and the
        # compare with the sink two cycles after they settle, not a subtraction, clamp and compare
        # in series on its muxes
        lo_raw = Cat(p_min, Const(0, 1)).as_signed() - job["window"] + 1
        lo, top, lo_in_sink = Signal(CTX_BITS), Signal(CTX_BITS + 1), Signal()
        m.d.sync += [lo.eq(Mux(lo_raw < 0, 0, lo_raw)), top.eq(p_max + 1), lo_in_sink.eq(lo <= job["sink"])]
        # the job's window and sink tests as flags (the job's fields hold from IDLE on; RANGES comes
        # after SETUP): the range choice is a mux of flip-flops, not of two wide compares
        win_zero, sink_zero = Signal(), Signal()
        m.d.sync += [win_zero.eq(job["window"] == 0), sink_zero.eq(job["sink"] == 0)]
        tiles = Signal(32)
        m.d.comb += self.tiles.eq(tiles)

        qt = self.qtile.payload
        ot = self.otile.payload
        m.d.comb += [qt.nv.eq(nv), ot.nv.eq(nv)]
        for r in range(rows):
            m.d.comb += [qt.pos[r].eq(rpos[r]), ot.ri[r].eq(rri[r])]
        qrec = geom.q_record_bytes
        rsel = rr[:exact_log2(rows)] if rows > 1 else 0
        # each row's Q record address, registered with its row index (no product on the command path):
        # ri * qrec and hbase * qrec kept by the same additions as ri and hbase, their steps times
        # qrec registered during SETUP (they follow the job's fields one and two cycles later)
        rqa = [Signal(64, name=f"rqa{r}") for r in range(rows)]
        riq, hbq = Signal(64), Signal(64)
        pos_step_q, ri_step_q, hb_step_q = Signal(64), Signal(64), Signal(64)
        # the steps registered before their products (a subtract or a mux into a DSP's unregistered
        # input was one path): ready in SETUP's third cycle, the products by the first ROWS cycle
        pos_step, ri_step_r, hb_step_r = Signal(23), Signal.like(kvh_e), Signal(11)
        m.d.sync += [pos_step.eq(q_heads - job["q_per_kv"] + 1), ri_step_r.eq(ri_step), hb_step_r.eq(hb_step),
                     pos_step_q.eq(pos_step * qrec), ri_step_q.eq(ri_step_r * qrec), hb_step_q.eq(hb_step_r * qrec)]
        m.d.comb += [self.act_cmd.payload.addr.eq(Cat(*rqa).word_select(rsel, 64)),
                     self.act_cmd.payload.bytes.eq(qrec)]

        # ranges
        rlo = [Signal(CTX_BITS + 1, name=f"rlo{k}") for k in range(2)]
        # the current range's end a register of its own (not a mux of both ends by ridx): the
        # segment's end compare starts from flip-flops
        cur_hi = Signal(CTX_BITS + 1)
        hi1 = Signal(CTX_BITS + 1)           # the second range's end
        nr = Signal(2)
        ridx = Signal()
        j = Signal(CTX_BITS + 1)
        first_seg = Signal()

        # segment being emitted. page_end (the end of j's page) is a register: set in SEG0 as a
        # range starts, then stepped by a page (or to the second range's) as segments leave, so
        # the segment's end, its length and the last-of-range flag are one compare and two
        # subtractions side by side
        lp = j >> page_shift
        page_end = Signal.like(j)
        rlo1_end = Signal.like(j)            # the page end of the second range's start
        m.d.sync += rlo1_end.eq(((rlo[1] >> page_shift) + 1) << page_shift)
        in_page = page_end < cur_hi
        seg_end = Mux(in_page, page_end, cur_hi)
        seg_last_of_range = ~in_page
        seg_tile_last = seg_last_of_range & ((ridx == 1) | (nr == 1))

        seg1 = data.StructLayout({"lpo": max(1, entry_shift), "a": max(1, page_shift), "n": range(page_tokens + 1),
                                  "j0": CTX_BITS, "tile_first": 1, "tile_last": 1, "h_off": 64})
        m.submodules.segq = segq = StepFIFOBuffered(width=seg1.size, depth=8)
        s1 = Signal(seg1)
        m.d.comb += [s1.lpo.eq(lp[:max(1, entry_shift)] if entry_shift > 0 else 0), s1.a.eq(j[:max(1, page_shift)]),
                     s1.n.eq(Mux(in_page, page_end - j, cur_hi - j)), s1.j0.eq(j), s1.tile_first.eq(first_seg),
                     s1.tile_last.eq(seg_tile_last), s1.h_off.eq(h_off), segq.w_data.eq(s1)]
        m.d.comb += [self.scale_cmd.payload.addr.eq(job["bt_addr"] + ((lp >> entry_shift) << word_shift)),
                     self.scale_cmd.payload.bytes.eq(word_bytes)]

        # -- head-parallel pool table: 2 x rows u64 at k_pool (K pools, then V pools) ----------
        tbl_words = geom.pool_table_bytes // word_bytes if geom.head_parallel else 1
        tbl = Signal(tbl_words * geom.data_width)
        tw = Signal(range(tbl_words + 1))
        kbase = [Signal(64, name=f"kbase{r}") for r in range(ar)]
        vbase = [Signal(64, name=f"vbase{r}") for r in range(ar)]
        for r in range(ar):
            if geom.head_parallel:
                m.d.comb += [kbase[r].eq(Mux(hp, tbl[64 * r:64 * r + 64], job["k_pool"])),
                             vbase[r].eq(Mux(hp, tbl[64 * (rows + r):64 * (rows + r) + 64], job["v_pool"]))]
            else:
                m.d.comb += [kbase[r].eq(job["k_pool"]), vbase[r].eq(job["v_pool"])]

        # avail = i < total, a flip-flop: compared from registers for i as it is (in every state),
        # as it will be after a ROWS step (i + 1) or after NEXT's restart (0); ROWS and NEXT pick
        avail = Signal()
        lt_next, any_rows = Signal(), Signal()
        m.d.comb += any_rows.eq(total != 0)
        m.d.sync += avail.eq(i < total)

        # hi == qpk_m1 as a flip-flop (the last query head of a position): set for the value hi
        # will have, else recomputed every cycle (qpk_m1 settles in SETUP): the row step's
        # increments are picked by a register, not by the compare, in front of their carry chains
        hi_last = Signal()
        qpk_m2 = Signal.like(qpk_m1)                 # hi + 1 == qpk_m1 as hi == qpk_m1 - 1
        m.d.sync += [hi_last.eq(hi == qpk_m1), qpk_m2.eq(qpk_m1 - 1)]
        # the next row's availability, (i + 1) < total, as i < total - 1 of registers (total != 0)
        total_m1, total_nz = Signal.like(total), Signal()
        m.d.sync += [total_m1.eq(total - 1), total_nz.eq(total != 0)]
        m.d.comb += lt_next.eq(total_nz & (i < total_m1))

        count = Signal(2)
        # job.ready from a flip-flop kept with the IDLE state (not a decode of the binary state):
        # the command processor's dispatch decision reads it
        idle_ff = Signal(init=1)
        m.d.comb += self.job.ready.eq(idle_ff)
        # one flip-flop per state (OneHotFSM): the binary state's decode was seven LUT levels into
        # the next state
        seq = OneHotFSM(m, ["IDLE", "SETUP", *(["TCMD", "TDATA"] if geom.head_parallel else []), "ROWS", "QCMD",
                            "TILE", "RANGES", "SEG0", "SEGS", "NEXT", "WAIT"], name="seq")
        with seq.State("IDLE"):
            with m.If(self.job.valid):
                m.d.sync += idle_ff.eq(0)
                m.d.sync += [v.eq(getattr(self.job.payload, n)) for n, v in job.items()]
                if geom.head_parallel:
                    m.d.sync += hp.eq(self.job.payload.kv_layout == KV_HEAD_PARALLEL)
                m.d.sync += [bits4.eq(self.job.payload.kv_bits == 4),
                             bidir.eq(self.job.payload.mode == AttentionMode.BIDIRECTIONAL),
                             count.eq(0), tiles.eq(0),
                             h.eq(0), i.eq(0), hi.eq(0), pos_idx.eq(0), ri.eq(0), hbase.eq(0), h_off.eq(0),
                             riq.eq(0), hbq.eq(0)]
                seq.next = "SETUP"
        with seq.State("SETUP"):
            m.d.sync += count.eq(count + 1)
            with m.If(count == 2):
                m.d.comb += self.start.eq(1)
                m.d.sync += [rr.eq(0), nv.eq(0), tw.eq(0)]
                if geom.head_parallel:
                    with m.If(hp):
                        seq.next = "TCMD"
                    with m.Else():
                        seq.next = "ROWS"
                else:
                    seq.next = "ROWS"
        if geom.head_parallel:
            with seq.State("TCMD"):
                # the pool table on the block-table channel, before any block-table word
                m.d.comb += [self.scale_cmd.valid.eq(1), self.scale_cmd.payload.addr.eq(job["k_pool"]),
                             self.scale_cmd.payload.bytes.eq(geom.pool_table_bytes)]
                with m.If(self.scale_cmd.ready):
                    seq.next = "TDATA"
            with seq.State("TDATA"):
                m.d.comb += self.bt_data.ready.eq(1)
                with m.If(self.bt_data.valid):
                    for k in range(tbl_words):
                        with m.If(tw == k):
                            m.d.sync += tbl.word_select(k, geom.data_width).eq(self.bt_data.payload)
                    m.d.sync += tw.eq(tw + 1)
                    with m.If(tw == tbl_words - 1):
                        seq.next = "ROWS"
        with seq.State("ROWS"):
            valid = avail
            with m.If(valid):
                m.d.sync += avail.eq(lt_next)
            for r in range(rows):
                with m.If(rr == r):
                    m.d.sync += [rpos[r].eq(base + pos_idx), rri[r].eq(ri), rqa[r].eq(job["q_addr"] + riq)]
            with m.If(valid):
                m.d.sync += [nv.eq(rr + 1), p_max.eq(base + pos_idx), i.eq(i + 1)]
                with m.If(rr == 0):
                    m.d.sync += p_min.eq(base + pos_idx)
                with m.If(hi_last):
                    m.d.sync += [hi.eq(0), pos_idx.eq(pos_idx + 1), hi_last.eq(qpk_m1 == 0)]
                with m.Else():
                    m.d.sync += [hi.eq(hi + 1), hi_last.eq(hi == qpk_m2)]
                m.d.sync += [ri.eq(ri + Mux(hi_last, pos_step, ri_step_r)),
                             riq.eq(riq + Mux(hi_last, pos_step_q, ri_step_q))]
            m.d.sync += rr.eq(rr + 1)
            with m.If(rr == rows - 1):
                m.d.sync += rr.eq(0)
                seq.next = "QCMD"
        with seq.State("QCMD"):
            m.d.comb += self.act_cmd.valid.eq(1)
            with m.If(self.act_cmd.ready):
                m.d.sync += rr.eq(rr + 1)
                with m.If(rr == nv - 1):
                    seq.next = "TILE"
        with seq.State("TILE"):
            # both records go out together: offered only when both FIFOs have room
            both = self.qtile.ready & self.otile.ready
            m.d.comb += [self.qtile.valid.eq(both), self.otile.valid.eq(both)]
            with m.If(both):
                m.d.sync += tiles.eq(tiles + 1)
                seq.next = "RANGES"
        with seq.State("RANGES"):
            m.d.sync += [first_seg.eq(1), ridx.eq(0)]
            with m.If(bidir):
                m.d.sync += [rlo[0].eq(0), cur_hi.eq(keys), nr.eq(1), j.eq(0)]
            with m.Elif(win_zero | lo_in_sink):
                m.d.sync += [rlo[0].eq(0), cur_hi.eq(top), nr.eq(1), j.eq(0)]
            with m.Elif(sink_zero):
                m.d.sync += [rlo[0].eq(lo), cur_hi.eq(top), nr.eq(1), j.eq(lo)]
            with m.Else():
                m.d.sync += [rlo[0].eq(0), cur_hi.eq(job["sink"]), rlo[1].eq(lo), hi1.eq(top), nr.eq(2), j.eq(0)]
            seq.next = "SEG0"
        with seq.State("SEG0"):
            m.d.sync += page_end.eq((lp + 1) << page_shift)
            seq.next = "SEGS"
        with seq.State("SEGS"):
            m.d.comb += self.scale_cmd.valid.eq(segq.w_rdy)
            with m.If(self.scale_cmd.valid & self.scale_cmd.ready):
                m.d.comb += segq.w_en.eq(1)
                m.d.sync += [first_seg.eq(0), j.eq(seg_end), page_end.eq(page_end + page_tokens)]
                with m.If(seg_last_of_range):
                    m.d.sync += [ridx.eq(1), j.eq(rlo[1]), page_end.eq(rlo1_end), cur_hi.eq(hi1)]
                with m.If(seg_tile_last):
                    seq.next = "NEXT"
        with seq.State("NEXT"):
            m.d.sync += [rr.eq(0), nv.eq(0)]
            with m.If(~avail):                   # i == total (i never passes total)
                m.d.sync += avail.eq(any_rows)
                m.d.sync += [h.eq(h + 1), i.eq(0), hi.eq(0), hi_last.eq(qpk_m1 == 0), pos_idx.eq(0),
                             hbase.eq(hbase + hb_step),
                             ri.eq(hbase + hb_step), h_off.eq(h_off + head_area),
                             hbq.eq(hbq + hb_step_q), riq.eq(hbq + hb_step_q)]
                with m.If(h == kvh_m1):
                    seq.next = "WAIT"
                with m.Else():
                    seq.next = "ROWS"
            with m.Else():
                seq.next = "ROWS"
        with seq.State("WAIT"):
            m.d.comb += self.gen_done.eq(1)
            with m.If(self.idle):
                m.d.sync += idle_ff.eq(1)
                seq.next = "IDLE"

        # -- join with the block table; page addresses; K/V commands and segment records -------
        r1 = Signal(seg1)
        m.d.comb += r1.eq(segq.r_data)
        page = Signal(32)
        js = Signal(seg1)
        prod = Signal(96)
        p_lo = Signal(16 + len(stride))
        p_hi = Signal(16 + len(stride))
        hb = {name: [Signal(64, name=f"hb_{name}{r}") for r in range(ar)] for name in ("k", "v")}
        a_vrec = Signal(32)
        cons = Signal(geom.seg_layout())
        kc = Signal(kv_cmd_layout(ar))
        vc = Signal(kv_cmd_layout(ar))
        m.d.comb += [self.kseg.payload.eq(cons), self.vseg.payload.eq(cons),
                     self.kcmd.payload.eq(kc), self.vcmd.payload.eq(vc)]
        with m.FSM():
            with m.State("WAIT"):
                with m.If(segq.r_rdy & self.bt_data.valid):
                    m.d.comb += [segq.r_en.eq(1), self.bt_data.ready.eq(1)]
                    word = self.bt_data.payload
                    m.d.sync += [js.eq(r1), page.eq(word.word_select(r1.lpo, 32) if word_bytes > 4 else word[:32])]
                    m.next = "MUL"
            with m.State("MUL"):
                # page x stride as two DSP-sized halves, summed next cycle
                m.d.sync += [p_lo.eq(page[:16] * stride), p_hi.eq(page[16:] * stride)]
                m.next = "SUM"
            with m.State("SUM"):
                m.d.sync += [prod.eq((p_hi << 16) + p_lo), a_vrec.eq(js.a * vrec)]
                m.next = "BASE"
            with m.State("BASE"):
                a_ng = js.a * groups
                mant_shift = exact_log2(mants_per_word)
                off = a_ng & (mants_per_word - 1)
                sw = (off + js.n * groups + mants_per_word - 1) >> mant_shift
                m.d.sync += [cons.n.eq(js.n), cons.sw.eq(sw), cons.off.eq(off), cons.j0.eq(js.j0),
                             cons.tile_first.eq(js.tile_first), cons.tile_last.eq(js.tile_last)]
                for name, pools in (("k", kbase), ("v", vbase)):
                    for r in range(ar):
                        m.d.sync += hb[name][r].eq((pools[r] + prod[:64] + js.h_off)[:64])
                m.next = "ADDR"
            with m.State("ADDR"):
                first = (js.a * groups) >> exact_log2(mants_per_word)
                for rec, name in ((kc, "k"), (vc, "v")):
                    m.d.sync += [rec.s_bytes.eq(cons.sw << word_shift), rec.v_bytes.eq(js.n * vrec)]
                    for r in range(ar):
                        s_addr = rec.s_addr[r] if ar > 1 else rec.s_addr
                        v_addr = rec.v_addr[r] if ar > 1 else rec.v_addr
                        m.d.sync += [s_addr.eq(hb[name][r] + (first << word_shift)),
                                     v_addr.eq(hb[name][r] + (a_vrec + geom.scale_area))]
                m.next = "PUSH"
            with m.State("PUSH"):
                # the four go to FIFOs together: offered only when all have room
                allr = self.kcmd.ready & self.vcmd.ready & self.kseg.ready & self.vseg.ready
                m.d.comb += [self.kcmd.valid.eq(allr), self.vcmd.valid.eq(allr), self.kseg.valid.eq(allr),
                             self.vseg.valid.eq(allr)]
                with m.If(allr):
                    m.next = "WAIT"
        return m
