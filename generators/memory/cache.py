"""The tile cache: a set-associative cache of large lines in front of host/DDR memory.

Dataflow (docs/engines/memory.md; golden model :class:`hbmforge.numerics.memory.TileCacheModel`)::

    up_cmd (reads) / up_wcmd (writes) / PREFETCH -> segmenters: one line segment at a time
        -> lookup: tags of the set (on chip) -> hit, miss (victim by policy) or bypass
           read hit   -> store read (st) ------------------------------.
           read miss  -> [dirty victim: store read -> backing write]    |
                         MSHR -> fill: backing read of the line         |
                               -> every word to the store writer        |
                               -> the segment's words ------------------+-> rd_order -> up_data
           bypass     -> backing read ----------------------------------'
           write      -> store and/or backing writer jobs; the engine's words routed by uw_route
    FLUSH / INVALIDATE / CONFIGURE: a walk over every set (nothing else in flight)

Lookups are made in request order, so hits, misses and victims are those of the golden
model; fills overlap: up to ``mshrs`` lines fill while later hits read the store. The words
an engine gets come back in its request order (``rd_order``). Each memory writer is shared by
two sources through a :class:`~.queues.ChunkedWriter`, which issues a command only for words
already staged, so neither source can block the other (an engine copying from the cached port
to itself cannot deadlock the cache).

Hazards, checked before a lookup acts: a hit waits for a fill or store write of its line; a
victim waits until no store read or write of its slot is pending; a fill waits until no
backing write of its line is pending; a write around the cache waits for a fill of its line.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import CacheAction
from hbmforge.engines.memory import CACHE_COUNTERS, WINDOW_BITS, CacheGeometry
from hbmforge.numerics.memory import FREQ_MAX, LFSR_SEED, LFSR_TAPS

from ..skid import slice_stream
from ..streams import JobDone, dma_command_stream, word_stream
from .queues import ChunkedWriter, RegFIFO, RegQueue

__all__ = ["CacheCtl", "TileCache", "EVENT_KINDS"]

#: ``event_kind`` values (gateware tests compare them with the golden model's events)
EVENT_KINDS = {"hit": 1, "miss": 2, "bypass": 3, "prefetch": 4, "skip": 5}
_STORE, _BACK, _BOTH = 0, 1, 2
_FILL, _BYPASS = 0, 1


class CacheCtl(data.Struct):
    action: CacheAction
    addr: 64
    bytes: 64
    store: 64


class TileCache(wiring.Component):
    """The cache for one :class:`~hbmforge.engines.memory.CacheGeometry` on ``data_width``-bit ports."""

    def __init__(self, geometry: CacheGeometry, *, data_width: int):
        if not isinstance(geometry, CacheGeometry):
            raise TypeError(f"geometry must be a CacheGeometry, got {geometry!r}")
        self._g = geometry
        W = data_width
        members = {
            "up_cmd": In(dma_command_stream()), "up_data": Out(word_stream(W)),
            "up_wcmd": In(dma_command_stream()), "up_wdata": In(word_stream(W)),
            "up_wdone": Out(stream.Signature(JobDone)),
            "ctl": In(stream.Signature(CacheCtl)), "ctl_done": Out(1),
            "bk_cmd": Out(dma_command_stream()), "bk_data": In(word_stream(W)),
            "bk_wcmd": Out(dma_command_stream()), "bk_wdata": Out(word_stream(W)),
            "bk_wdone": In(stream.Signature(JobDone)),
            "st_cmd": Out(dma_command_stream()), "st_data": In(word_stream(W)),
            "st_wcmd": Out(dma_command_stream()), "st_wdata": Out(word_stream(W)),
            "st_wdone": In(stream.Signature(JobDone)),
            "idle": Out(1),
            "tag_addr": In(range(geometry.lines)), "tag_word": Out(64),
            "event_valid": Out(1), "event_kind": Out(3), "event_write": Out(1),
            "event_set": Out(range(geometry.sets)), "event_way": Out(range(geometry.ways)),
        }
        for c in CACHE_COUNTERS:
            members[c] = Out(64)
        super().__init__(members)
        self._W = W

    @property
    def geometry(self) -> CacheGeometry:
        return self._g

    def elaborate(self, platform):
        m = Module()
        g = self._g
        W = self._W
        WB = W // 8
        wshift = WB.bit_length() - 1
        LB = g.line_bytes
        LW = LB // WB
        lbits, sbits, ways, sets = g.line_bits, g.set_bits, g.ways, g.sets
        TB = g.tag_bits
        E = TB + 14
        abits = max(1, g.way_bits)

        # -- configuration -----------------------------------------------------------------
        wbase = Signal(64)
        wbytes = Signal(WINDOW_BITS + 1)
        store = Signal(64)

        # -- tags ----------------------------------------------------------------------------
        m.submodules.tags = tags = Memory(shape=ways * E, depth=sets, init=[])
        trd = tags.read_port(domain="sync")
        twr = tags.write_port()
        m.d.comb += trd.en.eq(1)

        def fields(row, w):
            e = row[w * E:(w + 1) * E]
            return {"tag": e[:TB], "valid": e[TB], "dirty": e[TB + 1], "age": e[TB + 2:TB + 6],
                    "freq": e[TB + 6:TB + 14]}

        def pack(tag, valid, dirty, age, freq):
            return Cat(tag[:TB], valid, dirty, age[:4], freq[:8])

        lfsr = Signal(16, init=LFSR_SEED)
        lfsr_next = Mux(lfsr[0], (lfsr >> 1) ^ LFSR_TAPS, lfsr >> 1)

        # -- counters ------------------------------------------------------------------------
        cnt = {c: getattr(self, c) for c in CACHE_COUNTERS}

        # -- queues and tables ---------------------------------------------------------------
        M = g.mshrs
        mshr_valid = [Signal(name=f"mshr_v{i}") for i in range(M)]
        mshr_slot = [Signal(range(g.lines), name=f"mshr_slot{i}") for i in range(M)]
        mshr_line = [Signal(64, name=f"mshr_line{i}") for i in range(M)]
        mshr_free = Signal(range(M))
        mshr_any_free = Signal()
        for i in reversed(range(M)):
            with m.If(~mshr_valid[i]):
                m.d.comb += [mshr_free.eq(i), mshr_any_free.eq(1)]

        FillLayout = data.StructLayout({"kind": 1, "addr": 64, "words": 24, "mshr": range(M), "slot_addr": 64,
                                        "off": 24, "take": 24})
        fillq = RegQueue(m, "fillq", FillLayout, M + 2)
        BkLayout = data.StructLayout({"kind": 1, "words": 24, "off": 24, "end": 25})
        m.submodules.bk_order = bk_order = SyncFIFOBuffered(width=BkLayout.size, depth=M + 4)
        OrdLayout = data.StructLayout({"src": 1, "words": 24})
        m.submodules.rd_order = rd_order = RegFIFO(OrdLayout, 8)
        StRdLayout = data.StructLayout({"dest": 1, "words": 24, "slot": range(g.lines)})
        st_rd_q = RegQueue(m, "strd", StRdLayout, 8)
        m.submodules.st_cmdq = st_cmdq = RegFIFO(data.StructLayout({"addr": 64, "words": 24}), 8)
        wb_pend = RegQueue(m, "wbp", data.StructLayout({"line": 64}), 4)
        uwb_pend = RegQueue(m, "uwbp", data.StructLayout({"line": 64}), 4)
        uws_pend = RegQueue(m, "uwsp", data.StructLayout({"slot": range(g.lines)}), 4)
        RouteLayout = data.StructLayout({"dest": 2, "words": 24})
        m.submodules.uw_route = uw_route = SyncFIFOBuffered(width=RouteLayout.size, depth=4)

        m.submodules.st_writer = st_writer = ChunkedWriter(data_width=W, sources=2, job_depth=M + 4)
        m.submodules.bk_writer = bk_writer = ChunkedWriter(data_width=W, sources=2, job_depth=8)
        for w_, (cmd, dat, done) in ((st_writer, (self.st_wcmd, self.st_wdata, self.st_wdone)),
                                     (bk_writer, (self.bk_wcmd, self.bk_wdata, self.bk_wdone))):
            wiring.connect(m, w_.cmd, wiring.flipped(cmd))
            wiring.connect(m, w_.data, wiring.flipped(dat))
            wiring.connect(m, wiring.flipped(done), w_.done)

        # upstream write commands: outstanding jobs per command, done in order
        CT = 4
        ct_count = [Signal(8, name=f"ct_count{i}") for i in range(CT)]
        ct_seg = [Signal(name=f"ct_seg{i}") for i in range(CT)]
        ct_head = Signal(range(CT))
        ct_tail = Signal(range(CT))
        ct_level = Signal(range(CT + 1))
        job_inc = [Signal(2, name=f"ct_inc{i}") for i in range(CT)]
        job_dec = [Signal(2, name=f"ct_dec{i}") for i in range(CT)]
        for i in range(CT):
            m.d.sync += ct_count[i].eq(ct_count[i] + job_inc[i][0] + job_inc[i][1] - job_dec[i][0] - job_dec[i][1])
            m.d.comb += [job_dec[i][0].eq(st_writer.fin1 & (st_writer.fin_tag1 == i)),
                         job_dec[i][1].eq(bk_writer.fin1 & (bk_writer.fin_tag1 == i))]
        head_done = Signal()
        with m.Switch(ct_head):
            for i in range(CT):
                with m.Case(i):
                    m.d.comb += head_done.eq((ct_level != 0) & ct_seg[i] & (ct_count[i] == 0))
        m.d.comb += self.up_wdone.valid.eq(head_done)
        ct_pop = Signal()
        ct_push = Signal()
        with m.If(self.up_wdone.valid & self.up_wdone.ready):
            m.d.comb += ct_pop.eq(1)
            m.d.sync += ct_head.eq(Mux(ct_head == CT - 1, 0, ct_head + 1))
        m.d.sync += ct_level.eq(ct_level + ct_push - ct_pop)

        # -- segmenters ----------------------------------------------------------------------
        # the engines' commands through register slices (their valid came from the other
        # engine's logic straight into the segmenters: 3.8 ns across parts)
        up_cmd_i = self.up_cmd.signature.flip().create()
        up_wcmd_i = self.up_wcmd.signature.flip().create()
        slice_stream(m, "up_cmd_slice", self.up_cmd, up_cmd_i)
        slice_stream(m, "up_wcmd_slice", self.up_wcmd, up_wcmd_i)
        r_active, r_addr, r_left, r_pref = Signal(), Signal(64), Signal(33), Signal()
        w_active, w_addr, w_left, w_id = Signal(), Signal(64), Signal(33), Signal(range(CT))
        ctl_busy = Signal()
        m.d.comb += up_cmd_i.ready.eq(~r_active & ~ctl_busy)
        with m.If(up_cmd_i.valid & up_cmd_i.ready):
            m.d.sync += [r_active.eq(up_cmd_i.payload.bytes != 0), r_addr.eq(up_cmd_i.payload.addr),
                         r_left.eq(up_cmd_i.payload.bytes), r_pref.eq(0)]
        # a prefetch's lookups finish before a write is taken (the golden model's order)
        m.d.comb += up_wcmd_i.ready.eq(~w_active & ~ctl_busy & (ct_level != CT) & ~(r_active & r_pref))
        with m.If(up_wcmd_i.valid & up_wcmd_i.ready):
            m.d.comb += ct_push.eq(1)
            m.d.sync += [w_active.eq(up_wcmd_i.payload.bytes != 0), w_addr.eq(up_wcmd_i.payload.addr),
                         w_left.eq(up_wcmd_i.payload.bytes), w_id.eq(ct_tail),
                         ct_tail.eq(Mux(ct_tail == CT - 1, 0, ct_tail + 1))]
            with m.Switch(ct_tail):
                for i in range(CT):
                    with m.Case(i):
                        m.d.sync += ct_seg[i].eq(up_wcmd_i.payload.bytes == 0)

        # -- the lookup --------------------------------------------------------------------------
        seg_write = Signal()
        seg_pref = Signal()
        seg_addr = Signal(64)
        seg_left = Signal(33)               # the segmenter's bytes left when the segment was taken
        seg_left_small = Signal()           # seg_left < 2 LB
        seg_to_end = Signal(lbits + 1)      # bytes from seg_addr to its line's end, 1 .. LB
        seg_bytes = Signal(33)
        seg_words = Signal(24)
        seg_off = Signal(24)                # words into the line
        seg_set = Signal(range(sets))
        seg_tag = Signal(TB)
        seg_line = Signal(64)
        rr = Signal()
        rel = Signal(64)
        seg_rel = Signal(64)                # the segment's offset into the window (mod 2**64)

        # resources
        rd_order_w = rd_order.w_data
        st_rd_push = st_rd_q.push_data
        fill_push = fillq.push_data

        def push_rd_order(src, words):
            m.d.comb += [rd_order.w_en.eq(1), rd_order_w.src.eq(src), rd_order_w.words.eq(words)]

        def push_st_read(addr, words, dest, slot):
            m.d.comb += [st_rd_q.push.eq(1), st_rd_push.dest.eq(dest), st_rd_push.words.eq(words),
                         st_rd_push.slot.eq(slot), st_cmdq.w_en.eq(1), st_cmdq.w_data.addr.eq(addr[:64]), st_cmdq.w_data.words.eq(words)]

        def push_fill(kind, addr, words, mshr, slot_addr, off, take):
            m.d.comb += [fillq.push.eq(1), fill_push.kind.eq(kind), fill_push.addr.eq(addr),
                         fill_push.words.eq(words), fill_push.mshr.eq(mshr), fill_push.slot_addr.eq(slot_addr),
                         fill_push.off.eq(off), fill_push.take.eq(take)]

        def add(name, value):
            m.d.sync += cnt[name].eq(cnt[name] + value)

        def event(kind, write, s=0, w=0):
            m.d.comb += [self.event_valid.eq(1), self.event_kind.eq(EVENT_KINDS[kind]), self.event_write.eq(write),
                         self.event_set.eq(s), self.event_way.eq(w)]

        uw_route_w = data.View(RouteLayout, uw_route.w_data)

        def route(dest, words):
            m.d.comb += [uw_route.w_en.eq(1), uw_route_w.dest.eq(dest), uw_route_w.words.eq(words)]

        def job(writer, src, addr, words, tag):
            jb = getattr(writer, f"job{src}")
            m.d.comb += [jb.valid.eq(1), jb.payload.addr.eq(addr), jb.payload.words.eq(words), jb.payload.tag.eq(tag)]

        def ct_inc(i, k):
            with m.Switch(i):
                for j in range(CT):
                    with m.Case(j):
                        m.d.comb += job_inc[j][k].eq(1)

        def advance(write):
            """The segment taken in IDLE (seg_bytes: up to its line's end, sized in TAGRD; the
            segmenter's address and count change only here, so they are still those it came
            from) is done."""
            if write:
                m.d.sync += [w_addr.eq(w_addr + seg_bytes), w_left.eq(w_left - seg_bytes)]
                with m.If(w_left == seg_bytes):
                    m.d.sync += w_active.eq(0)
                    with m.Switch(w_id):
                        for i in range(CT):
                            with m.Case(i):
                                m.d.sync += ct_seg[i].eq(1)
            else:
                m.d.sync += [r_addr.eq(r_addr + seg_bytes), r_left.eq(r_left - seg_bytes)]
                with m.If(r_left == seg_bytes):
                    m.d.sync += r_active.eq(0)

        row = Signal(ways * E)
        m.d.comb += row.eq(trd.data)
        slot_addr = lambda s, w: store + ((s * ways + w) << lbits)                     # noqa: E731
        cur_slot = lambda w: seg_set * ways + w                                          # noqa: E731

        walk_set = Signal(range(sets + 1))
        walk_last = Signal()                # walk_set == sets - 1 while CLEAR runs (a compare into the state's next value)
        walk_way = Signal(range(ways + 1))
        walk_row = Signal(ways * E)
        ctl_q = Signal(CacheCtl)

        # -- the lookup's decision inputs, registered every cycle in two steps (used in DECIDE, two
        # cycles after PRE saw the set's row): hit and victim ways, the rows to write back, the slot addresses,
        # and whether each action's queues have room and no hazard holds. Only the lookup pushes
        # to those queues and tables, so nothing registered turns stale in its favour: a wait
        # goes through PRE again.
        f_ = [fields(row, w) for w in range(ways)]
        hitv = [Signal(name=f"hitv{w}") for w in range(ways)]
        for w in range(ways):
            m.d.comb += hitv[w].eq(f_[w]["valid"] & (f_[w]["tag"] == seg_tag))
        hit = Cat(*hitv).any()
        hway = Signal(range(ways))
        for w in reversed(range(ways)):
            with m.If(hitv[w]):
                m.d.comb += hway.eq(w)
        # victim: the first invalid way, else by policy
        inv = Signal()
        vway = Signal(range(ways))
        pol = Signal(range(ways))
        if g.replacement == "lru":
            for w in range(ways):
                with m.If(f_[w]["age"] == ways - 1):
                    m.d.comb += pol.eq(w)
        elif g.replacement == "random":
            m.d.comb += pol.eq(lfsr_next[:max(g.way_bits, 1)] if ways > 1 else 0)
        else:
            best_f = Signal(8)
            best_a = Signal(4)
            m.d.comb += [best_f.eq(f_[0]["freq"]), best_a.eq(f_[0]["age"]), pol.eq(0)]
            for w in range(1, ways):
                better = (f_[w]["freq"] < best_f) | ((f_[w]["freq"] == best_f) & (f_[w]["age"] > best_a))
                pf, pa, pp = best_f, best_a, pol
                best_f, best_a = Signal(8, name=f"bf_{w}"), Signal(4, name=f"ba_{w}")
                npol = Signal(range(ways), name=f"pol{w}")
                m.d.comb += [best_f.eq(Mux(better, f_[w]["freq"], pf)), best_a.eq(Mux(better, f_[w]["age"], pa)),
                             npol.eq(Mux(better, w, pp))]
                pol = npol
        m.d.comb += vway.eq(pol)
        for w in reversed(range(ways)):
            with m.If(~f_[w]["valid"]):
                m.d.comb += [inv.eq(1), vway.eq(w)]
        # the ways registered with the row (PRE), the rest from those (PRE2)
        p_row = Signal(ways * E)
        p_hit = Signal()
        p_hway = Signal(range(ways))
        p_vway = Signal(range(ways))
        p_inv = Signal()
        m.d.sync += [p_row.eq(row), p_hit.eq(hit), p_hway.eq(hway), p_vway.eq(vway), p_inv.eq(inv)]
        # each way's freq + 1, its saturation and the ages' order, registered with the row: the
        # touched row then only muxes registered bits by the way (no adder or compare after it)
        p_fp1 = [Signal(9, name=f"p_fp1_{w}") for w in range(ways)]
        p_sat = [Signal(name=f"p_sat_{w}") for w in range(ways)]
        p_lt = [[Signal(name=f"p_lt_{w}_{v}") for v in range(ways)] for w in range(ways)]
        for w in range(ways):
            m.d.sync += [p_fp1[w].eq(f_[w]["freq"] + 1), p_sat[w].eq(f_[w]["freq"] + 1 >= FREQ_MAX)]
            for v in range(ways):
                m.d.sync += p_lt[w][v].eq(f_[v]["age"] < f_[w]["age"])
        f_ = [fields(p_row, w) for w in range(ways)]
        hit, hway, vway, inv = p_hit, p_hway, p_vway, p_inv

        def touched(w_sig, *, fill, tag=None, dirty=None, valid=1):
            """The row after touching way ``w_sig`` (hit) or filling it."""
            out = Signal(ways * E, name="row_new")
            freq_w = Signal(9)
            sat_w = Signal()
            lt_w = Signal(ways)
            for w in range(ways):
                with m.If(w_sig == w):
                    m.d.comb += [freq_w.eq(p_fp1[w]), sat_w.eq(p_sat[w]), lt_w.eq(Cat(*p_lt[w]))]
            sat = ~Const(fill, 1) & sat_w
            for w in range(ways):
                fw = f_[w]
                me = w_sig == w
                age = Mux(me, 0, Mux(lt_w[w], fw["age"] + 1, fw["age"]))
                if fill:
                    freq = Mux(me, 1, fw["freq"])
                else:
                    freq = Mux(me, Mux(sat, FREQ_MAX >> 1, freq_w[:8]), Mux(sat, fw["freq"] >> 1, fw["freq"]))
                t = Mux(me, tag if tag is not None else fw["tag"], fw["tag"])
                d = Mux(me, dirty if dirty is not None else fw["dirty"], fw["dirty"])
                v = Mux(me, valid, fw["valid"])
                m.d.comb += out[w * E:(w + 1) * E].eq(pack(t, v, d, age, freq))
            return out

        hslot = cur_slot(hway)
        vslot = cur_slot(vway)
        v_f = {k: Signal(len(v) if hasattr(v, "__len__") else 1, name=f"v_{k}") for k, v in f_[0].items()}
        for w in range(ways):
            with m.If(vway == w):
                m.d.comb += [v_f[k].eq(f_[w][k]) for k in v_f]
        filling = lambda s: Cat(*(mv & (ms == s) for mv, ms in zip(mshr_valid, mshr_slot))).any()  # noqa
        st_w_pending = lambda s: uws_pend.any(lambda e: e.slot == s)                               # noqa
        st_r_pending = lambda s: st_rd_q.any(lambda e: e.slot == s)                                 # noqa
        line_filling = Cat(*(mv & (ml == seg_line) for mv, ml in zip(mshr_valid, mshr_line))).any()
        # a victim is taken only once nothing of its slot is pending (its dirty line was
        # written back first, in a step of its own: the policy then picks it again)
        victim_ok = ~filling(vslot) & ~st_w_pending(vslot) & ~st_r_pending(vslot)
        full_line = (seg_off == 0) & (seg_words == LW)
        wt = g.write_policy == "write_through"
        clean = Signal(ways * E)
        m.d.comb += clean.eq(p_row)
        for w in range(ways):
            with m.If(vway == w):
                m.d.comb += clean[w * E + TB + 1].eq(0)
        hrow_w = touched(hway, fill=False, dirty=1 if not wt else None)
        hrow_r = touched(hway, fill=False)
        vrow_w = touched(vway, fill=True, tag=seg_tag, dirty=1)
        vrow_r = touched(vway, fill=True, tag=seg_tag, dirty=0)
        ok_whit = ~filling(hslot) & ~st_w_pending(hslot) & ~st_r_pending(hslot) & st_writer.job1.ready \
            & ~uws_pend.full & uw_route.w_rdy
        if wt:
            ok_whit = ok_whit & bk_writer.job1.ready & ~uwb_pend.full
        decision = {
            "hit": hit, "hway": hway, "vway": vway, "inv": inv, "vvalid": v_f["valid"],
            "wb_needed": v_f["valid"] & v_f["dirty"], "vtag": v_f["tag"], "vslot": vslot, "hslot": hslot,
            "vaddr": slot_addr(seg_set, vway), "haddr": slot_addr(seg_set, hway) + (seg_off << wshift),
            "clean": clean, "hrow": Mux(seg_write, hrow_w, hrow_r), "vrow": Mux(seg_write, vrow_w, vrow_r),
            "allocating": (~hit & (~seg_write | full_line) if g.write_policy == "write_back" else ~hit & ~seg_write),
            "full_line": full_line, "mshr_free": mshr_free,
            "ok_wb": ~filling(vslot) & ~st_w_pending(vslot) & ~st_rd_q.full & st_cmdq.w_rdy
                     & bk_writer.job0.ready & ~wb_pend.full,
            "ok_rhit": ~filling(hslot) & ~st_w_pending(hslot) & ~st_rd_q.full & st_cmdq.w_rdy & rd_order.w_rdy,
            "ok_miss": mshr_any_free & victim_ok & ~fillq.full & (rd_order.w_rdy | seg_pref),
            "ok_whit": ok_whit,
            "ok_wfull": victim_ok & st_writer.job1.ready & ~uws_pend.full & uw_route.w_rdy,
            "ok_around": ~line_filling & bk_writer.job1.ready & ~uwb_pend.full & uw_route.w_rdy,
        }
        widths = {"hway": range(ways), "vway": range(ways), "vtag": TB, "vslot": range(g.lines),
                  "hslot": range(g.lines), "vaddr": 64, "haddr": 64, "clean": ways * E, "hrow": ways * E,
                  "vrow": ways * E, "mshr_free": range(M)}
        dreg = {}
        for k, v in decision.items():
            dreg[k] = Signal(widths.get(k, 1), name=f"d_{k}")
            m.d.sync += dreg[k].eq(v)
        (d_hit, d_hway, d_vway, d_inv, d_vvalid, d_wb_needed, d_vtag, d_vslot, d_hslot, d_vaddr, d_haddr,
         d_clean, d_hrow, d_vrow, d_allocating, d_full_line, d_mshr_free, d_ok_wb, d_ok_rhit, d_ok_miss, d_ok_whit,
         d_ok_wfull, d_ok_around) = dreg.values()

        # the action DECIDE takes (one at most), from the same inputs as d_*, registered with them
        alloc_wb = decision["allocating"] & decision["wb_needed"]
        rd, wr = ~alloc_wb & ~seg_write, ~alloc_wb & seg_write
        wb_full = decision["full_line"] if g.write_policy == "write_back" else Const(0, 1)
        actions = {
            "wb": alloc_wb & decision["ok_wb"],
            "skip": rd & hit & seg_pref,
            "rhit": rd & hit & ~seg_pref & decision["ok_rhit"],
            "miss": rd & ~hit & decision["ok_miss"],
            "whit": wr & hit & decision["ok_whit"],
            "wfull": wr & ~hit & wb_full & decision["ok_wfull"],
            "around": wr & ~hit & ~wb_full & decision["ok_around"],
        }
        act = {}
        for k, v in actions.items():
            act[k] = Signal(name=f"act_{k}")
            m.d.sync += act[k].eq(v)
        act_wb, act_skip, act_rhit, act_miss, act_whit, act_wfull, act_around = act.values()
        dec = Signal()                      # the lookup is in DECIDE
        m.d.sync += dec.eq(0)

        def allocate():
            with m.If(d_vvalid):
                add("evictions", 1)
            if g.replacement == "random":
                with m.If(~d_inv):
                    m.d.sync += lfsr.eq(lfsr_next)

        # -- the walk's inputs for way ``walk_way`` of ``walk_row``, registered every cycle (used in
        # W_WAY, one cycle after W_SEL; during a walk only the walk pushes to its queues)
        wf = fields(walk_row, 0)            # walk_row turns by a way as each way is done
        line_off = Cat(Const(0, lbits), walk_set[:sbits] if sbits else Const(0, 0), wf["tag"])
        line_addr = wbase + line_off
        # the line is in the range when addr <= wbase + line_off and wbase + line_off + LB <=
        # addr + bytes: line_off compared with these, kept in registers (ctl_q and wbase are set
        # cycles before a walk starts)
        rng_end = Signal(65)
        rng_base = Signal(65)
        rng_lo = Signal(signed(67))
        rng_hi = Signal(signed(67))
        m.d.sync += [rng_end.eq(ctl_q.addr + ctl_q.bytes), rng_base.eq(wbase + LB),
                     rng_lo.eq(ctl_q.addr - wbase), rng_hi.eq(rng_end - rng_base)]
        wslot = walk_set * ways + walk_way
        walk_in = {
            "end": walk_way == ways, "last_set": walk_set == sets - 1, "valid": wf["valid"], "dirty": wf["dirty"],
            "in_range": (line_off >= rng_lo) & (line_off <= rng_hi),
            "invalidate": ctl_q.action == CacheAction.INVALIDATE,
            "ok": ~st_rd_q.full & st_cmdq.w_rdy & bk_writer.job0.ready & ~wb_pend.full,
            "line": line_addr, "slot": wslot, "slot_addr": store + (wslot << lbits),
        }
        walk_w = {"line": 64, "slot": range(g.lines), "slot_addr": 64}
        wk = {}
        for k, v in walk_in.items():
            wk[k] = Signal(walk_w.get(k, 1), name=f"wk_{k}")
            m.d.sync += wk[k].eq(v)
        (wk_end, wk_last_set, wk_valid, wk_dirty, wk_in_range, wk_invalidate, wk_ok, wk_line, wk_slot,
         wk_slot_addr) = wk.values()
        # W_WAY's writeback of a dirty line in the range, registered with wk_* (and wway: in W_WAY)
        wk_push = Signal()
        wway = Signal()
        m.d.sync += [wway.eq(0),
                     wk_push.eq(~walk_in["end"] & ~(walk_in["valid"] & walk_in["in_range"] & walk_in["invalidate"])
                                & walk_in["valid"] & walk_in["dirty"] & walk_in["in_range"] & walk_in["ok"])]

        lookup_idle = Signal()
        walk_rd = Signal()
        def write_around(counter, kind, s=0):
            """The write segment straight to the backing memory (a bypass, or a write-around miss)."""
            job(bk_writer, 1, seg_addr, seg_words, w_id)
            ct_inc(w_id, 1)
            m.d.comb += [uwb_pend.push.eq(1), uwb_pend.push_data.line.eq(seg_line)]
            route(_BACK, seg_words)
            add(counter, 1)
            add("backing_bytes_written", seg_bytes)
            event(kind, 1, s)
            advance(True)

        # BYPASS's room checks, registered every cycle: only the lookup pushes to those queues
        # and it pushes nothing in TAGRD or a waiting BYPASS, so a flag is stale only in the safe
        # direction (the FIFO levels' compares were 6 LUTs into the queues' levels)
        byp_rd_ok = Signal()
        byp_wr_ok = Signal()
        m.d.sync += [byp_rd_ok.eq(~fillq.full & rd_order.w_rdy),
                     byp_wr_ok.eq(bk_writer.job1.ready & uw_route.w_rdy & ~uwb_pend.full)]

        with m.FSM(name="lookup"):
            with m.State("IDLE"):
                m.d.comb += lookup_idle.eq(1)
                pick_w = Signal()
                m.d.comb += pick_w.eq(w_active & (~r_active | rr))
                addr = Mux(pick_w, w_addr, r_addr)
                m.d.comb += rel.eq(addr - wbase)
                with m.If(self.ctl.valid & ~r_active & ~w_active & ~ctl_busy):
                    m.d.sync += [ctl_q.eq(self.ctl.payload), ctl_busy.eq(1)]
                    m.d.comb += self.ctl.ready.eq(1)
                    m.next = "CTL"
                with m.Elif(r_active | w_active):
                    m.d.sync += [seg_write.eq(pick_w), seg_pref.eq(~pick_w & r_pref), seg_addr.eq(addr),
                                 seg_left.eq(Mux(pick_w, w_left, r_left)),
                                 seg_to_end.eq(LB - addr[:lbits]),
                                 seg_left_small.eq(Mux(pick_w, w_left, r_left)[lbits + 1:] == 0),
                                 seg_off.eq(rel[wshift:lbits]), seg_set.eq(rel[lbits:lbits + sbits] if sbits else 0),
                                 seg_tag.eq(rel[lbits + sbits:lbits + sbits + TB]),
                                 seg_line.eq(Cat(Const(0, lbits), addr[lbits:]))]
                    m.d.sync += [rr.eq(~rr), seg_rel.eq(rel)]
                    m.next = "TAGRD"
            with m.State("BYPASS"):
                with m.If(seg_pref):                         # prefetch outside the window: nothing
                    advance(False)
                    m.next = "IDLE"
                with m.Elif(~seg_write):
                    with m.If(byp_rd_ok):
                        push_fill(_BYPASS, seg_addr, seg_words, 0, 0, 0, seg_words)
                        push_rd_order(_BACK, seg_words)
                        add("bypasses", 1)
                        add("backing_bytes_read", seg_bytes)
                        event("bypass", 0)
                        advance(False)
                        m.next = "IDLE"
                with m.Else():
                    with m.If(byp_wr_ok):
                        write_around("bypasses", "bypass")
                        m.next = "IDLE"
            with m.State("TAGRD"):             # inside the window: the tags; else around the cache
                # the segment's size from registered parts (in IDLE the compare after the
                # segmenters' mux was a 3.5 ns path, here on 33 bits still 3.5): the count below
                # the line's bytes left, a compare of lbits + 1 bits; nothing reads it before PRE
                nbytes = Mux(seg_left_small & (seg_left[:lbits + 1] < seg_to_end), seg_left, seg_to_end)
                m.d.sync += [seg_bytes.eq(nbytes), seg_words.eq(nbytes >> wshift)]
                with m.If(seg_rel < wbytes):
                    m.next = "PRE"
                with m.Else():
                    m.next = "BYPASS"
            with m.State("PRE"):                # the row is out: its hit and victim ways into p_*
                m.next = "PRE2"
            with m.State("PRE2"):               # the decision's inputs into d_*
                m.d.sync += dec.eq(1)
                m.next = "DECIDE"
            with m.State("DECIDE"):             # acts on d_*/act_* (what PRE2 saw); waits through PRE again
                m.next = "PRE"
                with m.If(act_wb):
                    m.next = "TAGRD"
                with m.Elif(act_skip | act_rhit | act_miss | act_whit | act_wfull | act_around):
                    m.next = "IDLE"
            # ---- control actions ------------------------------------------------------------
            quiet = Signal()
            with m.State("CTL"):
                with m.Switch(ctl_q.action):
                    with m.Case(CacheAction.PREFETCH):
                        m.d.sync += [r_active.eq(ctl_q.bytes != 0), r_addr.eq(ctl_q.addr), r_left.eq(ctl_q.bytes),
                                     r_pref.eq(1), ctl_busy.eq(0)]
                        m.d.comb += self.ctl_done.eq(1)
                        m.next = "IDLE"
                    with m.Default():
                        with m.If(quiet):
                            m.d.sync += [walk_set.eq(0), walk_last.eq(sets == 1), walk_way.eq(0)]
                            with m.Switch(ctl_q.action):
                                with m.Case(CacheAction.CONFIGURE):
                                    m.d.sync += [wbase.eq(ctl_q.addr), wbytes.eq(ctl_q.bytes), store.eq(ctl_q.store)]
                                    m.next = "CLEAR"
                                with m.Case(CacheAction.FLUSH, CacheAction.INVALIDATE):
                                    m.next = "W_RD"
                                with m.Default():            # STATS: the engine reads the tags now
                                    m.next = "CTL_DONE"
            with m.State("CLEAR"):
                m.d.comb += [twr.en.eq(1),
                             twr.data.eq(Cat(*(pack(Const(0, TB), 0, 0, Const(w, 4), Const(0, 8)) for w in range(ways))))]
                m.d.sync += [walk_set.eq(walk_set + 1), walk_last.eq(walk_set == sets - 2)]
                with m.If(walk_last):
                    m.next = "CTL_DONE"
            with m.State("W_RD"):
                m.d.comb += walk_rd.eq(1)
                m.next = "W_ROW"
            with m.State("W_ROW"):
                m.d.sync += [walk_row.eq(row), walk_way.eq(0)]
                m.next = "W_SEL"
            with m.State("W_SEL"):              # way ``walk_way``'s fields and addresses into wk_*
                m.d.sync += wway.eq(1)
                m.next = "W_WAY"
            with m.State("W_WAY"):              # acts on wk_* (what W_SEL saw); then the next way
                turn = lambda v: Cat(v[E:], v[:E])                                       # noqa: E731
                m.next = "W_SEL"
                with m.If(wk_end):
                    m.d.comb += [twr.en.eq(1), twr.data.eq(walk_row)]
                    m.d.sync += walk_set.eq(walk_set + 1)
                    with m.If(wk_last_set):
                        m.next = "W_DRAIN"
                    with m.Else():
                        m.next = "W_RD"
                with m.Elif(wk_valid & wk_in_range & wk_invalidate):
                    m.d.sync += walk_row.eq(turn(walk_row & ~Const((1 << TB) | (1 << (TB + 1)), ways * E)))
                    m.d.sync += walk_way.eq(walk_way + 1)
                with m.Elif(wk_valid & wk_dirty & wk_in_range):
                    with m.If(wk_ok):               # the writeback: wk_push (below)
                        m.d.sync += walk_row.eq(turn(walk_row & ~Const(1 << (TB + 1), ways * E)))
                        m.d.sync += walk_way.eq(walk_way + 1)
                with m.Else():
                    m.d.sync += [walk_row.eq(turn(walk_row)), walk_way.eq(walk_way + 1)]
            with m.State("W_DRAIN"):
                with m.If(quiet):
                    m.next = "CTL_DONE"
            with m.State("CTL_DONE"):
                m.d.comb += self.ctl_done.eq(1)
                m.d.sync += ctl_busy.eq(0)
                m.next = "IDLE"

        def write_back(slot_addr, slot, line):
            """A dirty line leaves: its store read, the backing write job, the pending record, the
            counters (the walk's and the lookup's writebacks never fall in one cycle)."""
            push_st_read(slot_addr, LW, 1, slot)
            job(bk_writer, 0, line, LW, 0)
            m.d.comb += [wb_pend.push.eq(1), wb_pend.push_data.line.eq(line)]
            add("writebacks", 1)
            add("store_bytes_read", LB)
            add("backing_bytes_written", LB)

        with m.If(wway & wk_push):
            write_back(wk_slot_addr, wk_slot, wk_line)

        # -- the lookup's actions in DECIDE (dec), one registered flag each (act_*): their pushes
        # start at flip-flops, not at the state machine's decode
        with m.If(dec):
            d_victim_line = wbase + Cat(Const(0, lbits), seg_set if sbits else Const(0, 0), d_vtag)
            with m.If(act_wb):
                write_back(d_vaddr, d_vslot, d_victim_line)
                m.d.comb += [twr.en.eq(1), twr.data.eq(d_clean)]
            with m.If(act_skip):
                event("skip", 0, seg_set)
                advance(False)
            with m.If(act_rhit):
                push_st_read(d_haddr, seg_words, 0, d_hslot)
                push_rd_order(_STORE, seg_words)
                m.d.comb += [twr.en.eq(1), twr.data.eq(d_hrow)]
                add("hits", 1)
                add("store_bytes_read", seg_bytes)
                event("hit", 0, seg_set, d_hway)
                advance(False)
            with m.If(act_miss):
                allocate()
                for i in range(M):
                    with m.If(d_mshr_free == i):
                        m.d.sync += [mshr_valid[i].eq(1), mshr_slot[i].eq(d_vslot), mshr_line[i].eq(seg_line)]
                push_fill(_FILL, seg_line, LW, d_mshr_free, d_vaddr, seg_off, Mux(seg_pref, 0, seg_words))
                with m.If(~seg_pref):
                    push_rd_order(_BACK, seg_words)
                    add("misses", 1)
                    event("miss", 0, seg_set, d_vway)
                with m.Else():
                    add("prefetches", 1)
                    event("prefetch", 0, seg_set, d_vway)
                add("backing_bytes_read", LB)
                add("store_bytes_written", LB)
                m.d.comb += [twr.en.eq(1), twr.data.eq(d_vrow)]
                advance(False)
            with m.If(act_whit):
                job(st_writer, 1, d_haddr, seg_words, w_id)
                ct_inc(w_id, 0)
                m.d.comb += [uws_pend.push.eq(1), uws_pend.push_data.slot.eq(d_hslot)]
                add("hits", 1)
                add("store_bytes_written", seg_bytes)
                if wt:
                    job(bk_writer, 1, seg_addr, seg_words, w_id)
                    ct_inc(w_id, 1)
                    m.d.comb += [uwb_pend.push.eq(1), uwb_pend.push_data.line.eq(seg_line)]
                    route(_BOTH, seg_words)
                    add("backing_bytes_written", seg_bytes)
                else:
                    route(_STORE, seg_words)
                m.d.comb += [twr.en.eq(1), twr.data.eq(d_hrow)]
                event("hit", 1, seg_set, d_hway)
                advance(True)
            if g.write_policy == "write_back":
                with m.If(act_wfull):
                    allocate()
                    job(st_writer, 1, d_vaddr, LW, w_id)
                    ct_inc(w_id, 0)
                    m.d.comb += [uws_pend.push.eq(1), uws_pend.push_data.slot.eq(d_vslot)]
                    route(_STORE, LW)
                    add("misses", 1)
                    add("store_bytes_written", LB)
                    m.d.comb += [twr.en.eq(1), twr.data.eq(d_vrow)]
                    event("miss", 1, seg_set, d_vway)
                    advance(True)
            with m.If(act_around):
                write_around("misses", "miss", seg_set)

        # -- the backing port's read command and data and the engine's read data through register
        # slices (their valid/ready came from the queues' heads in the same cycle: paths into the
        # ports and the next engine of up to 5.8 ns in the Yosys estimate)
        bk_cmd_i = self.bk_cmd.signature.create()
        bk_data_i = self.bk_data.signature.flip().create()
        up_data_i = self.up_data.signature.create()
        slice_stream(m, "bk_cmd_slice", bk_cmd_i, self.bk_cmd)
        slice_stream(m, "bk_data_slice", self.bk_data, bk_data_i)
        slice_stream(m, "up_data_slice", up_data_i, self.up_data)

        # -- fill issue: backing reads in lookup order, each once its line has no pending write ----
        fh = fillq.head
        bk_w = data.View(BkLayout, bk_order.w_data)
        # the head's conflict with a pending write, registered: it holds for the cycle after unless
        # the head or the pending writes changed then (a push, or a pop of the head: such a cycle
        # waits; pending writes retiring only clear conflicts). The compares behind the head's mux
        # were 7 LUTs into the queues.
        conflict = wb_pend.any(lambda e: e.line == fh.addr) | uwb_pend.any(lambda e: e.line == fh.addr)
        conflict_r = Signal()
        changed = Signal()
        m.d.sync += [conflict_r.eq(conflict), changed.eq(fillq.push | fillq.pop | wb_pend.push | uwb_pend.push)]
        fill_ok = ~fillq.empty & ~changed & bk_order.w_rdy & ((fh.kind == _BYPASS) | (~conflict_r & st_writer.job0.ready))
        m.d.comb += [bk_cmd_i.valid.eq(fill_ok), bk_cmd_i.payload.addr.eq(fh.addr),
                     bk_cmd_i.payload.bytes.eq(fh.words << wshift)]
        with m.If(bk_cmd_i.valid & bk_cmd_i.ready):
            m.d.comb += [fillq.pop.eq(1), bk_order.w_en.eq(1), bk_w.kind.eq(fh.kind), bk_w.words.eq(fh.words),
                         bk_w.off.eq(fh.off), bk_w.end.eq(fh.off + fh.take)]
            with m.If(fh.kind == _FILL):
                job(st_writer, 0, fh.slot_addr, LW, fh.mshr)
        for i in range(M):                                   # a fill is done when its line is in the store
            with m.If(st_writer.fin0 & (st_writer.fin_tag0 == i)):
                m.d.sync += mshr_valid[i].eq(0)

        # -- backing read data: fills to the store writer (and their segment up), bypasses up ----
        # word ``bk_i`` of the head job: whether it goes up (in_take) and ends the job (bk_last),
        # registered: set for word 0 in a cycle of its own once a job is at the head (hv), then
        # for the next word as each is taken (the compares behind the head's fields were a 5 ns
        # path into the writers' FIFOs)
        bh = data.View(BkLayout, bk_order.r_data)
        bk_n = Signal(24, init=1)           # word bk_i + 1 (bk_i: the word at hand)
        bk_n2 = Signal(24, init=2)          # word bk_i + 2
        hv = Signal()
        in_take = Signal()
        bk_last = Signal()
        bk_up_valid = Signal()
        bk_up_ready = Signal()
        is_fill = bh.kind == _FILL
        head = bk_order.r_rdy & hv
        to_store_ok = ~is_fill | st_writer.words0.ready
        m.d.comb += bk_up_valid.eq(head & bk_data_i.valid & (~is_fill | in_take) & to_store_ok)
        to_up_ok = ~(~is_fill | in_take) | bk_up_ready
        m.d.comb += [st_writer.words0.payload.eq(bk_data_i.payload),
                     st_writer.words0.valid.eq(head & bk_data_i.valid & is_fill & to_up_ok)]
        m.d.comb += bk_data_i.ready.eq(head & to_store_ok & to_up_ok)
        # the head job leaves bk_order a cycle after its last word (bk_pop: the FIFO's level then
        # starts at a flip-flop, not at the data handshake; a bubble a backing read)
        bk_pop = Signal()
        m.d.sync += bk_pop.eq(0)
        m.d.comb += bk_order.r_en.eq(bk_pop)
        with m.If(bk_order.r_rdy & ~hv & ~bk_pop):
            m.d.sync += [hv.eq(1), in_take.eq((bh.off == 0) & (bh.end != 0)), bk_last.eq(bh.words == 1)]
        with m.If(bk_data_i.valid & bk_data_i.ready):
            m.d.sync += [bk_n.eq(bk_n2), bk_n2.eq(bk_n2 + 1), in_take.eq((bk_n >= bh.off) & (bk_n < bh.end)),
                         bk_last.eq(bk_n2 == bh.words)]
            with m.If(bk_last):
                m.d.sync += [bk_n.eq(1), bk_n2.eq(2), hv.eq(0), bk_pop.eq(1)]

        # -- store reads: commands in order; data to the engine (hits) or the backing writer -----
        m.d.comb += [self.st_cmd.valid.eq(st_cmdq.r_rdy), self.st_cmd.payload.addr.eq(st_cmdq.r_data.addr),
                     self.st_cmd.payload.bytes.eq(st_cmdq.r_data.words << wshift),
                     st_cmdq.r_en.eq(self.st_cmd.ready)]
        sh = st_rd_q.head
        st_i = Signal(24, init=1)          # the word's number, from 1
        st_up_valid = Signal()
        st_up_ready = Signal()
        m.d.comb += st_up_valid.eq(~st_rd_q.empty & (sh.dest == 0) & self.st_data.valid)
        m.d.comb += [bk_writer.words0.payload.eq(self.st_data.payload),
                     bk_writer.words0.valid.eq(~st_rd_q.empty & (sh.dest == 1) & self.st_data.valid)]
        m.d.comb += self.st_data.ready.eq(~st_rd_q.empty & Mux(sh.dest == 1, bk_writer.words0.ready, st_up_ready))
        with m.If(self.st_data.valid & self.st_data.ready):
            m.d.sync += st_i.eq(st_i + 1)
            with m.If(st_i == sh.words):
                m.d.sync += st_i.eq(1)
                m.d.comb += st_rd_q.pop.eq(1)

        # -- the engine's read data, in its request order -----------------------------------------
        oh = rd_order.r_data
        up_i = Signal(24, init=1)          # the word's number, from 1
        from_store = oh.src == _STORE
        # the head leaves rd_order a cycle after its last word (up_pop, as bk_pop; a bubble a
        # read segment)
        up_pop = Signal()
        up_on = Signal()
        m.d.sync += up_pop.eq(0)
        m.d.comb += [rd_order.r_en.eq(up_pop), up_on.eq(rd_order.r_rdy & ~up_pop)]
        m.d.comb += [up_data_i.valid.eq(up_on & Mux(from_store, st_up_valid, bk_up_valid)),
                     up_data_i.payload.eq(Mux(from_store, self.st_data.payload, bk_data_i.payload)),
                     st_up_ready.eq(up_on & from_store & up_data_i.ready),
                     bk_up_ready.eq(up_on & ~from_store & up_data_i.ready)]
        with m.If(up_data_i.valid & up_data_i.ready):
            m.d.sync += up_i.eq(up_i + 1)
            with m.If(up_i == oh.words):
                m.d.sync += [up_i.eq(1), up_pop.eq(1)]

        # -- the engine's write data, routed to the store and/or the backing writer ----------------
        rh = data.View(RouteLayout, uw_route.r_data)
        uw_i = Signal(24, init=1)          # the word's number, from 1
        want_st = rh.dest != _BACK
        want_bk = rh.dest != _STORE
        ok = uw_route.r_rdy & (~want_st | st_writer.words1.ready) & (~want_bk | bk_writer.words1.ready)
        m.d.comb += [st_writer.words1.payload.eq(self.up_wdata.payload), bk_writer.words1.payload.eq(self.up_wdata.payload),
                     st_writer.words1.valid.eq(self.up_wdata.valid & ok & want_st),
                     bk_writer.words1.valid.eq(self.up_wdata.valid & ok & want_bk),
                     self.up_wdata.ready.eq(ok)]
        with m.If(self.up_wdata.valid & self.up_wdata.ready):
            m.d.sync += uw_i.eq(uw_i + 1)
            with m.If(uw_i == rh.words):
                m.d.sync += uw_i.eq(1)
                m.d.comb += uw_route.r_en.eq(1)

        # -- pending writes retire as their writers acknowledge them -------------------------------
        m.d.comb += [wb_pend.pop.eq(bk_writer.fin0), uwb_pend.pop.eq(bk_writer.fin1), uws_pend.pop.eq(st_writer.fin1)]

        # -- idle, and the tags for STATS -----------------------------------------------------------
        m.d.comb += quiet.eq(fillq.empty & ~bk_order.r_rdy & ~rd_order.r_rdy & st_rd_q.empty & ~uw_route.r_rdy
                             & ~Cat(*mshr_valid).any() & ~st_writer.pending0 & ~st_writer.pending1
                             & ~bk_writer.pending0 & ~bk_writer.pending1 & (ct_level == 0) & ~st_cmdq.r_rdy)
        m.d.comb += self.idle.eq(quiet & ~r_active & ~w_active & ~ctl_busy)
        tword = Signal(64)
        t_way = Signal(range(ways))
        m.d.sync += t_way.eq(self.tag_addr[:abits] if ways > 1 else 0)
        # the tags' read address: the walk's set, the engine's (STATS) while the lookup is idle,
        # else the segment's
        m.d.comb += trd.addr.eq(Mux(walk_rd, walk_set, Mux(lookup_idle, self.tag_addr >> g.way_bits, seg_set)))
        # the tags' write address: the walk's (CLEAR, W_WAY) while a control action runs (no
        # lookup then), else the segment's; one mux from registers (3.8 ns as a chain)
        m.d.comb += twr.addr.eq(Mux(ctl_busy, walk_set, seg_set))
        for w in range(ways):
            fw = fields(row, w)
            with m.If(t_way == w):
                m.d.comb += tword.eq(Cat(fw["tag"], Const(0, 40 - TB), fw["valid"], fw["dirty"], Const(0, 2),
                                         fw["age"], fw["freq"]))
        m.d.comb += self.tag_word.eq(tword)
        return m
