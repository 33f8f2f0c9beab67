"""Value unit: P.V accumulation into a rotating accumulator ring (one slot of ``int8_lanes`` head
dims per int8 word), the softmax denominator, and the output stage (``acc * reciprocal(l)``,
int32 rows to the writer).

The ring holds ``slots = head_dim / int8_lanes`` slots per row; every V value word updates the
slot(s) it covers at the head of the ring (``slots_per_word`` for int4) and rotates, so no
address decoding is needed. The first token of a segment applies the segment's rescale factor
``alpha`` to each slot as it passes (``alpha = 0`` on a tile's first segment clears the ring
without a separate pass).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...engines.attention import OUT_FRAC, P_FRAC, RECIP_X_BITS
from ...mathutil import exact_log2
from ..matmul.pipe import delay
from ..products import carry_save_sum
from ..streams import dma_command_stream
from .geometry import DatapathGeometry
from .recip import Reciprocal
from .score import p_entry_layout

__all__ = ["ValueUnit", "out_tile_layout"]


def out_tile_layout(rows: int) -> data.StructLayout:
    """Where a tile's rows go: ``nv`` valid rows, row index ``ri = pos_idx * q_heads + head``."""
    return data.StructLayout({"nv": range(rows + 1), "ri": data.ArrayLayout(32, rows)})


def _rescale(m: Module, v, alpha, bits: int, *, name: str) -> Signal:
    """``rshift_round(v * alpha, 15)`` (``bits`` wide) over two registered stages: ``v`` split at
    bit 15 (and at 32 when wider) into products of one DSP tile each, then their shifted sum rounded.
    Exact: ``hi * alpha + ((lo * alpha + 2^14) >> 15)`` is ``(hi * alpha * 2^15 + lo * alpha
    + 2^14) >> 15`` since the first term has no bits below 15. The rounding constant sits in the
    zero low bits of a shifted product, so the second stage is one carry chain (three products:
    a carry-save layer in front of it, which a bit's LUT absorbs)."""
    mid_bits = 17
    hi_bits = len(v) - P_FRAC
    n = bits + P_FRAC                       # the sum's bits that reach ``out``
    lo = v[:P_FRAC]
    p_lo = Signal(P_FRAC + len(alpha), name=f"{name}_plo", reset_less=True)
    m.d.sync += p_lo.eq(lo * alpha)
    p_hi = Signal(signed(hi_bits + len(alpha) + 1), name=f"{name}_phi", reset_less=True)
    half = 1 << (P_FRAC - 1)
    if hi_bits <= mid_bits + 1:              # hi fits one tile
        m.d.sync += p_hi.eq(v[P_FRAC:].as_signed() * alpha)
        total = ((p_hi << P_FRAC) | half) + p_lo
    else:
        mid, top = v[P_FRAC:P_FRAC + mid_bits], v[P_FRAC + mid_bits:].as_signed()
        p_mid = Signal(mid_bits + len(alpha), name=f"{name}_pmid", reset_less=True)
        m.d.sync += [p_mid.eq(mid * alpha), p_hi.eq(top * alpha)]
        total = carry_save_sum(m, [p_hi << (P_FRAC + mid_bits), (p_mid << P_FRAC) | half, p_lo], n, name=name)
    out = Signal(bits, name=name, reset_less=True)
    m.d.sync += out.eq(total[P_FRAC:n])
    return out


class ValueUnit(wiring.Component):
    #: registered stages of the output multiply (the ring head, the products, their sum, the
    #: shift, the rounding, the saturation)
    OUT_STAGES = 6
    #: cycles from a take (item and probabilities accepted) to its ring and denominator update
    UPDATE_DELAY = 3
    #: registered stages of the ring's rescale (``acc * alpha``): the ring lane that will be at the
    #: head is read this many cycles before its update (the read lane registered at the DSPs' input,
    #: then the products, then their sum); the denominator's rescale reads ``l`` two cycles ahead
    RESCALE_STAGES = 3

    def __init__(self, geometry: DatapathGeometry):
        self._geom = geometry
        rows, W = geometry.rows, geometry.data_width
        super().__init__({
            "item": In(stream.Signature(geometry.item_layout())),
            **({"row_data": In(data.ArrayLayout(geometry.row_data_layout(), rows))}
               if geometry.head_parallel else {}),
            "seg": In(geometry.seg_layout()),
            "bits4": In(1),
            "p": In(stream.Signature(p_entry_layout(rows))),
            "tile": In(stream.Signature(out_tile_layout(rows))),
            "o_addr": In(64),
            "out_cmd": Out(dma_command_stream()),
            "out_data": Out(stream.Signature(W)),
            "tile_done": Out(1),
            "fire": Out(1),
            "updating": Out(1),        # a take's ring update is still to come
        })

    def elaborate(self, platform):
        m = Module()
        geom = self._geom
        rows, slots, int8_lanes, W = geom.rows, geom.slots, geom.int8_lanes, geom.data_width
        acc_bits, l_bits = geom.acc_bits, geom.l_bits
        it = self.item.payload
        step4 = geom.slots_per_word            # ring slots an int4 word updates

        ring = [[Signal(int8_lanes * acc_bits, name=f"acc{r}_{s}") for s in range(slots)] for r in range(rows)]
        lreg = [Signal(l_bits, name=f"l{r}") for r in range(rows)]
        alpha = [Signal(P_FRAC + 1, name=f"alpha{r}") for r in range(rows)]
        have_alpha = Signal()
        resc = Signal()
        hold = Signal()

        def lane(r, s, i):
            return ring[r][s][i * acc_bits:(i + 1) * acc_bits].as_signed()

        # -- P.V -----------------------------------------------------------------------------
        # a segment's first take comes at least RESCALE_STAGES + 1 cycles after the last take of
        # the segment before when a word covers the whole ring (its rescale reads the ring that many
        # cycles ahead, below, the lane the segment before's last update still writes), else
        # RESCALE_STAGES: the lane read is then not the one that update writes (it has rotated by
        # one word since), and the denominator's rescale reads l two cycles ahead only
        seg_gap = Signal(range(self.RESCALE_STAGES))
        one_word_ring = geom.select_format(self.bits4, int4=int(step4 >= slots), int8=int(slots == 1))
        with m.If(seg_gap != 0):
            m.d.sync += seg_gap.eq(seg_gap - 1)
        with m.If(~have_alpha & ~hold & (seg_gap == 0)):
            m.d.comb += self.p.ready.eq(self.p.valid & self.p.payload.alpha)
            with m.If(self.p.valid & self.p.payload.alpha):
                m.d.sync += [have_alpha.eq(1), resc.eq(1)]
                m.d.sync += [alpha[r].eq(self.p.payload.vals[r]) for r in range(rows)]
        m.d.comb += self.item.ready.eq(have_alpha & ~hold & self.p.valid & ~self.p.payload.alpha)
        take = self.item.valid & self.item.ready
        m.d.comb += self.fire.eq(take)
        with m.If(take & it.last):
            m.d.comb += self.p.ready.eq(1)
            m.d.sync += resc.eq(0)
            with m.If(it.seg_last):
                m.d.sync += [have_alpha.eq(0),
                             seg_gap.eq(Mux(one_word_ring, self.RESCALE_STAGES - 1, self.RESCALE_STAGES - 2))]
                with m.If(self.seg.tile_last):
                    m.d.sync += hold.eq(1)
        # The ring and denominator update runs UPDATE_DELAY cycles after the take, from registers
        # only: stage 1 registers the take's lanes, mantissas and probabilities, stage 2 the
        # scale-block mantissa times each value lane (per row on a head-parallel engine: row r's
        # own port group's V word), stage 3 their product by the probability; the rescaled ring
        # head (``shadow``) and denominator (``lshadow``) are computed the cycles before from the
        # ring as it will be. The update is then a mux and one add. Exact: the slots a segment
        # rescales are unchanged since the segment before, and two segments' takes are at least
        # three cycles apart (alpha is loaded between them).
        def mant_times_lanes(src, tag):
            d = Signal(geom.row_data_layout(), name=f"vd{tag}", reset_less=True)
            m.d.sync += [d.lanes.eq(src.lanes), d.mants.eq(src.mants)]
            src = d
            out = []
            for i in range(geom.lanes):
                s = Signal(signed(26), name=f"vv{tag}{i}", reset_less=True)
                m.d.sync += s.eq(geom.lane_product(src.mants[i // geom.block_lanes], src.lanes[i], mantissa=True))
                out.append(s)
            return out
        if geom.head_parallel:
            vv_rows = [mant_times_lanes(self.row_data[r], f"{r}_") for r in range(rows)]
        else:
            vv_rows = [mant_times_lanes(it, "")] * rows
        takes = [take]                    # the take and its pending updates, one register each
        for d in range(self.UPDATE_DELAY):
            takes.append(delay(m, takes[-1], 1, name=f"u_take{d}"))
        u_take = takes[-1]
        m.d.comb += self.updating.eq(Cat(*takes).any())
        u_first = delay(m, it.first, self.UPDATE_DELAY, name="u_first")
        u_resc = delay(m, resc, self.UPDATE_DELAY, name="u_resc")
        u_bits4 = delay(m, self.bits4, self.UPDATE_DELAY, name="u_bits4")
        rotate = Signal()          # output stage: rotate every ring by one slot
        # the updates this cycle and the next two (the ring's rescale reads three cycles ahead)
        n_steps = Signal(2)
        m.d.comb += n_steps.eq(u_take + takes[-2] + takes[-3])
        for r in range(rows):
            p0 = Signal(P_FRAC + 1, name=f"u_p0{r}", reset_less=True)
            m.d.sync += p0.eq(self.p.payload.vals[r])
            p1 = delay(m, p0, 1, name=f"u_p{r}", reset_less=True)
            pr = delay(m, p1, 1, name=f"u_pr{r}", reset_less=True)
            lshadow = _rescale(m, lreg[r], alpha[r], l_bits, name=f"lshadow{r}")
            upd = []
            for s in range(step4):
                lanes = []
                for li in range(int8_lanes):
                    i = s * int8_lanes + li
                    pv = Signal(acc_bits, name=f"pv{r}_{i}", reset_less=True)
                    m.d.sync += pv.eq(p1 * vv_rows[r][i])
                    # the lane that will be at the ring head three cycles later: the updates of
                    # this cycle and the next two (u_take, takes[-2], takes[-3]) each rotate the
                    # ring; registered (the DSPs' input register), then rescaled in two stages
                    def ahead(k):
                        return geom.select_format(u_bits4, int4=lane(r, (s + k * step4) % slots, li),
                                                  int8=lane(r, (s + k) % slots, li))
                    nxt = Signal(signed(acc_bits), name=f"nxt{r}_{i}", reset_less=True)
                    m.d.sync += nxt.eq(Mux(n_steps[1], Mux(n_steps[0], ahead(3), ahead(2)),
                                           Mux(n_steps[0], ahead(1), ahead(0))))
                    shadow = _rescale(m, nxt, alpha[r], acc_bits, name=f"shadow{r}_{i}")
                    base = Mux(u_resc, shadow, lane(r, s, li))
                    lanes.append((base + pv)[:acc_bits])
                upd.append(Cat(*lanes))
            with m.If(u_take):
                with m.If(u_first):
                    l_prev = Mux(u_resc, lshadow, lreg[r])
                    m.d.sync += lreg[r].eq(l_prev + pr)
                for s in range(slots):
                    def after(kk):
                        src = (s + kk) % slots
                        return upd[src] if src < kk else ring[r][src]
                    m.d.sync += ring[r][s].eq(geom.select_format(u_bits4, int4=after(step4), int8=after(1)))
            with m.Elif(rotate):
                for s in range(slots):
                    m.d.sync += ring[r][s].eq(ring[r][(s + 1) % slots])

        # -- output stage ----------------------------------------------------------------------
        # Per row: its command with its reciprocal (y, n), then each slot of the ring head through
        # the OUT_STAGES-deep multiply into ``obuf`` and out. ``crow`` is the row whose command
        # goes next: its reciprocal is computed while the row before is written, and its command
        # (and its y, n and ring head, into the multiply) goes while that row's last slot leaves
        # ``obuf``, so a row starts OUT_STAGES cycles after the one before, not after its reciprocal.
        tile = self.tile.payload
        row = Signal(range(rows))
        row_sel = row if rows > 1 else 0                          # picks the row's ring head
        crow = Signal(range(rows + 1))
        crow_sel = crow[:exact_log2(rows)] if rows > 1 else 0     # picks the next row's l and ri
        more = Signal()             # crow < tile.nv, a flip-flop (set where crow is)
        in_last = Signal()          # obuf holds a row's last slot and the next row's command is due
        early = Signal()            # that command went while the slot is still leaving obuf
        slot = Signal(range(max(2, slots)))
        m.submodules.recip = recip = Reciprocal(l_bits)
        # the row's denominator registered after the row mux (the mux stays out of the reciprocal's
        # leading-zero count): the reciprocal follows a row change a cycle later
        lsel = Signal(l_bits)
        m.d.sync += lsel.eq(Cat(*lreg).word_select(crow_sel, l_bits))
        recip_wait = Reciprocal.LATENCY + 1
        m.d.comb += recip.l.eq(lsel)
        y = Signal(RECIP_X_BITS + 1)
        n = Signal(range(l_bits + 1))
        head = Signal(int8_lanes * acc_bits)
        m.d.comb += head.eq(Cat(*(ring[r][0] for r in range(rows))).word_select(row_sel, int8_lanes * acc_bits))
        words = int8_lanes * 32 // W
        obuf = Signal(int8_lanes * 32)
        left = Signal(range(words + 1))
        row_bytes = geom.out_row_bytes
        m.d.comb += [self.out_cmd.payload.addr.eq(self.o_addr + (tile.ri[crow_sel] << exact_log2(row_bytes))),
                     self.out_cmd.payload.bytes.eq(row_bytes),
                     self.out_data.payload.eq(obuf[:W])]
        shm1 = Signal(range(l_bits + 16))
        m.d.sync += shm1.eq(n + 15 - OUT_FRAC)       # the shift reads it three cycles after n loads
        # acc * y in OUT_STAGES registered stages: the row's ring head (a register: the row mux
        # stays out of the DSP's input), one-tile products (the accumulator in 17-bit pieces, the
        # top one signed and at most 18 bits, each times the 18-bit y), their sum (one carry chain
        # behind a carry-save layer), the shift, the rounding, then the saturation
        cuts = geom.out_cuts
        stage_out = []
        head_r = Signal.like(head)
        m.d.sync += head_r.eq(head)
        for li in range(int8_lanes):
            a = head_r[li * acc_bits:(li + 1) * acc_bits]
            parts = []
            for k, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
                top = hi == acc_bits
                p = Signal(signed(hi - lo + RECIP_X_BITS + 2) if top else hi - lo + RECIP_X_BITS + 1,
                           name=f"op{k}_{li}")
                m.d.sync += p.eq((a[lo:hi].as_signed() if top else a[lo:hi]) * y)
                parts.append(p << lo)
            prod = Signal(signed(acc_bits + RECIP_X_BITS + 2), name=f"oprod{li}")
            m.d.sync += prod.eq(carry_save_sum(m, parts, len(prod), name=f"oprod{li}"))
            sh = Signal(signed(acc_bits + RECIP_X_BITS + 2), name=f"osh{li}")
            m.d.sync += sh.eq(prod >> shm1)
            v = Signal(signed(len(sh)), name=f"oround{li}")
            m.d.sync += v.eq((sh + 1) >> 1)
            o = Signal(32, name=f"oout{li}")
            m.d.sync += o.eq(Mux(v > (1 << 31) - 1, (1 << 31) - 1, Mux(v < -(1 << 31), -(1 << 31), v)))
            stage_out.append(o)
        outs = Cat(*stage_out)
        # cycles after a change of the ring head or y until outs follows it
        owait = Signal(range(self.OUT_STAGES + 1))
        rwait = Signal(range(recip_wait + 1))     # cycles until the row's reciprocal is out
        with m.If(owait != 0):
            m.d.sync += owait.eq(owait - 1)
        # rwait == 0 as a flip-flop beside the counter: the row's output command (into the data
        # port's writer) starts at a register, not at the counter's compare
        rwait_zero = Signal(init=1)
        with m.If(rwait != 0):
            m.d.sync += [rwait.eq(rwait - 1), rwait_zero.eq(rwait == 1)]
        # the command goes out from flip-flops and the state: rwait_zero, more, in_last
        cmd_go = Signal()
        m.d.comb += cmd_go.eq(self.out_cmd.valid & self.out_cmd.ready)
        with m.If(cmd_go):
            m.d.sync += [y.eq(recip.y), n.eq(recip.n), row.eq(crow_sel), crow.eq(crow + 1),
                         more.eq(crow + 1 != tile.nv), in_last.eq(0), owait.eq(self.OUT_STAGES),
                         rwait.eq(recip_wait), rwait_zero.eq(recip_wait == 0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(hold & self.tile.valid & ~self.updating):
                    m.d.sync += [crow.eq(0), more.eq(tile.nv != 0), rwait.eq(recip_wait),
                                 rwait_zero.eq(recip_wait == 0)]
                    m.next = "CMD"
            with m.State("CMD"):
                with m.If(~more):
                    m.d.comb += [self.tile.ready.eq(1), self.tile_done.eq(1)]
                    m.d.sync += hold.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    # the row's command goes out with its reciprocal
                    m.d.comb += self.out_cmd.valid.eq(rwait_zero)
                    with m.If(cmd_go):
                        m.d.sync += slot.eq(0)
                        m.next = "SLOT"
            with m.State("SLOT"):
                with m.If(owait == 0):
                    m.d.sync += [obuf.eq(outs), left.eq(words), owait.eq(self.OUT_STAGES),
                                 in_last.eq(slot == slots - 1)]
                    m.d.comb += rotate.eq(1)
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.out_data.valid.eq(1)
                # the next row's command while this row's last slot leaves obuf
                m.d.comb += self.out_cmd.valid.eq(in_last & more & rwait_zero)
                with m.If(cmd_go):
                    m.d.sync += early.eq(1)
                with m.If(self.out_data.ready):
                    m.d.sync += [obuf.eq(obuf >> W), left.eq(left - 1)]
                    with m.If(left == 1):
                        with m.If(slot == slots - 1):
                            m.d.sync += [in_last.eq(0), early.eq(0)]
                            with m.If(early | cmd_go):
                                # the next row's command went (or goes now): its first slot next
                                m.d.sync += slot.eq(0)
                                m.next = "SLOT"
                            with m.Else():
                                m.next = "CMD"
                        with m.Elif(owait == 0):
                            # the next slot's outputs are ready: load them now (no SLOT cycle)
                            m.d.sync += [slot.eq(slot + 1), obuf.eq(outs), left.eq(words),
                                         owait.eq(self.OUT_STAGES), in_last.eq(slot + 1 == slots - 1)]
                            m.d.comb += rotate.eq(1)
                        with m.Else():
                            m.d.sync += slot.eq(slot + 1)
                            m.next = "SLOT"
        return m
