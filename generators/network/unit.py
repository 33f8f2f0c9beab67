"""One aggregation unit: the slots ``s`` with ``s % units == unit`` of every job.

Dataflow::

    port heads --(round robin over the ports whose oldest packet is for this unit)--> IDLE
    IDLE:   latch the header, read the slot copy's state (meta memory, copy = round % 2)
    DECIDE: the golden switch's rules (hbmforge.numerics.network.GoldenSwitch), on the header,
            the copy's state, the job's claim in this unit and the job's epoch:
              drop | reply (header only) | stored result (pool -> bus)
              | add (rx + pool -> pool, and -> bus when the slot completes) | forward (rx -> bus)
    BUS:    wait for the output bus (its header goes to every destination port at the grant)
    STREAM: one payload word per cycle: read rx word i and pool word i, combine (int32
            lanes: sum modulo 2**32 or signed max), write the pool, push to the bus
    END:    write the copy's state and the claim, pop the packet

The unit never stalls inside STREAM: the bus grants only when every destination port has
room for the whole packet.
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbmforge.encodings import NetMode
from hbmforge.engines.network import NackReason, PacketType, SwitchGeometry
from hbmforge.mathutil import exact_log2

from .packet import HEADER_LAYOUT, header_check

__all__ = ["AggregationUnit", "Kind", "meta_layout", "combine_words"]


class Kind(enum.Enum, shape=2):
    """What a slot copy holds."""

    REDUCE = 0      # DATA contributions (a SwitchML round)
    LOAD = 1        # a reduce-on-read request (LD_REQ) and its LD_DATA answers
    STORE = 2       # a multicast store (ST) and its ST_ACKs


class _Act(enum.Enum, shape=3):
    DROP = 0        # nothing goes out (a duplicate, a stale round, or a state update only)
    REPLY = 1       # a header-only packet
    STORED = 2      # a stored result: pool words
    ADD = 3         # a contribution: rx words into the pool (out too, when the slot completes)
    FWD = 4         # a multicast store: rx words out


def meta_layout(geom: SwitchGeometry) -> data.StructLayout:
    """The state of one slot copy."""
    n = geom.ports
    return data.StructLayout({
        "written": 1, "tag": 8, "round": 8, "open": 1, "done": 1, "seen": n, "offset": 32,
        "count": range(geom.packet_words + 1), "kind": Kind, "requester": 4, "members": n, "op": 2,
    })


def combine_words(op, a, b, lanes: int) -> Value:
    """``a`` op ``b`` on ``lanes`` int32 lanes: SUM modulo 2**32, or signed MAX."""
    out = []
    for i in range(lanes):
        x, y = a[32 * i:32 * i + 32], b[32 * i:32 * i + 32]
        out.append(Mux(op == NetMode.MAX, Mux(x.as_signed() > y.as_signed(), x, y), (x + y)[:32]))
    return Cat(*out)


class AggregationUnit(wiring.Component):
    """Aggregation unit ``unit`` of a switch (see the module docstring)."""

    def __init__(self, geom: SwitchGeometry, unit: int):
        if not isinstance(geom, SwitchGeometry):
            raise TypeError(f"geom must be a SwitchGeometry, got {type(geom).__name__}")
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < geom.units:
            raise ValueError(f"unit must be in [0, {geom.units}), got {unit!r}")
        self._geom, self._unit = geom, unit
        n, P = geom.ports, geom.packet_words
        super().__init__({
            # the ports' oldest packets
            "head_valid": In(n),
            "head": In(HEADER_LAYOUT).array(n),
            "rx_port": Out(range(n)),        # the port this unit reads and pops (while busy)
            "rx_dport": Out(range(n)),       # the port whose word (read last cycle) rx_data carries
            "rx_busy": Out(1),               # reading or popping the port (not while deciding)
            "rx_ending": Out(1),             # the next cycle reads the last word
            "rx_addr": Out(range(P)),
            "rx_data": In(geom.data_width),
            "pop": Out(1),
            # job epochs (the switch's table; unit 0 writes it on RESET)
            "epochs": In(8).array(geom.jobs),
            "epoch_we": Out(1),
            "epoch_job": Out(range(geom.jobs)),
            "epoch_value": Out(8),
            # the output bus
            "bus_req": Out(1),
            "bus_dest": Out(n),
            "bus_hdr": Out(HEADER_LAYOUT),
            "bus_words": Out(range(P + 1)),
            "bus_grant": In(1),
            "bus_valid": Out(1),
            "bus_data": Out(geom.data_width),
            "bus_last": Out(1),
            # counter pulses
            "c_reduced": Out(1), "c_completed": Out(1), "c_resent": Out(1), "c_status": Out(1),
            "c_nacks": Out(1), "c_duplicates": Out(1),
        })

    @property
    def geom(self) -> SwitchGeometry:
        return self._geom

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        n, P, W, J = g.ports, g.packet_words, g.data_width, g.jobs
        spu = g.slots_per_unit
        ubits, sbits, jbits, pbits = exact_log2(g.units), exact_log2(spu), exact_log2(J), exact_log2(P)
        meta_l = meta_layout(g)
        entries = J * spu * 2

        m.submodules.meta = meta = Memory(shape=meta_l, depth=entries, init=[])
        meta_rd = meta.read_port()
        meta_wr = meta.write_port()
        m.submodules.pool = pool = Memory(shape=W, depth=entries * P, init=[])
        pool_rd = pool.read_port()
        pool_wr = pool.write_port()

        claim_l = data.StructLayout({"tag": 8, "valid": 1, "members": n, "op": 2, "open": range(2 * spu + 1)})
        claims = Array(Signal(claim_l, name=f"claim{j}") for j in range(J))

        def entry(h) -> Value:
            """Meta index of the header's slot copy: (job, local slot, round % 2)."""
            parts = [h.round[0]]
            if sbits:
                parts.append(h.slot[ubits:ubits + sbits])
            if jbits:
                parts.append(h.job[:jbits])
            return Cat(*parts)

        # -- IDLE: pick a port whose oldest packet is for this unit ---------------------------
        def target_ok(h) -> Value:
            mine = (h.slot[:ubits] == self._unit) if ubits else Const(1, 1)
            if self._unit == 0:
                return mine | (h.type == PacketType.RESET)
            return mine & (h.type != PacketType.RESET)

        cand = Signal(n)
        m.d.comb += cand.eq(Cat(*(self.head_valid[p] & target_ok(self.head[p]) for p in range(n))))
        rr = Signal(range(n))
        sel = Signal(range(n))
        found = Signal()
        for k in reversed(range(n)):
            p = Signal(range(n), name=f"rr_{k}")
            m.d.comb += p.eq((rr + k) % n if n & (n - 1) else (rr + k)[:max(1, exact_log2(n))])
            with m.If(cand.bit_select(p, 1)):
                m.d.comb += [sel.eq(p), found.eq(1)]
        heads = Array(Value.cast(self.head[p]) for p in range(n))
        head_sel = data.View(HEADER_LAYOUT, heads[sel])

        h = Signal(HEADER_LAYOUT)            # the packet being decided
        port = Signal(range(n))              # ... its port
        n_entry = Signal(range(entries))     # ... its slot copy
        busy = Signal()
        pending = Signal()                   # a packet was picked during STREAM: decide it at the last read
        in_stream = Signal()                 # the FSM is in STREAM (a decision now overlaps the last read)
        # the packet being read (latched at its decision): the unit reads, pops and finishes it
        # while it decides the next one
        c_port = Signal(range(n))
        c_count = Signal(range(P + 1))
        c_job = Signal(range(J)) if J > 1 else Signal(1)
        c_members = Signal(n)
        c_op = Signal(2)
        c_epoch = Signal(8)
        m.d.comb += self.rx_port.eq(c_port)

        # -- DECIDE: the golden switch's rules -------------------------------------------------
        # a decision during the last read of the packet before it (same unit, back to back) sees
        # that packet's slot copy and claim as its end writes them (forwarded)
        l_new = Signal(meta_l)
        l_meta_we = Signal()
        l_entry = Signal(range(entries))
        st_raw = Signal(meta_l)
        m.d.comb += st_raw.eq(Mux(in_stream & l_meta_we & (n_entry == l_entry), l_new, meta_rd.data))
        st = data.View(meta_l, st_raw)
        ep = Signal(8)
        m.d.comb += ep.eq(Array(self.epochs)[h.job[:max(jbits, 1)] if jbits else 0])
        cu = Signal(claim_l)                 # the claim of the packet being read, as its end writes it
        cl = Signal(claim_l)
        m.d.comb += cl.eq(Mux(in_stream & ((h.job[:jbits] == c_job[:jbits]) if jbits else 1),
                              cu, claims[h.job[:jbits] if jbits else 0]))
        empty = ~st.written | (st.tag != ep)
        diff = Signal(8)
        m.d.comb += diff.eq(h.round - st.round)
        rel_new = Signal()
        rel_same = Signal()
        rel_stale = Signal()
        m.d.comb += [rel_new.eq(empty | ((diff == 2) & st.done)), rel_same.eq(~empty & (diff == 0)),
                     rel_stale.eq(~empty & diff[7])]
        rel_conf = ~rel_new & ~rel_same & ~rel_stale
        bit = Signal(n)
        m.d.comb += bit.eq(Const(1, n) << h.worker[:4])
        seen_has = (st.seen & bit).any()
        members = h.members[:n]
        collide = cl.valid & (cl.tag == ep) & (cl.open != 0) & ((cl.members != members) | (cl.op != h.op))
        req_bit = Signal(n)
        m.d.comb += req_bit.eq(Const(1, n) << st.requester)

        # the decision (comb), latched at the end of DECIDE
        act = Signal(_Act)
        rtype = Signal(4)
        rworker = Signal(4)
        rmembers = Signal(16)
        roffset = Signal(32)
        rcount = Signal(range(P + 1))
        rop = Signal(2)
        dest = Signal(n)
        new = Signal(meta_l)
        meta_we = Signal()
        first = Signal()
        out = Signal()                       # ADD: the completed slot goes out
        claim_open = Signal()
        claim_close = Signal()
        epoch_we = Signal()
        pulses = {name: Signal(name=f"p_{name}") for name in
                  ("reduced", "completed", "resent", "status", "nacks", "duplicates")}
        m.d.comb += [act.eq(_Act.DROP), rtype.eq(PacketType.NACK), rworker.eq(h.worker), rmembers.eq(0),
                     roffset.eq(h.offset), rcount.eq(0), rop.eq(h.op), dest.eq(bit), new.eq(st)]

        def nack(reason, who):
            m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.NACK), roffset.eq(reason), rmembers.eq(who),
                         pulses["nacks"].eq(1)]

        def refuse():
            """Not this copy's round: COLLISION if the round is another member set's, else MISMATCH."""
            nack(Mux(st.members != members, NackReason.COLLISION, NackReason.MISMATCH), st.members)

        def drop():
            m.d.comb += [act.eq(_Act.DROP), pulses["duplicates"].eq(1)]

        def open_new(kind, seen):
            m.d.comb += [meta_we.eq(1), claim_open.eq(1),
                         new.written.eq(1), new.tag.eq(ep), new.round.eq(h.round), new.open.eq(1), new.done.eq(0),
                         new.seen.eq(seen), new.offset.eq(h.offset), new.count.eq(h.count), new.kind.eq(kind),
                         new.requester.eq(h.worker), new.members.eq(members), new.op.eq(h.op)]

        def close():
            m.d.comb += [new.open.eq(0), new.done.eq(1), claim_close.eq(1), pulses["completed"].eq(1)]

        is_type = {t: h.type == t for t in PacketType}
        missing = st.members & ~st.seen
        with m.If(is_type[PacketType.RESET]):
            m.d.comb += [epoch_we.eq(1), act.eq(_Act.REPLY), rtype.eq(PacketType.RESET_ACK), rmembers.eq(h.members)]
        with m.Elif(h.epoch != ep):
            nack(NackReason.STALE, ep)
        with m.Elif(is_type[PacketType.DATA]):
            with m.If(rel_stale):
                drop()
            with m.Elif(rel_conf | (rel_same & (st.kind != Kind.REDUCE))):
                refuse()
            with m.Elif(rel_same & seen_has):                   # a duplicate: never added twice
                with m.If(st.done):
                    m.d.comb += [act.eq(_Act.STORED), rtype.eq(PacketType.RESULT), rmembers.eq(st.members),
                                 roffset.eq(st.offset), rcount.eq(st.count), rop.eq(st.op), pulses["resent"].eq(1)]
                with m.Else():
                    m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.STATUS), rmembers.eq(st.seen),
                                 pulses["status"].eq(1)]
            with m.Elif(collide):
                nack(NackReason.COLLISION, cl.members)
            with m.Elif(rel_new):
                open_new(Kind.REDUCE, bit)
                m.d.comb += [act.eq(_Act.ADD), first.eq(1), pulses["reduced"].eq(1), rtype.eq(PacketType.RESULT),
                             rmembers.eq(members), rcount.eq(h.count), dest.eq(members)]
                with m.If(bit == members):
                    close()
                    m.d.comb += out.eq(1)
            with m.Elif(st.done | (st.offset != h.offset) | (st.count != h.count)):
                refuse()
            with m.Else():
                m.d.comb += [act.eq(_Act.ADD), meta_we.eq(1), new.seen.eq(st.seen | bit), pulses["reduced"].eq(1),
                             rtype.eq(PacketType.RESULT), rmembers.eq(st.members), rcount.eq(st.count),
                             rop.eq(st.op), dest.eq(st.members)]
                with m.If((st.seen | bit) == st.members):
                    close()
                    m.d.comb += out.eq(1)
        with m.Elif(is_type[PacketType.LD_DATA]):
            with m.If(~(rel_same & st.open & (st.kind == Kind.LOAD) & (st.offset == h.offset)) | seen_has):
                drop()
            with m.Elif((st.count != h.count) | (st.members != members) | (st.op != h.op)):
                refuse()
            with m.Else():
                m.d.comb += [act.eq(_Act.ADD), meta_we.eq(1), first.eq(st.seen == 0), new.seen.eq(st.seen | bit),
                             pulses["reduced"].eq(1), rtype.eq(PacketType.LD_RESULT), rworker.eq(st.requester),
                             rmembers.eq(st.members), rcount.eq(st.count), rop.eq(st.op), dest.eq(req_bit)]
                with m.If((st.seen | bit) == st.members):
                    close()
                    m.d.comb += out.eq(1)
        with m.Elif(is_type[PacketType.LD_REQ] | is_type[PacketType.ST]):
            load = is_type[PacketType.LD_REQ]
            kind = Signal(Kind)
            m.d.comb += kind.eq(Mux(load, Kind.LOAD, Kind.STORE))
            with m.If(rel_stale):
                drop()
            with m.Elif(rel_same):
                with m.If((st.kind != kind) | (st.requester != h.worker) | (st.offset != h.offset)):
                    refuse()
                with m.Elif(st.done):
                    m.d.comb += [pulses["resent"].eq(1), rmembers.eq(st.members)]
                    with m.If(load):
                        m.d.comb += [act.eq(_Act.STORED), rtype.eq(PacketType.LD_RESULT), rcount.eq(st.count),
                                     rop.eq(st.op)]
                    with m.Else():
                        m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.ST_DONE)]
                with m.Else():                                   # ask the members not heard yet again
                    m.d.comb += [rmembers.eq(st.members), dest.eq(missing)]
                    with m.If(load):
                        m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.LD_READ), rcount.eq(st.count)]
                    with m.Else():
                        m.d.comb += [act.eq(_Act.FWD), rtype.eq(PacketType.ST_DATA), rcount.eq(h.count)]
            with m.Elif(rel_conf):
                refuse()
            with m.Elif(collide):
                nack(NackReason.COLLISION, cl.members)
            with m.Else():
                open_new(kind, Mux(load, 0, bit))
                m.d.comb += rmembers.eq(members)
                with m.If(load):
                    m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.LD_READ), rcount.eq(h.count),
                                 dest.eq(members)]
                with m.Elif(members == bit):                     # a store to itself alone
                    close()
                    m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.ST_DONE)]
                with m.Else():
                    m.d.comb += [act.eq(_Act.FWD), rtype.eq(PacketType.ST_DATA), rcount.eq(h.count),
                                 dest.eq(members & ~bit)]
        with m.Elif(is_type[PacketType.PROBE]):
            with m.If(rel_stale):
                drop()
            with m.Elif(rel_same & (st.kind == Kind.REDUCE) & (st.offset == h.offset)):
                with m.If(st.done):
                    m.d.comb += [act.eq(_Act.STORED), rtype.eq(PacketType.RESULT), rmembers.eq(st.members),
                                 roffset.eq(st.offset), rcount.eq(st.count), rop.eq(st.op), pulses["resent"].eq(1)]
                with m.Else():                               # to the prober and to every member not heard
                    m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.STATUS), rmembers.eq(st.seen),
                                 dest.eq(bit | (members & ~st.seen)), pulses["status"].eq(1)]
            with m.Else():                                   # nobody's block of that round is here yet
                m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.STATUS), rmembers.eq(0), dest.eq(members),
                             pulses["status"].eq(1)]
        with m.Elif(is_type[PacketType.ST_ACK]):
            with m.If(~(rel_same & st.open & (st.kind == Kind.STORE) & (st.offset == h.offset)) | seen_has):
                drop()
            with m.Else():
                m.d.comb += [meta_we.eq(1), new.seen.eq(st.seen | bit)]
                with m.If((st.seen | bit) == st.members):
                    close()
                    m.d.comb += [act.eq(_Act.REPLY), rtype.eq(PacketType.ST_DONE), rworker.eq(st.requester),
                                 rmembers.eq(st.members), dest.eq(req_bit)]

        # -- the FSM ------------------------------------------------------------------------
        l_act = Signal(_Act)
        l_hdr = Signal(HEADER_LAYOUT)
        l_dest = Signal(n)
        l_words = Signal(range(P + 1))
        l_first = Signal()
        l_out = Signal()
        l_open = Signal()
        l_close = Signal()
        l_epoch = Signal()
        l_op = Signal(2)
        body = Signal(HEADER_LAYOUT)
        m.d.comb += [body.type.eq(rtype), body.op.eq(rop), body.job.eq(h.job), body.worker.eq(rworker),
                     body.round.eq(h.round), body.epoch.eq(h.epoch), body.slot.eq(h.slot), body.count.eq(rcount),
                     body.offset.eq(roffset), body.members.eq(rmembers)]
        reply = Signal(HEADER_LAYOUT)
        m.d.comb += [Value.cast(reply).eq(Value.cast(body)), reply.check.eq(header_check(Value.cast(body)))]

        n_words = Signal(range(P + 1))       # words this packet moves
        m.d.comb += n_words.eq(Mux(l_act == _Act.ADD, c_count, l_words))
        i_issue = Signal(range(P + 1))       # next word to read
        s2_valid = Signal()                  # the word read last cycle is here
        s2_word = Signal(range(P))
        s2_last = Signal()
        m.d.comb += [self.bus_hdr.eq(l_hdr), self.bus_dest.eq(l_dest), self.bus_words.eq(l_words)]
        idle_entry = entry(head_sel)
        m.d.comb += meta_rd.addr.eq(idle_entry)
        m.d.comb += [pool_rd.addr.eq(Cat(i_issue[:pbits], l_entry) if pbits else l_entry),
                     self.rx_addr.eq(i_issue[:pbits] if pbits else 0)]

        c_jsel = c_job[:jbits] if jbits else 0
        c_ep = Signal(8)
        m.d.comb += c_ep.eq(Array(self.epochs)[c_jsel])
        cur = Signal(claim_l)
        m.d.comb += cur.eq(claims[c_jsel])
        live = cur.valid & (cur.tag == c_ep) & (cur.open != 0)
        m.d.comb += cu.eq(cur)
        with m.If(l_open & ~l_close):
            with m.If(live):
                m.d.comb += cu.open.eq(cur.open + 1)
            with m.Else():
                m.d.comb += [cu.valid.eq(1), cu.tag.eq(c_ep), cu.open.eq(1), cu.members.eq(c_members), cu.op.eq(c_op)]
        with m.Elif(l_close & ~l_open):
            m.d.comb += cu.open.eq(cur.open - 1)
        with m.Elif(l_open & l_close):          # opened and closed at once: the claim is set, none open
            with m.If(~live):
                m.d.comb += [cu.valid.eq(1), cu.tag.eq(c_ep), cu.open.eq(0), cu.members.eq(c_members),
                             cu.op.eq(c_op)]

        def finish():
            """The packet's end: free its port entry, write its slot copy, update the claim and epoch."""
            m.d.sync += busy.eq(0)
            m.d.comb += [self.pop.eq(1), meta_wr.en.eq(l_meta_we)]
            for j in range(J):
                with m.If(c_jsel == j):
                    m.d.sync += claims[j].eq(cu)
            m.d.comb += [self.epoch_we.eq(l_epoch), self.epoch_job.eq(c_jsel), self.epoch_value.eq(c_epoch)]

        def pick():
            m.d.sync += [h.eq(head_sel), port.eq(sel), busy.eq(1), n_entry.eq(idle_entry),
                         rr.eq(Mux(sel == n - 1, 0, sel + 1))]

        def decide():
            """Latch the decision on ``h`` and go where it leads (from DECIDE, or overlapping the
            last read of the packet before: then the next packet's reads follow without a gap)."""
            m.d.sync += [l_act.eq(act), l_hdr.eq(reply), l_dest.eq(dest & Const((1 << n) - 1, n)),
                         l_new.eq(new), l_meta_we.eq(meta_we), l_first.eq(first), l_out.eq(out),
                         l_open.eq(claim_open), l_close.eq(claim_close), l_epoch.eq(epoch_we),
                         l_op.eq(Mux(first, h.op, st.op)), i_issue.eq(0), l_entry.eq(n_entry),
                         c_port.eq(port), c_count.eq(h.count), c_job.eq(h.job[:jbits] if jbits else 0),
                         c_members.eq(h.members[:n]), c_op.eq(h.op), c_epoch.eq(h.epoch),
                         l_words.eq(Mux((act == _Act.STORED) | (act == _Act.FWD) | ((act == _Act.ADD) & out),
                                        rcount, 0))]
            for name, sig in pulses.items():
                m.d.comb += getattr(self, f"c_{name}").eq(sig)
            with m.If((act == _Act.REPLY) | (act == _Act.STORED) | (act == _Act.FWD) | ((act == _Act.ADD) & out)):
                m.next = "BUS"
            with m.Elif(act == _Act.ADD):
                m.next = "STREAM"
            with m.Else():
                m.next = "END"

        with m.FSM() as fsm:
            # a unit that took the packet after a port's head decides while the head's unit reads
            # its last word: only the head's unit drives the port then
            m.d.comb += self.rx_busy.eq(busy & ~fsm.ongoing("DECIDE"))
            with m.State("IDLE"):
                m.d.sync += s2_valid.eq(0)               # the last packet's last word (stage 2) goes now
                with m.If(found):
                    pick()
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                decide()
            with m.State("BUS"):
                # word 0 is being read (i_issue = 0): at the grant it is there the next cycle, so
                # the packet's words follow its header on the bus without a gap
                m.d.comb += self.bus_req.eq(1)
                # the packet before's last word (decided during its read) goes now, no word after it
                m.d.sync += s2_valid.eq(0)
                with m.If(self.bus_grant):
                    with m.If(l_words == 0):
                        m.next = "END"
                    with m.Else():
                        m.d.sync += [i_issue.eq(1), s2_valid.eq(1), s2_word.eq(0), s2_last.eq(n_words == 1)]
                        m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [self.rx_ending.eq(i_issue + 2 == n_words), in_stream.eq(1)]
                with m.If(i_issue < n_words):
                    m.d.sync += [i_issue.eq(i_issue + 1), s2_valid.eq(1), s2_word.eq(i_issue[:pbits] if pbits else 0),
                                 s2_last.eq(i_issue + 1 == n_words)]
                    with m.If((i_issue + 2 == n_words) & ~pending & found):
                        # the next-to-last word is read now: pick this unit's next packet (its slot
                        # copy is read now, decided during the last read)
                        pick()
                        m.d.sync += pending.eq(1)
                    with m.If(i_issue + 1 == n_words):
                        # the last word is read now: the port is free for the next unit while that
                        # word is combined and pushed (stage 2) during the next cycle (a packet holding
                        # its port to the end took P + 4 cycles, more than its P + 1 beats on the link);
                        # a packet picked a cycle ago is decided now and read from the next cycle (a
                        # unit takes P cycles per packet back to back, not P + 2: faster than a link)
                        finish()
                        m.next = "IDLE"
                        with m.If(pending):
                            m.d.sync += [pending.eq(0), busy.eq(1)]
                            decide()
                with m.Else():
                    m.d.sync += s2_valid.eq(0)
                with m.If(s2_valid & s2_last & (i_issue >= n_words)):   # the only word was read at the grant (BUS)
                    m.next = "END"
            with m.State("END"):
                m.d.sync += s2_valid.eq(0)
                finish()
                m.next = "IDLE"
        m.d.comb += [meta_wr.addr.eq(l_entry), meta_wr.data.eq(l_new)]

        # -- stage 2 of STREAM: combine, write the pool, push to the bus ------------------------
        # its controls are those of the cycle the word was read (a decision in the last read's
        # cycle latches the next packet's)
        s2_act = Signal(_Act)
        s2_first = Signal()
        s2_op = Signal(2)
        s2_entry = Signal(range(entries))
        s2_out = Signal()
        m.d.sync += [s2_act.eq(l_act), s2_first.eq(l_first), s2_op.eq(l_op), s2_entry.eq(l_entry),
                     s2_out.eq(l_words != 0), self.rx_dport.eq(c_port)]
        word = Signal(W)
        m.d.comb += word.eq(Mux(s2_act == _Act.STORED, pool_rd.data,
                                Mux((s2_act == _Act.FWD) | s2_first, self.rx_data,
                                    combine_words(s2_op, pool_rd.data, self.rx_data, g.lanes))))
        m.d.comb += [pool_wr.addr.eq(Cat(s2_word, s2_entry) if pbits else s2_entry), pool_wr.data.eq(word),
                     pool_wr.en.eq(s2_valid & (s2_act == _Act.ADD)),
                     self.bus_valid.eq(s2_valid & s2_out), self.bus_data.eq(word),
                     self.bus_last.eq(s2_valid & s2_last)]
        return m
