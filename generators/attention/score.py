"""Score unit: Q.K for all rows per K word, log2-domain scores into a page bank of
:attr:`ScoreUnit.BANKS` segments with the block max, and the probability stage that turns a
finished bank into ``exp2`` probabilities (after one rescale entry per segment) for the PV unit.

Pipeline per K value word (no stalls inside, a register after every step that could miss the
300 MHz budget): A products, block sums (adder trees, two levels per stage), x mantissa, sum of
the blocks, accumulate S; B ``z = sat24(rshift_round(S * mult, shift))`` in three stages and the
row masks (causal: ``j <= pos`` and the window/sink; bidirectional: every token the sequencer
read); C bank write, block max, and at the segment's last token the online-softmax bookkeeping
(previous and new running max per row).
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...engines.attention import CTX_BITS, MAX_SHIFT, MULT_BITS, P_FRAC, Z_BITS
from ...mathutil import exact_log2
from ..fifo import StepFIFOBuffered
from ..matmul.pipe import adder_tree, delay
from ..products import pipelined_product
from .exp2 import Exp2
from .geometry import DatapathGeometry

__all__ = ["ScoreUnit", "p_entry_layout"]

ZMIN, ZMAX = -(1 << (Z_BITS - 1)), (1 << (Z_BITS - 1)) - 1
LEVELS_PER_STAGE = 2        # adder-tree levels between two registers (a level is a carry chain)


def p_entry_layout(rows: int) -> data.StructLayout:
    """A rescale factor (``alpha``, first entry of a segment) or one token's probabilities."""
    return data.StructLayout({"vals": data.ArrayLayout(unsigned(P_FRAC + 1), rows), "alpha": 1})


def rshift_round_var(v, s, max_shift: int):
    """``rshift_round(v, s)`` for a signed ``v`` and a variable ``s`` in 0..max_shift."""
    sm1 = (s - 1)[:max(1, max_shift.bit_length())]
    return Mux(s == 0, v, ((v >> sm1) + 1) >> 1)


class ScoreUnit(wiring.Component):
    #: segments the score bank holds: the QK side runs up to this many segments ahead of the
    #: probabilities. With two, a segment could start only when the one two before had issued its
    #: last probability, and its first probability then came a page's K words plus the score
    #: pipeline's depth later, while the PV unit had a page and a half of work left: about four
    #: cycles a 16-token page. Four banks cover that depth and the tile's output stage's first pages.
    BANKS = 4

    def __init__(self, geometry: DatapathGeometry):
        self._geom = geometry
        rows, head_dim = geometry.rows, geometry.head_dim
        super().__init__({
            "item": In(stream.Signature(geometry.item_layout())),
            **({"row_data": In(data.ArrayLayout(geometry.row_data_layout(), rows))}
               if geometry.head_parallel else {}),
            "seg": In(geometry.seg_layout()),
            "bits4": In(1),
            "window": In(CTX_BITS),
            "sink": In(CTX_BITS),
            "bidir": In(1),                   # every token read is visible to every valid row
            # next tile's rows (from the Q loader)
            "tq_valid": In(1),
            "tq_take": Out(1),
            "tq_q": In(data.ArrayLayout(signed(8), rows * head_dim)),
            "tq_mult": In(data.ArrayLayout(unsigned(MULT_BITS), rows)),
            "tq_shift": In(data.ArrayLayout(unsigned(6), rows)),
            "tq_pos": In(data.ArrayLayout(unsigned(CTX_BITS), rows)),
            "tq_nv": In(range(rows + 1)),
            "p": Out(stream.Signature(p_entry_layout(rows))),
            "fire": Out(1),
            "rows": Out(range(rows + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        rows, slots, int8_lanes, page_tokens = geom.rows, geom.slots, geom.int8_lanes, geom.page_tokens
        blocks, block_lanes = geom.blocks, geom.block_lanes
        sbits = geom.score_bits
        it = self.item.payload
        seg = self.seg

        # -- tile state ---------------------------------------------------------------------
        ring = [[Signal(int8_lanes * 8, name=f"q{r}_{s}") for s in range(slots)] for r in range(rows)]
        mult = [Signal(MULT_BITS, name=f"mult{r}") for r in range(rows)]
        shift = [Signal(6, name=f"shift{r}") for r in range(rows)]
        pos = [Signal(CTX_BITS, name=f"pos{r}") for r in range(rows)]
        lo = [Signal(signed(CTX_BITS + 1), name=f"lo{r}") for r in range(rows)]
        nv = Signal(range(rows + 1))
        tile_ok = Signal()
        in_flight = Signal()

        with m.If(~tile_ok & self.tq_valid & ~in_flight):
            m.d.comb += self.tq_take.eq(1)
            m.d.sync += [tile_ok.eq(1), nv.eq(self.tq_nv)]
            for r in range(rows):
                m.d.sync += [mult[r].eq(self.tq_mult[r]), shift[r].eq(self.tq_shift[r]),
                             pos[r].eq(self.tq_pos[r]),
                             lo[r].eq(self.tq_pos[r] - self.window + 1)]
                for s in range(slots):
                    first = r * geom.head_dim + s * int8_lanes
                    m.d.sync += ring[r][s].eq(Cat(*(self.tq_q[first + i] for i in range(int8_lanes))))
        m.d.comb += self.rows.eq(nv)

        # -- banks --------------------------------------------------------------------------
        ew = Z_BITS + 1
        NB = self.BANKS
        m.submodules.bank = bank = Memory(shape=rows * ew, depth=NB * page_tokens, init=[])
        bw = bank.write_port()
        br = bank.read_port(transparent_for=())
        full = [Signal(name=f"full{b}") for b in range(NB)]
        bank_a = Signal(range(NB))
        in_seg = Signal()
        # bank b is taken (full, or a segment ending in it still in the pipeline): a flip-flop per
        # bank (below), so the word handshake sees one 4-way select of registers as with two banks
        taken = [Signal(name=f"taken{b}") for b in range(NB)]
        m.d.comb += self.item.ready.eq(tile_ok & ~(~in_seg & Cat(*taken).bit_select(bank_a, 1)))
        take = self.item.valid & self.item.ready
        m.d.comb += self.fire.eq(take)

        # -- stage A: products, block sums, x mantissa (a registered pipeline), the accumulator ----
        # everything a taken word carries goes down the pipeline beside its products; the score
        # accumulator adds the word's sum LATENCY_A cycles after the take
        S = [Signal(signed(sbits), name=f"S{r}") for r in range(rows)]
        Sf = [Signal(signed(sbits), name=f"Sf{r}") for r in range(rows)]
        ctrl = data.StructLayout({"v": 1, "first": 1, "last": 1, "t": range(max(2, page_tokens)),
                                  "j": CTX_BITS, "seg_last": 1, "tile_first": 1, "bank": range(NB)})
        c0 = Signal(ctrl)
        m.d.comb += [c0.v.eq(take), c0.first.eq(it.first), c0.last.eq(it.last), c0.t.eq(it.t),
                     c0.j.eq(seg.j0 + it.t), c0.seg_last.eq(it.seg_last), c0.tile_first.eq(seg.tile_first),
                     c0.bank.eq(bank_a)]
        # row r's K lanes and mantissas: its own port group's word on a head-parallel engine
        # (the engine drives row_data with the shared word in a shared-layout job)
        src = [self.row_data[r] for r in range(rows)] if geom.head_parallel else [it] * rows
        lat_a = None
        wsums = []
        for r in range(rows):
            bsums = []
            for b in range(blocks):
                prods = []
                for i in range(b * block_lanes, (b + 1) * block_lanes):
                    slot, li = divmod(i, int8_lanes)
                    pr = Signal(signed(16), name=f"qk{r}_{i}", reset_less=True)
                    if slot < slots:
                        qv = ring[r][slot][8 * li:8 * li + 8].as_signed()
                        m.d.sync += pr.eq(geom.lane_product(qv, src[r].lanes[i]))
                    prods.append(pr)
                bs, st = adder_tree(m, prods, levels_per_stage=LEVELS_PER_STAGE, name=f"bs{r}_{b}")
                # the last of the mantissa's delays has a reset so it stays a flip-flop: a shift
                # register LUT (what Yosys makes of a reset-less chain) is slow into the DSP
                mant = delay(m, delay(m, src[r].mants[b], st, name=f"mant{r}_{b}", reset_less=True), 1,
                             name=f"mant{r}_{b}_ff")
                bm = Signal(signed(16 + exact_log2(block_lanes) + 1 + 17), name=f"bm{r}_{b}", reset_less=True)
                m.d.sync += bm.eq(bs * mant)
                bsums.append(bm)
                lat_b = 2 + st
            wsum, st = adder_tree(m, bsums, levels_per_stage=LEVELS_PER_STAGE, name=f"ws{r}")
            wsums.append(wsum)
            lat_a = lat_b + st
        chain = [c0]
        for i in range(lat_a):
            chain.append(delay(m, chain[-1], 1, name=f"ctlA{i}"))
        ca = chain[-1]
        vB = Signal()
        tB = Signal(range(max(2, page_tokens)))
        jB = Signal(CTX_BITS)
        lastB, firstB, bankB = Signal(), Signal(), Signal(range(NB))
        m.d.sync += vB.eq(ca.v & ca.last)
        for r in range(rows):
            acc = Mux(ca.first, 0, S[r]) + wsums[r]
            with m.If(ca.v):
                m.d.sync += S[r].eq(acc)
                with m.If(ca.last):
                    m.d.sync += Sf[r].eq(acc)
        with m.If(ca.v):
            m.d.sync += [tB.eq(ca.t), jB.eq(ca.j), lastB.eq(ca.seg_last), firstB.eq(ca.tile_first),
                         bankB.eq(ca.bank)]
        with m.If(take):
            m.d.sync += in_seg.eq(~it.seg_last)
            with m.If(it.seg_last):
                m.d.sync += bank_a.eq(bank_a + 1)
                with m.If(seg.tile_last):
                    m.d.sync += tile_ok.eq(0)
            # rotate Q by the slots this word covered
            for r in range(rows):
                for s in range(slots):
                    rot1 = ring[r][(s + 1) % slots]
                    rotk = ring[r][(s + geom.slots_per_word) % slots]
                    m.d.sync += ring[r][s].eq(geom.select_format(self.bits4, int4=rotk, int8=rot1))

        # -- stage B: log2-domain score and masks: S x mult (registered DSP tiles and their sum,
        # ``b_lat`` registers) beside the masks, then the shift (two steps), rounding + saturation ----
        # (mult as the 17-bit side: S in two pieces, so two DSP tiles and one registered sum)
        prods = [pipelined_product(m, mult[r], Sf[r], name=f"sm{r}") for r in range(rows)]
        b_lat = prods[0][1]
        b_ctl = data.StructLayout({"v": 1, "t": range(max(2, page_tokens)), "last": 1, "first": 1, "bank": range(NB)})
        ctlB = Signal(b_ctl)
        m.d.comb += [ctlB.v.eq(vB), ctlB.t.eq(tB), ctlB.last.eq(lastB), ctlB.first.eq(firstB), ctlB.bank.eq(bankB)]
        chainB = [ctlB]                      # chainB[b_lat + 3] is stage C
        for i in range(b_lat + 3):
            chainB.append(delay(m, chainB[-1], 1, name=f"ctlB{i}"))
        cC = chainB[-1]
        vC, tC, lastC, firstC, bankC = cC.v, cC.t, cC.last, cC.first, cC.bank
        zC = [Signal(signed(Z_BITS), name=f"z{r}") for r in range(rows)]
        visC = [Signal(name=f"vis{r}") for r in range(rows)]
        for r in range(rows):
            prod = prods[r][0]
            in_win = (self.window == 0) | (Cat(jB, Const(0, 1)).as_signed() >= lo[r]) | (jB < self.sink)
            vis = Signal(name=f"visB_{r}")
            m.d.sync += vis.eq((r < nv) & (self.bidir | ((jB <= pos[r]) & in_win)))
            m.d.comb += visC[r].eq(delay(m, vis, b_lat + 2, name=f"vis{r}_d"))
            # rshift_round(v, s) = ((v >> (s - 1)) + 1) >> 1, and v = ((2v + 1) >> 1) for s = 0
            # (shift - 1 and shift == 0 registered: the tile's shift is constant while words are
            # in the pipeline, and changes many cycles before the next word reaches this stage)
            sm1 = Signal(max(1, MAX_SHIFT.bit_length()), name=f"sm1_{r}")
            s_zero = Signal(name=f"s_zero{r}")
            m.d.sync += [sm1.eq((shift[r] - 1)[:len(sm1)]), s_zero.eq(shift[r] == 0)]
            # the shift in two registered steps, by the multiple of 8 and then by the rest (one
            # 64-way shifter of a 50-bit product was seven LUT levels)
            coarse = Signal(signed(sbits + MULT_BITS + 2), name=f"zco{r}")
            fine = Signal(3, name=f"zfine{r}")
            m.d.sync += [coarse.eq(Mux(s_zero, prod << 1, prod >> Cat(Const(0, 3), sm1[3:]))),
                         fine.eq(Mux(s_zero, 0, sm1[:3]))]
            sh = Signal(signed(sbits + MULT_BITS + 2), name=f"zsh{r}")
            m.d.sync += sh.eq(coarse >> fine)
            # the rounding's saturation tested on sh itself, beside the add (zr > ZMAX iff
            # sh > 2 ZMAX, zr < ZMIN iff sh < 2 ZMIN - 1), which then needs only z's bits:
            # zr = (sh + 1) >> 1 and its low Z_BITS bits from sh's low Z_BITS + 1
            zr = Signal(Z_BITS + 1, name=f"zr{r}")
            m.d.comb += zr.eq((sh[:Z_BITS + 1] + 1) >> 1)
            m.d.sync += zC[r].eq(Mux(sh > 2 * ZMAX, ZMAX, Mux(sh < 2 * ZMIN - 1, ZMIN, zr[:Z_BITS])))
        # a new tile's Q, mult and shift wait until no word of the last one is in the pipeline;
        # a new segment starts only when no segment ending in its bank is on its way to stage C
        # (which marks the bank full), so a segment never writes a bank still waiting to be marked
        # (both flags registered, from what the delay lines will hold next cycle: chain[i] moves
        # to chain[i + 1], the last of chain to chainB[0] if it ends a segment, chainB[i] to
        # chainB[i + 1]; an ending segment per bank, so the flag is one mux by bank_a): the
        # pipeline's OR stays off the word handshake
        # ``taken`` is the same OR with the bank's full flag as it will be (set by stage C now; a
        # probability stage freeing the bank this cycle is seen a cycle later: one cycle of reuse)
        to_b = ca.v & ca.last
        m.d.sync += in_flight.eq(Cat(*(c.v for c in chain[:-1]), to_b, *(c.v for c in chainB[:-1])).any())
        for b in range(NB):
            m.d.sync += taken[b].eq(Cat(*(c.v & c.last & c.seg_last & (c.bank == b) for c in chain[:-1]),
                                        to_b & ca.seg_last & (ca.bank == b),
                                        *(c.v & c.last & (c.bank == b) for c in chainB[:-1]),
                                        full[b], cC.v & cC.last & (cC.bank == b)).any())

        # -- stage C: bank write, block max, segment bookkeeping -----------------------------
        bmax = [Signal(signed(Z_BITS), name=f"bmax{r}") for r in range(rows)]
        bany = [Signal(name=f"bany{r}") for r in range(rows)]
        run_m = [Signal(signed(Z_BITS), name=f"run_m{r}") for r in range(rows)]
        run_e = [Signal(name=f"run_e{r}") for r in range(rows)]
        # per bank: previous / new running max, emptiness, token count, first segment of a tile
        meta_prev = [[Signal(signed(Z_BITS), name=f"prev{b}_{r}") for r in range(rows)] for b in range(NB)]
        meta_new = [[Signal(signed(Z_BITS), name=f"new{b}_{r}") for r in range(rows)] for b in range(NB)]
        meta_pe = [[Signal(name=f"pe{b}_{r}") for r in range(rows)] for b in range(NB)]
        meta_ne = [[Signal(name=f"ne{b}_{r}") for r in range(rows)] for b in range(NB)]
        meta_n = [Signal(range(page_tokens + 1), name=f"n{b}") for b in range(NB)]
        meta_tf = [Signal(name=f"tf{b}") for b in range(NB)]

        m.d.comb += [bw.addr.eq(Cat(tC, bankC) if page_tokens > 1 else Cat(Const(0, 0), bankC)),
                     bw.data.eq(Cat(*(Cat(zC[r], visC[r]) for r in range(rows)))), bw.en.eq(vC)]
        for r in range(rows):
            fresh = tC == 0
            cur_any = Mux(fresh, 0, bany[r])
            nany = cur_any | visC[r]
            # the three compares side by side (not nmax's compare, then nmax against run_m)
            take_z = ~cur_any | (visC[r] & (zC[r] > bmax[r]))
            nmax = Mux(take_z, zC[r], bmax[r])
            nmax_gt_run = Mux(take_z, zC[r] > run_m[r], bmax[r] > run_m[r])
            with m.If(vC):
                m.d.sync += [bany[r].eq(nany), bmax[r].eq(nmax)]
                with m.If(lastC):
                    re = firstC | run_e[r]
                    new_e = re & ~nany
                    new_m = Mux(nany & (re | nmax_gt_run), nmax, run_m[r])
                    m.d.sync += [run_m[r].eq(new_m), run_e[r].eq(new_e)]
                    for b in range(NB):
                        with m.If(bankC == b):
                            m.d.sync += [meta_prev[b][r].eq(run_m[r]), meta_pe[b][r].eq(re),
                                         meta_new[b][r].eq(new_m), meta_ne[b][r].eq(new_e)]
        with m.If(vC & lastC):
            for b in range(NB):
                with m.If(bankC == b):
                    m.d.sync += [full[b].eq(1), meta_n[b].eq(tC + 1), meta_tf[b].eq(firstC)]

        # -- probability stage ---------------------------------------------------------------
        # issue (bank read) -> X: d = m - z (or the alpha's m_new - m_prev), clamped, registered
        # -> Y: exp2 table read, registered -> Z: shift and round, registered -> FIFO write.
        # ``room`` counts the entries in flight (the bank read, X, Y and Z) so the FIFO never
        # overflows.
        DEPTH = 8
        m.submodules.pfifo = pf = StepFIFOBuffered(width=p_entry_layout(rows).size, depth=DEPTH)
        m.d.comb += [self.p.payload.eq(pf.r_data), self.p.valid.eq(pf.r_rdy), pf.r_en.eq(self.p.ready)]
        pb = Signal(range(NB))
        k = Signal(range(page_tokens + 1))
        alpha_done = Signal()
        inflight = Signal()
        fullP = Cat(*full).bit_select(pb, 1)
        # bank pb's token count registered, as it was the cycle before: it is read only once the
        # segment's rescale entry went (so pb has not changed since, and the bank was full)
        nP = Signal.like(meta_n[0])
        m.d.sync += nP.eq(Array(meta_n)[pb])
        tfP = Array(meta_tf)[pb]
        exps = []
        for r in range(rows):
            e = Exp2(Z_BITS + 1, registered=True)
            m.submodules[f"exp{r}"] = e
            exps.append(e)
        x_valid, x_alpha = Signal(), Signal()          # stage X holds d (the exp2 input)
        y_valid, y_alpha = Signal(), Signal()          # stage Y: the table read in flight
        z_valid = Signal()                             # stage Z: the rounded entry, registered
        x_zero = [Signal(name=f"x_zero{r}") for r in range(rows)]     # the entry is 0 (masked / first)
        x_one = [Signal(name=f"x_one{r}") for r in range(rows)]       # the entry is 1.0 (empty alpha)
        y_zero = [Signal(name=f"y_zero{r}") for r in range(rows)]
        y_one = [Signal(name=f"y_one{r}") for r in range(rows)]
        room = (pf.w_level + inflight + x_valid + y_valid + z_valid) < DEPTH
        entry = Signal(p_entry_layout(rows))
        entry_z = Signal(p_entry_layout(rows))
        issue = Signal()
        m.d.comb += issue.eq(fullP & alpha_done & (k < nP) & room)
        m.d.comb += br.addr.eq(Cat(k[:exact_log2(page_tokens)] if page_tokens > 1 else Const(0, 0), pb))
        m.d.sync += inflight.eq(issue)
        do_alpha = fullP & ~alpha_done & ~inflight & room
        with m.If(do_alpha):
            m.d.sync += alpha_done.eq(1)
        with m.If(issue):
            m.d.sync += k.eq(k + 1)
            with m.If(k == nP - 1):
                m.d.sync += [alpha_done.eq(0), k.eq(0), pb.eq(pb + 1)]
                for b in range(NB):
                    with m.If(pb == b):
                        m.d.sync += full[b].eq(0)
        m.d.sync += [x_valid.eq(inflight | do_alpha), x_alpha.eq(~inflight),
                     y_valid.eq(x_valid), y_alpha.eq(x_alpha)]
        for r in range(rows):
            # a token read uses the new max of the bank it was read from (pb of the cycle before:
            # the select registered, off the difference); the rescale entry the bank's now (it
            # may have been marked full this cycle)
            newP = Signal(signed(Z_BITS), name=f"newP{r}")
            m.d.sync += newP.eq(Array(meta_new[b][r] for b in range(NB))[pb])
            newA = Array(meta_new[b][r] for b in range(NB))[pb]
            prevA = Array(meta_prev[b][r] for b in range(NB))[pb]
            emptyA = Array(meta_pe[b][r] | meta_ne[b][r] for b in range(NB))[pb]
            zr = br.data[r * ew:r * ew + Z_BITS].as_signed()
            vr = br.data[r * ew + Z_BITS]
            dd = Signal(signed(Z_BITS + 2), name=f"dd{r}")
            dq = Signal(Z_BITS + 1, name=f"dq{r}")
            with m.If(inflight):
                m.d.comb += dd.eq(newP - zr)
                m.d.sync += [x_zero[r].eq(~vr), x_one[r].eq(0)]
            with m.Else():
                m.d.comb += dd.eq(newA - prevA)
                m.d.sync += [x_zero[r].eq(tfP), x_one[r].eq(~tfP & emptyA)]
            m.d.sync += [dq.eq(Mux(dd < 0, 0, dd[:Z_BITS + 1])), y_zero[r].eq(x_zero[r]), y_one[r].eq(x_one[r])]
            m.d.comb += [exps[r].d.eq(dq),
                         entry.vals[r].eq(Mux(y_zero[r], 0, Mux(y_one[r], 1 << P_FRAC, exps[r].p)))]
        m.d.comb += entry.alpha.eq(y_alpha)
        m.d.sync += [entry_z.eq(entry), z_valid.eq(y_valid)]
        m.d.comb += [pf.w_data.eq(entry_z), pf.w_en.eq(z_valid)]
        return m
