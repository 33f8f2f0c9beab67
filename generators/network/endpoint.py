"""The ALLREDUCE endpoint: the ``network`` family's engine in the kernel.

Dataflow::

    job -> feeder: blocks in order, block b into slot b % w once that slot is free and fewer than
           ``inflight`` slots wait (w = min(window, blocks)) -> send queue
    send queue -> header (job, epoch, slot, the slot's round, block, words) -> header FIFO
               -> ``src_cmd`` (the block's words) -> ``src_data`` -> m_axis_net (header, words)
    timer scan (one slot per cycle): a slot waiting longer than ``timeout`` -> send queue again
               (``retries`` times at most, then NET_TIMEOUT); the feeder starved (every block sent,
               or the next block's slot waits) and a slot sent srtt + max(4 rttvar, srtt/4) ago
               -> send queue again (the tail timer: not a try); a slot sent FAST_RETRANSMIT_AFTER
               packets before one answered -> a PROBE (header only) for it: the slot is then
               suspect and leaves the ``inflight`` count; a suspect slot is probed again that
               answer time after its last probe or the last STATUS for it (not a try)
    answer time: each result of a block sent once (Karn) updates srtt and rttvar (RFC 6298)
    s_axis_net -> header rules, then: RESULT for a waiting slot, its round and block
               -> payload FIFO -> ``out_cmd``/``out_data`` (in place) ; the slot's round + 1 ;
                  its next block (block + window) -> send queue
               STATUS -> NET_HEARD, and when it lacks this worker: its block again, at once
               NACK -> the run ends with its code ; anything else dropped
    done: every block written back (every ``out_done`` seen), nothing left in flight

The slots' rounds are kept per job across jobs (memory ``rounds``): the switch pairs a
worker's packets by round, so they must continue where the last job of that job id stopped;
a RESET (mode 2) sets the switch's epoch for the job and clears the rounds here, and so does a
reset of the kernel (the memory is wiped before the first job is taken). A result is
written only after its whole packet arrived with the right length (store and forward), so
a bad packet never reaches memory.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory

from hbmforge.encodings import ErrorCode, NetMode
from hbmforge.engines.network import (FAST_RETRANSMIT_AFTER, HEADER_BITS, PAYLOAD_TYPES, RTT_BITS, NackReason,
                                      PacketType, endpoint_header_rules)
from hbmforge.layout import DesignLayout
from hbmforge.mathutil import ceil_div, exact_log2

from ..engine import RtlOps
from .packet import HEADER_LAYOUT, header_check, header_fields, rule_fails
from .signature import network_signature

__all__ = ["NetworkEngine"]


class NetworkEngine(wiring.Component):
    """The ALLREDUCE engine of a :class:`~hbmforge.layout.DesignLayout` with a ``network`` engine."""

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        cfg = layout.config.engine("network")
        if cfg is None:
            raise ValueError(f"config {layout.config.name!r} has no network engine")
        self._layout = layout
        self._cfg = cfg
        super().__init__(network_signature(layout))

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    def elaborate(self, platform):
        m = Module()
        lay, eng = self._layout, self._cfg
        W, WB, P, WM, J = lay.config.data_width, lay.word_bytes, eng.packet_words, eng.window, eng.jobs
        H = ceil_div(HEADER_BITS, W)
        pbits, wbb, pbb = exact_log2(P), exact_log2(WB), exact_log2(P * WB)
        sw = max(1, exact_log2(WM))                  # slot index bits
        jw = exact_log2(J)

        # -- the job ----------------------------------------------------------------------------
        busy = Signal()
        mode = Signal(NetMode)
        job = Signal(range(J))
        me = Signal(4)
        members = Signal(16)
        epoch = Signal(8)
        addr = Signal(64)
        blocks = Signal(33)
        last_words = Signal(range(P + 1))
        win = Signal(range(WM + 1))
        timeout = Signal(24)
        retries = Signal(8)
        fault = Signal(ErrorCode)
        failing = fault != 0
        received = Signal(33)
        now = Signal(32)
        m.d.sync += now.eq(now + 1)
        axi_error = Signal()

        def block_words(b):
            return Mux(b == blocks - 1, last_words, P)

        # per slot: waiting for a result, queued to send, block, when its data was last sent, when
        # the timeout started (the last send but a tail resend), retransmissions, probed as
        # overtaken (then it no longer counts in ``inflight``)
        pend = Array(Signal(name=f"pend{i}") for i in range(WM))
        queued = Array(Signal(name=f"queued{i}") for i in range(WM))
        blk = Array(Signal(32, name=f"blk{i}") for i in range(WM))
        st = Array(Signal(32, name=f"st{i}") for i in range(WM))
        tt = Array(Signal(32, name=f"tt{i}") for i in range(WM))
        tries = Array(Signal(8, name=f"tries{i}") for i in range(WM))
        suspect = Array(Signal(name=f"suspect{i}") for i in range(WM))
        # a suspect slot's last probe, or the last STATUS for it since: its re-probe timer
        pt = Array(Signal(32, name=f"pt{i}") for i in range(WM))
        # the answer time of blocks sent once (Karn), smoothed, and its mean deviation (RFC 6298),
        # for the tail timer
        srtt = Signal(RTT_BITS)
        rttvar = Signal(RTT_BITS)
        srtt_ok = Signal()

        # the rounds of every (job, slot), kept across jobs
        m.submodules.rounds = rounds = Memory(shape=8, depth=J * WM, init=[])
        rnd_tx = rounds.read_port(domain="comb")
        rnd_rx = rounds.read_port(domain="comb")
        rnd_wr = rounds.write_port()

        def rkey(slot):
            return Cat(slot[:sw] if WM > 1 else Const(0, 0), job) if jw else (slot[:sw] if WM > 1 else Const(0, 1))

        j = self.job.payload
        next_block = Signal(33)                      # the next block to feed
        feed_slot = Signal(range(WM))                # its slot: next_block % win, kept by counting
        inflight = Signal(range(WM + 1))
        nbusy = Signal(range(WM + 1))                # slots waiting for a result
        seq = Signal(32)                             # packets sent (the send order)
        answered = Signal(32)                        # the latest send order answered (first sends only)
        sent_at = Array(Signal(32, name=f"sent_at{i}") for i in range(WM))
        clean = Array(Signal(name=f"clean{i}") for i in range(WM))
        clearing = Signal(range(WM + 1))
        reset_acked = Signal()
        # after reset every round is cleared (one entry per cycle) before the first job is taken:
        # a reset endpoint starts like a new one, at round 0 of every slot
        wiping = Signal(range(J * WM + 1))
        wiped = Signal()
        m.d.comb += wiped.eq(wiping == J * WM)
        with m.If(~wiped):
            m.d.sync += wiping.eq(wiping + 1)
        m.d.comb += self.job.ready.eq(~busy & wiped)
        with m.If(self.job.valid & ~busy & wiped):
            nbytes = j.bytes
            nblocks = (nbytes + (P * WB - 1)) >> pbb
            words = nbytes >> wbb
            is_reset = j.mode == NetMode.RESET
            m.d.sync += [busy.eq(1), mode.eq(j.mode), job.eq(j.job), me.eq(j.worker), members.eq(j.members),
                         epoch.eq(j.epoch), addr.eq(j.addr), blocks.eq(Mux(is_reset, 1, nblocks)), timeout.eq(j.timeout),
                         retries.eq(j.retries), fault.eq(0), received.eq(0), reset_acked.eq(0),
                         next_block.eq(0), feed_slot.eq(0), nbusy.eq(0), answered.eq(seq - 1),
                         inflight.eq(Mux(is_reset, 1, Mux(j.inflight < nblocks, j.inflight, nblocks))),
                         clearing.eq(0), axi_error.eq(0), srtt_ok.eq(0),
                         last_words.eq(Mux(words[:pbits] == 0, P, words[:pbits]) if pbits else 1),
                         win.eq(Mux(is_reset, 1, Mux(j.window < nblocks, j.window, nblocks)))]
            for i in range(WM):
                m.d.sync += [pend[i].eq(0), queued[i].eq(0), tries[i].eq(0), suspect[i].eq(0)]

        # -- counters --------------------------------------------------------------------------
        ctr = {name: Signal(32, name=name) for name in
               ("net_packets", "net_retransmits", "net_results", "net_duplicates", "net_bad_packets", "net_heard")}
        inc = {name: Signal(name=f"{name}_inc") for name in ctr}
        for name, reg in ctr.items():
            m.d.comb += getattr(self, name).eq(reg)
            if name != "net_heard":
                with m.If(self.clear):
                    m.d.sync += reg.eq(0)
                with m.Elif(inc[name]):
                    m.d.sync += reg.eq(reg + 1)
        heard_set = Signal()
        heard_val = Signal(16)
        with m.If(self.clear):
            m.d.sync += ctr["net_heard"].eq(0)
        with m.Elif(heard_set):
            m.d.sync += ctr["net_heard"].eq(heard_val)

        # -- the send queue: one entry per slot at most (``queued``) -----------------------------
        # entries: (slot, kind) with kind 0 a block's first send, 1 a retransmission, 2 a PROBE,
        # 3 a retransmission by the tail timer (the timeout keeps running)
        K_FIRST, K_AGAIN, K_PROBE, K_TAIL = 0, 1, 2, 3
        m.submodules.sendq = sendq = SyncFIFO(width=sw + 2, depth=max(2, WM))
        rx_enq = Signal()                            # the switch misses this worker's block (a STATUS)
        rx_enq_slot = Signal(range(WM))
        feed_go = Signal()
        scan_go = Signal()
        scan_kind = Signal(2)
        scan = Signal(range(WM))
        with m.If(rx_enq):
            m.d.comb += [sendq.w_en.eq(1), sendq.w_data.eq(Cat(rx_enq_slot, Const(K_AGAIN, 2)))]
        with m.Elif(feed_go):
            m.d.comb += [sendq.w_en.eq(1), sendq.w_data.eq(Cat(feed_slot, Const(K_FIRST, 2)))]
        with m.Elif(scan_go):
            m.d.comb += [sendq.w_en.eq(1), sendq.w_data.eq(Cat(scan, scan_kind))]

        commit = Signal()                            # a whole good RESULT is taken (receive side)
        c_slot = Signal(range(WM))                   # ... for this slot

        running = busy & ~failing & ~reset_acked
        freed = Signal()                             # a result freed a counted slot this cycle
        lost_go = Signal()                           # the scan took a slot out of the count
        m.d.comb += feed_go.eq(running & (nbusy < inflight) & (next_block < blocks) & ~pend[feed_slot] & ~rx_enq)
        with m.If(feed_go):
            m.d.sync += [next_block.eq(next_block + 1), feed_slot.eq(Mux(feed_slot + 1 == win, 0, feed_slot + 1)),
                         pend[feed_slot].eq(1), queued[feed_slot].eq(1), blk[feed_slot].eq(next_block),
                         tries[feed_slot].eq(0), suspect[feed_slot].eq(0)]
        with m.If(~(self.job.valid & self.job.ready)):     # a new job starts at 0 (set above)
            m.d.sync += nbusy.eq(nbusy + feed_go - freed - lost_go)

        # the timer scan, one slot per cycle: ``timeout`` cycles since the timer started -> sent
        # again (a try); sent well before a packet that got its answer -> probed (the slot is then
        # ``suspect``: no longer counted in ``inflight``). And the tail timer, once an answer time
        # was measured (its smoothed mean + max(4 x its mean deviation, mean / 4): RFC 6298's RTO
        # with a floor): a suspect slot that long after its last probe or the last STATUS for it
        # is probed again (a lost probe, STATUS or result costs that, not a timeout); while the
        # feeder is starved (every block sent, or the next block's slot still waits: no later
        # packet can reveal a loss) a slot whose block was sent that long ago is sent again. Not
        # tries: the timeout keeps running.
        age = Signal(32)
        since = Signal(32)
        asked = Signal(32)
        ahead = Signal(32)
        m.d.comb += [age.eq(now - tt[scan]), since.eq(now - st[scan]), asked.eq(now - pt[scan]),
                     ahead.eq(answered - sent_at[scan])]
        starved = (next_block == blocks) | pend[feed_slot]
        tail = Signal(RTT_BITS + 3)
        margin = Signal(RTT_BITS + 2)
        m.d.comb += margin.eq(Mux((rttvar << 2) > (srtt >> 2), rttvar << 2, srtt >> 2))
        m.d.comb += tail.eq(srtt + margin)
        idle_slot = pend[scan] & ~queued[scan]
        expired = idle_slot & (age >= timeout)
        tail_due = idle_slot & srtt_ok & ~suspect[scan] & starved & (mode != NetMode.RESET) & (since >= tail)
        reprobe_due = idle_slot & srtt_ok & suspect[scan] & (mode != NetMode.RESET) & (asked >= tail)
        overtaken = (idle_slot & ~suspect[scan] & ~ahead[31] & (ahead >= FAST_RETRANSMIT_AFTER)
                     & (mode != NetMode.RESET))
        m.d.sync += scan.eq(Mux((scan == WM - 1) | (scan + 1 >= win), 0, scan + 1))
        with m.If(running & ~rx_enq & ~feed_go):
            with m.If(expired):
                with m.If(tries[scan] >= retries):
                    m.d.sync += fault.eq(ErrorCode.NET_TIMEOUT)
                with m.Else():
                    m.d.comb += [scan_go.eq(1), scan_kind.eq(K_AGAIN)]
                    m.d.sync += [tries[scan].eq(tries[scan] + 1), queued[scan].eq(1)]
            with m.Elif(reprobe_due):
                m.d.comb += [scan_go.eq(1), scan_kind.eq(K_PROBE)]
                m.d.sync += [queued[scan].eq(1), pt[scan].eq(now)]
            with m.Elif(tail_due):
                m.d.comb += [scan_go.eq(1), scan_kind.eq(K_TAIL)]
                m.d.sync += queued[scan].eq(1)
            with m.Elif(overtaken):
                m.d.comb += [scan_go.eq(1), scan_kind.eq(K_PROBE)]
                m.d.sync += [queued[scan].eq(1), suspect[scan].eq(1), pt[scan].eq(now)]
                # (a result committed for this very slot this cycle already frees it)
                m.d.comb += lost_go.eq(~(commit & (c_slot == scan)))

        # -- sending: pop a slot, read its block, send header then words -------------------------
        tx_entry = data.StructLayout({"hdr": HEADER_LAYOUT, "words": range(P + 1)})
        m.submodules.hdrq = hdrq = SyncFIFOBuffered(width=tx_entry.size, depth=max(2, eng.read_ahead))
        cmd_pending = Signal()
        cmd_hdr = Signal(tx_entry)
        popped = Signal(range(WM))
        m.d.comb += popped.eq(sendq.r_data[:sw] if WM > 1 else 0)
        kind = sendq.r_data[sw:sw + 2]
        retx = kind != K_FIRST
        probe = (kind == K_PROBE) | (mode == NetMode.RESET)
        body = Signal(HEADER_LAYOUT)
        hdr = Signal(HEADER_LAYOUT)
        m.d.comb += [Value.cast(hdr).eq(Value.cast(body)), hdr.check.eq(header_check(Value.cast(body)))]
        pop_block = blk[popped]
        pop_words = Signal(range(P + 1))
        m.d.comb += [rnd_tx.addr.eq(rkey(popped)), pop_words.eq(block_words(pop_block)),
                     body.type.eq(Mux(mode == NetMode.RESET, PacketType.RESET,
                                      Mux(kind == K_PROBE, PacketType.PROBE, PacketType.DATA))),
                     body.op.eq(Mux(mode == NetMode.RESET, 0, mode)), body.job.eq(job), body.worker.eq(me),
                     body.round.eq(Mux(mode == NetMode.RESET, 0, rnd_tx.data)), body.epoch.eq(epoch),
                     body.slot.eq(Mux(mode == NetMode.RESET, 0, popped)),
                     body.count.eq(Mux(probe, 0, pop_words)),
                     body.offset.eq(Mux(mode == NetMode.RESET, 0, pop_block)), body.members.eq(members)]
        can_pop = sendq.r_rdy & ~cmd_pending & hdrq.w_rdy
        with m.If(can_pop & (failing | ~busy)):
            m.d.comb += sendq.r_en.eq(1)                  # a failed job sends nothing more
        with m.Elif(can_pop):
            m.d.comb += sendq.r_en.eq(1)
            m.d.sync += queued[popped].eq(0)
            header_only = hdrq.w_data.eq(Cat(Value.cast(hdr), Const(0, Shape.cast(range(P + 1)).width)))
            with m.If(mode == NetMode.RESET):
                m.d.sync += tt[popped].eq(now)
                m.d.comb += [hdrq.w_en.eq(1), header_only, inc["net_packets"].eq(1),
                             inc["net_retransmits"].eq(retx)]
            with m.Elif(pend[popped]):
                m.d.sync += [seq.eq(seq + 1), clean[popped].eq(kind == K_FIRST)]
                m.d.comb += inc["net_packets"].eq(1)
                with m.If(kind == K_PROBE):       # the timers keep running; the block's send order stays
                    m.d.comb += [hdrq.w_en.eq(1), header_only]
                with m.Else():
                    m.d.sync += [sent_at[popped].eq(seq), st[popped].eq(now), cmd_pending.eq(1),
                                 Value.cast(cmd_hdr).eq(Cat(Value.cast(hdr), pop_words))]
                    with m.If(kind != K_TAIL):
                        m.d.sync += tt[popped].eq(now)
                    m.d.comb += inc["net_retransmits"].eq(retx)
        cmd_view = cmd_hdr
        m.d.comb += [self.src_cmd.valid.eq(cmd_pending),
                     self.src_cmd.payload.addr.eq(addr + (cmd_view.hdr.offset << pbb)),
                     self.src_cmd.payload.bytes.eq(cmd_view.words << wbb)]
        with m.If(self.src_cmd.valid & self.src_cmd.ready):
            m.d.sync += cmd_pending.eq(0)
            m.d.comb += [hdrq.w_en.eq(1), hdrq.w_data.eq(Value.cast(cmd_hdr))]

        # the serializer
        tx_cur = Signal(tx_entry)
        tx_beat = Signal(range(H))
        tx_left = Signal(range(P + 1))
        tx_busy = Signal()
        axis_o = self.m_axis_net
        tx_fire = Signal()
        def load():
            """The next queued header, at IDLE or on a packet's last word (back to back)."""
            m.d.comb += hdrq.r_en.eq(1)
            with m.If(hdrq.r_rdy):
                view = data.View(tx_entry, hdrq.r_data)
                m.d.sync += [Value.cast(tx_cur).eq(hdrq.r_data), tx_beat.eq(0), tx_left.eq(view.words)]
                m.next = "HEADER"
            with m.Else():
                m.next = "IDLE"

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                load()
            with m.State("HEADER"):
                m.d.comb += [tx_busy.eq(1), axis_o.tvalid.eq(1),
                             axis_o.tdata.eq(Value.cast(tx_cur.hdr).word_select(tx_beat, W) if H > 1
                                             else Value.cast(tx_cur.hdr)),
                             axis_o.tlast.eq((tx_beat == H - 1) & (tx_left == 0))]
                with m.If(axis_o.tready):
                    m.d.comb += tx_fire.eq(1)
                    with m.If(tx_beat != H - 1):
                        m.d.sync += tx_beat.eq(tx_beat + 1)
                    with m.Elif(tx_left != 0):
                        m.next = "DATA"
                    with m.Else():
                        load()
            with m.State("DATA"):
                m.d.comb += [tx_busy.eq(1), axis_o.tvalid.eq(self.src_data.valid),
                             axis_o.tdata.eq(self.src_data.payload), axis_o.tlast.eq(tx_left == 1),
                             self.src_data.ready.eq(axis_o.tready)]
                with m.If(axis_o.tvalid & axis_o.tready):
                    m.d.comb += tx_fire.eq(1)
                    m.d.sync += tx_left.eq(tx_left - 1)
                    with m.If(tx_left == 1):
                        load()
        tx_idle = ~cmd_pending & ~hdrq.r_rdy & ~tx_busy

        # -- receiving ---------------------------------------------------------------------------
        axis_i = self.s_axis_net
        rbeat = Signal(range(H + P + 2))
        hreg = Signal(H * W)
        rh = Signal(HEADER_LAYOUT)
        cur = axis_i.tdata[:128] if H == 1 else Cat(hreg[:W * (H - 1)], axis_i.tdata)[:128]
        m.d.comb += Value.cast(rh).eq(Mux(rbeat == H - 1, cur, hreg[:128]))
        rules = endpoint_header_rules(P, J)
        bad_hdr = rule_fails(rules, header_fields(rh))
        r_slot = rh.slot[:sw] if WM > 1 else Const(0, 1)
        m.d.comb += rnd_rx.addr.eq(rkey(r_slot))
        mine = busy & ~failing & (rh.job == job) & (rh.epoch == epoch)
        slot_ok = rh.slot < win
        match = mine & slot_ok & pend[r_slot] & (rh.round == rnd_rx.data) & (mode != NetMode.RESET)
        is_t = {t: rh.type == t for t in PacketType}
        # actions, decided at the last header word
        A_DUP, A_BAD, A_ACCEPT, A_STATUS, A_NACK, A_RESET = range(6)
        act = Signal(range(6))
        with m.If(bad_hdr):
            m.d.comb += act.eq(A_BAD)
        with m.Elif(mine & (mode == NetMode.RESET) & is_t[PacketType.RESET_ACK] & (rh.worker == me)
                    & ~reset_acked):
            m.d.comb += act.eq(A_RESET)
        with m.Elif(match & is_t[PacketType.RESULT] & (rh.offset == blk[r_slot])
                    & (rh.count == block_words(blk[r_slot]))):
            m.d.comb += act.eq(A_ACCEPT)
        with m.Elif(match & is_t[PacketType.STATUS] & (rh.offset == blk[r_slot])):
            m.d.comb += act.eq(A_STATUS)
        with m.Elif(match & is_t[PacketType.NACK]):
            m.d.comb += act.eq(A_NACK)
        with m.Else():
            m.d.comb += act.eq(A_DUP)
        ract = Signal(range(6))
        rhdr = Signal(HEADER_LAYOUT)
        m.d.comb += c_slot.eq(rhdr.slot[:sw] if WM > 1 else 0)
        rwords = Signal(range(P + 1))
        rover = Signal()

        # payload FIFO (two packets) and the commit records
        m.submodules.rxq = rxq = SyncFIFOBuffered(width=W, depth=2 * P)
        commit_l = data.StructLayout({"accept": 1, "block": 32, "words": range(P + 1)})
        m.submodules.commits = commits = SyncFIFO(width=commit_l.size, depth=2)
        take = axis_i.tvalid & axis_i.tready
        in_header = rbeat < H
        accepting = Mux(in_header, act, ract) == A_ACCEPT
        m.d.comb += axis_i.tready.eq(Mux(in_header, 1, Mux(ract == A_ACCEPT, rxq.w_rdy, 1))
                                     & (~axis_i.tlast | ~accepting | commits.w_rdy))
        payload_t = RtlOps.one_of(Mux(in_header, rh.type, rhdr.type), PAYLOAD_TYPES)
        count = Mux(in_header, rh.count, rhdr.count)
        length_ok = (rbeat + 1 == H + Mux(payload_t, count, 0)) & (rbeat < H + P) & (count <= P) & ~rover
        with m.If(take):
            for i in range(H):
                with m.If(rbeat == i):
                    m.d.sync += hreg[W * i:W * (i + 1)].eq(axis_i.tdata)
            with m.If(rbeat == H - 1):
                m.d.sync += [ract.eq(act), Value.cast(rhdr).eq(Value.cast(rh)), rwords.eq(0), rover.eq(0)]
            with m.If(rbeat < H + P + 1):
                m.d.sync += rbeat.eq(rbeat + 1)
            with m.Else():
                m.d.sync += rover.eq(1)
            with m.If(~in_header & (ract == A_ACCEPT) & (rbeat < H + P)):
                m.d.comb += [rxq.w_en.eq(1), rxq.w_data.eq(axis_i.tdata)]
                m.d.sync += rwords.eq(rwords + 1)
            with m.If(axis_i.tlast):
                m.d.sync += rbeat.eq(0)
                a = Mux(in_header, act, ract)
                h_ = Mux(in_header, Value.cast(rh), Value.cast(rhdr))
                hv = data.View(HEADER_LAYOUT, h_)
                short = (rbeat < H - 1) if H > 1 else Const(0, 1)     # tlast inside the header
                with m.If((a == A_BAD) | short):
                    m.d.comb += inc["net_bad_packets"].eq(1)
                with m.Elif(~length_ok):
                    m.d.comb += inc["net_bad_packets"].eq(1)
                    with m.If(a == A_ACCEPT):       # drop the words already kept
                        m.d.comb += [commits.w_en.eq(1),
                                     commits.w_data.eq(Cat(Const(0, 1), hv.offset,
                                                           rwords + (~in_header & (rbeat < H + P))))]
                with m.Elif(a == A_ACCEPT):
                    m.d.comb += [commit.eq(1), commits.w_en.eq(1),
                                 commits.w_data.eq(Cat(Const(1, 1), hv.offset,
                                                       rwords + (~in_header & (rbeat < H + P))))]
                with m.Elif(a == A_STATUS):
                    m.d.comb += [heard_set.eq(1), heard_val.eq(hv.members)]
                    s_slot = hv.slot[:sw] if WM > 1 else 0
                    with m.If(suspect[s_slot]):
                        m.d.sync += pt[s_slot].eq(now)   # answered: the round still waits; probe later
                    gap = Signal(32)
                    s_age = Signal(32)                   # paced: a STATUS older than my resend is stale
                    m.d.comb += [gap.eq(seq - sent_at[s_slot]), s_age.eq(now - st[s_slot])]
                    with m.If(~hv.members.bit_select(me, 1) & (gap >= FAST_RETRANSMIT_AFTER) & ~queued[s_slot]
                              & (~srtt_ok | (s_age >= srtt))):
                        m.d.comb += [rx_enq.eq(1), rx_enq_slot.eq(s_slot)]   # the switch misses my block
                        m.d.sync += queued[s_slot].eq(1)
                with m.Elif(a == A_NACK):
                    m.d.sync += fault.eq(Mux(hv.offset == NackReason.COLLISION, ErrorCode.NET_COLLISION,
                                             Mux(hv.offset == NackReason.STALE, ErrorCode.NET_STALE,
                                                 ErrorCode.NET_MISMATCH)))
                with m.Elif(a == A_RESET):
                    m.d.sync += [reset_acked.eq(1), pend[0].eq(0)]
                with m.Else():
                    m.d.comb += inc["net_duplicates"].eq(1)

        # a committed result: the slot's round moves on and the slot is free for the feeder
        newer = Signal(32)
        m.d.comb += newer.eq(sent_at[c_slot] - answered)
        sample = Signal(32)
        sample_c = Signal(RTT_BITS)
        delta = Signal(signed(RTT_BITS + 2))
        dev = Signal(RTT_BITS + 1)
        dev_delta = Signal(signed(RTT_BITS + 3))
        m.d.comb += [sample.eq(now - st[c_slot]),
                     sample_c.eq(Mux(sample >= (1 << RTT_BITS), (1 << RTT_BITS) - 1, sample)),
                     delta.eq(sample_c - srtt), dev.eq(Mux(delta < 0, -delta, delta)), dev_delta.eq(dev - rttvar)]
        with m.If(commit):
            m.d.comb += [rnd_wr.en.eq(1), rnd_wr.addr.eq(rkey(c_slot)), rnd_wr.data.eq(rhdr.round + 1),
                         inc["net_results"].eq(1), freed.eq(~suspect[c_slot])]
            m.d.sync += [received.eq(received + 1), tries[c_slot].eq(0), pend[c_slot].eq(0), queued[c_slot].eq(0),
                         suspect[c_slot].eq(0)]
            with m.If(clean[c_slot]):                      # Karn: only a block sent once dates the answer
                m.d.sync += [srtt_ok.eq(1), srtt.eq(Mux(srtt_ok, srtt + (delta >> 3), sample_c)),
                             rttvar.eq(Mux(srtt_ok, rttvar + (dev_delta >> 2), sample_c >> 1))]
                with m.If(~newer[31]):
                    m.d.sync += answered.eq(sent_at[c_slot])
        # RESET acknowledged: this job's rounds start again at 0
        with m.If(~wiped):
            m.d.comb += [rnd_wr.en.eq(1), rnd_wr.addr.eq(wiping), rnd_wr.data.eq(0)]
        with m.Elif(reset_acked & (clearing < WM)):
            m.d.comb += [rnd_wr.en.eq(1), rnd_wr.addr.eq(rkey(clearing)), rnd_wr.data.eq(0)]
            m.d.sync += clearing.eq(clearing + 1)

        # -- writing results back: a whole checked packet at a time ------------------------------
        # The write commands go through their own small queue, so a packet's words move into the
        # writer while the writer still finishes the last command (it takes words before their
        # command): one word per cycle, packet after packet.
        rec = data.View(commit_l, commits.r_data)
        wr_left = Signal(range(P + 1))
        wr_keep = Signal()
        writes_out = Signal(33)
        writes_done = Signal(33)
        wcmd_l = data.StructLayout({"addr": 64, "bytes": 32})
        m.submodules.wcmds = wcmds = SyncFIFO(width=wcmd_l.size, depth=4)
        wc = data.View(wcmd_l, wcmds.r_data)
        m.d.comb += [self.out_cmd.valid.eq(wcmds.r_rdy), self.out_cmd.payload.addr.eq(wc.addr),
                     self.out_cmd.payload.bytes.eq(wc.bytes), wcmds.r_en.eq(self.out_cmd.ready)]
        wnew = Signal(wcmd_l)
        m.d.comb += [wnew.addr.eq(addr + (rec.block << pbb)), wnew.bytes.eq(rec.words << wbb),
                     wcmds.w_data.eq(Value.cast(wnew))]

        def next_record():
            """Take the next commit record (at IDLE, or on the last word of a packet)."""
            with m.If(commits.r_rdy & (~rec.accept | wcmds.w_rdy)):
                m.d.comb += [commits.r_en.eq(1), wcmds.w_en.eq(rec.accept)]
                m.d.sync += [wr_left.eq(rec.words), wr_keep.eq(rec.accept), writes_out.eq(writes_out + rec.accept)]
                with m.If(rec.words != 0):
                    m.next = "MOVE"
                with m.Else():
                    m.next = "IDLE"
            with m.Else():
                m.next = "IDLE"

        with m.FSM(name="write"):
            with m.State("IDLE"):
                next_record()
            with m.State("MOVE"):
                m.d.comb += [self.out_data.payload.eq(rxq.r_data),
                             self.out_data.valid.eq(wr_keep & rxq.r_rdy),
                             rxq.r_en.eq(Mux(wr_keep, self.out_data.ready, 1))]
                with m.If(rxq.r_rdy & rxq.r_en):
                    m.d.sync += wr_left.eq(wr_left - 1)
                    with m.If(wr_left == 1):
                        next_record()
        m.d.comb += self.out_done.ready.eq(1)
        with m.If(self.out_done.valid):
            m.d.sync += writes_done.eq(writes_done + 1)
            with m.If(self.out_done.payload.error):
                m.d.sync += axi_error.eq(1)
        with m.If(self.job.valid & self.job.ready):
            m.d.sync += [writes_out.eq(0), writes_done.eq(0)]

        # -- the end of a job ----------------------------------------------------------------------
        rx_idle = (rbeat == 0) & ~commits.r_rdy & (wr_left == 0) & ~wcmds.r_rdy
        settled = tx_idle & rx_idle & (writes_done == writes_out) & ~sendq.r_rdy
        finished = busy & settled & Mux(failing, 1, Mux(mode == NetMode.RESET, reset_acked & (clearing == WM),
                                                           (received == blocks) & (next_block == blocks)))
        m.d.comb += [self.done.valid.eq(finished), self.done.payload.error.eq(axi_error),
                     self.fault.eq(Mux(finished, fault, 0))]
        with m.If(self.done.valid & self.done.ready):
            m.d.sync += busy.eq(0)
        m.d.comb += [self.busy.eq(busy), self.stall.eq(busy & ~tx_fire & ~take)]
        return m
