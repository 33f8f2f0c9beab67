"""The aggregation switch: N AXI4-Stream ports around a pool of aggregation slots.

Dataflow::

    s_axis_p<i> -> PortRx i (whole packets checked: bad ones dropped and counted)
        -> the oldest packet of each port, offered to the unit of its slot (slot % units);
           the one after it while the oldest's unit reads its next-to-last word
    AggregationUnit u (slots s with s % units == u, every job; one payload word per cycle)
        -> ``out_buses`` output buses (each one packet at a time; granted only when every
           destination has room in that bus's FIFOs)
    -> PortTx i -> m_axis_p<i>   (multicast: the same packet into every destination port; the
                                  port sends its packets in grant order)

The rules are the golden switch's (:class:`hbmforge.numerics.network.GoldenSwitch`): rounds
and two copies per slot, per-copy worker bitmaps, int32 sum modulo 2**32 or signed max,
claims per unit and job, epochs per job, reduce-on-read and multicast store. With
``units > ports`` the units keep up with every port at line rate.

Counters (32 bits, free running): per port ``stat_rx_p<i>`` (packets received),
``stat_drop_p<i>`` (bad packets dropped), ``stat_tx_p<i>`` (packets sent); switch-wide
``stat_reduced``, ``stat_completed``, ``stat_resent``, ``stat_status``, ``stat_nacks``,
``stat_duplicates`` (see ``hbmforge.numerics.network.SwitchCounters``).
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbmforge.engines.network import SWITCH_COUNTERS, SwitchGeometry

from ..engine import AxiStreamSignature
from .rx import PortRx
from .tx import PortTx
from .unit import AggregationUnit

__all__ = ["AggregationSwitch"]


class AggregationSwitch(wiring.Component):
    """An aggregation switch of a :class:`~hbmforge.engines.network.SwitchGeometry`."""

    def __init__(self, geom: SwitchGeometry):
        if not isinstance(geom, SwitchGeometry):
            raise TypeError(f"geom must be a SwitchGeometry, got {type(geom).__name__}")
        self._geom = geom
        members = {}
        for p in range(geom.ports):
            members[f"s_axis_p{p}"] = In(AxiStreamSignature(geom.data_width))
            members[f"m_axis_p{p}"] = Out(AxiStreamSignature(geom.data_width))
        for p in range(geom.ports):
            for c in ("rx", "drop", "tx"):
                members[f"stat_{c}_p{p}"] = Out(32)
        for c in SWITCH_COUNTERS:
            members[f"stat_{c}"] = Out(32)
        super().__init__(members)

    @property
    def geom(self) -> SwitchGeometry:
        return self._geom

    @staticmethod
    def counter_names(geom: SwitchGeometry) -> tuple[str, ...]:
        """Every ``stat_*`` output, in port order then switch-wide."""
        return geom.counter_names

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        n, U = g.ports, g.units
        rxs = [PortRx(g, p) for p in range(n)]
        txs = [PortTx(g) for _ in range(n)]
        units = [AggregationUnit(g, u) for u in range(U)]
        for p in range(n):
            m.submodules[f"rx{p}"] = rxs[p]
            m.submodules[f"tx{p}"] = txs[p]
            wiring.connect(m, wiring.flipped(getattr(self, f"s_axis_p{p}")), rxs[p].s_axis)
            wiring.connect(m, txs[p].m_axis, wiring.flipped(getattr(self, f"m_axis_p{p}")))
        for u, unit in enumerate(units):
            m.submodules[f"unit{u}"] = unit

        # -- ports -> units: every unit sees every head; the unit that holds a port reads and pops it
        epochs = [Signal(8, name=f"epoch{j}") for j in range(g.jobs)]
        rx_data = Array(rx.rd_data for rx in rxs)
        # a port whose head's unit reads its next-to-last word offers the packet after it: that
        # packet's unit decides while the last word is read and reads on the next cycle, so a
        # port moves one packet per packet_words + 1 cycles (its rate on the link)
        ending = [Signal(name=f"ending_p{p}") for p in range(n)]
        offer_valid = Signal(n)
        offer = [Signal.like(rxs[p].head, name=f"offer_p{p}") for p in range(n)]
        for p, rx in enumerate(rxs):
            m.d.comb += [ending[p].eq(Cat(*(u.rx_ending & u.rx_busy & (u.rx_port == p) for u in units)).any()),
                         offer_valid[p].eq(Mux(ending[p], rx.head2_valid, rx.head_valid)),
                         offer[p].eq(Mux(ending[p], Value.cast(rx.head2), Value.cast(rx.head)))]
        for unit in units:
            m.d.comb += [unit.head_valid.eq(offer_valid), unit.rx_data.eq(rx_data[unit.rx_dport])]
            for p in range(n):
                m.d.comb += unit.head[p].eq(offer[p])
            for j in range(g.jobs):
                m.d.comb += unit.epochs[j].eq(epochs[j])
        for p, rx in enumerate(rxs):
            for unit in units:
                with m.If(unit.rx_busy & (unit.rx_port == p)):
                    m.d.comb += [rx.rd_addr.eq(unit.rx_addr), rx.pop.eq(unit.pop)]
        with m.If(units[0].epoch_we):
            for j in range(g.jobs):
                with m.If(units[0].epoch_job == j):
                    m.d.sync += epochs[j].eq(units[0].epoch_value)

        # -- units -> output buses -> ports ----------------------------------------------------
        # bus b grants the next requesting unit (round robin) whose every destination port has
        # room in its bus-b FIFOs, once the packet it carries pushes its last word; a lower bus
        # picks first and a higher one skips the unit it took this cycle
        bus_hdr = Array(Value.cast(u.bus_hdr) for u in units)
        bus_dest = Array(u.bus_dest for u in units)
        bus_words = Array(u.bus_words for u in units)
        taken = Const(0, U)                                # units granted by a lower bus so far
        self.bus_owned = []                                # per bus: a packet is streaming (tests, waveforms)
        for b in range(g.out_buses):
            owned = Signal(name=f"bus{b}_owned")
            self.bus_owned.append(owned)
            owner = Signal(range(U), name=f"bus{b}_owner")
            owner_dest = Signal(n, name=f"bus{b}_dest")
            rr = Signal(range(U), name=f"bus{b}_rr")
            want = Signal(U, name=f"bus{b}_want")
            # one word more than needed: the last owner may push its last word now
            m.d.comb += want.eq(Cat(*(
                unit.bus_req & ~taken[u] & Cat(*(~unit.bus_dest[p] | (txs[p].hdr_room[b] &
                                                                       (txs[p].data_free[b] > unit.bus_words))
                                                  for p in range(n))).all()
                for u, unit in enumerate(units))))
            pick = Signal(range(U), name=f"bus{b}_pick")
            any_ = Signal(name=f"bus{b}_any")
            for k in reversed(range(U)):
                cand = Signal(range(U), name=f"bus{b}_rr_{k}")
                m.d.comb += cand.eq((rr + k)[:max(1, (U - 1).bit_length())] if U > 1 else 0)
                with m.If(want.bit_select(cand, 1)):
                    m.d.comb += [pick.eq(cand), any_.eq(1)]
            grant = Signal(name=f"bus{b}_grant")
            valid = Array(u.bus_valid for u in units)[owner]
            last = Array(u.bus_last for u in units)[owner]
            word = Array(u.bus_data for u in units)[owner]
            releasing = owned & valid & last             # the owner pushes its last word: the bus is free now
            m.d.comb += grant.eq((~owned | releasing) & any_)
            now_taken = Signal(U, name=f"bus{b}_taken")
            m.d.comb += now_taken.eq(taken | Cat(*(grant & (pick == u) for u in range(U))))
            taken = now_taken
            for p, tx in enumerate(txs):
                m.d.comb += [tx.hdr_in[b].eq(bus_hdr[pick]), tx.hdr_push[b].eq(grant & bus_dest[pick][p])]
            with m.If(releasing):
                m.d.sync += owned.eq(0)
            with m.If(grant & (bus_words[pick] != 0)):
                m.d.sync += [owned.eq(1), owner.eq(pick), owner_dest.eq(bus_dest[pick])]
            with m.If(grant):
                m.d.sync += rr.eq(Mux(pick == U - 1, 0, pick + 1))
            for p, tx in enumerate(txs):
                m.d.comb += [tx.data_in[b].eq(word), tx.data_push[b].eq(owned & valid & owner_dest[p])]
        for u, unit in enumerate(units):
            m.d.comb += unit.bus_grant.eq(taken[u])

        # -- counters ------------------------------------------------------------------------
        for p in range(n):
            for name, pulse in (("rx", rxs[p].received), ("drop", rxs[p].dropped), ("tx", txs[p].sent)):
                ctr = getattr(self, f"stat_{name}_p{p}")
                reg = Signal(32, name=f"ctr_{name}_p{p}")
                m.d.sync += reg.eq(reg + pulse)
                m.d.comb += ctr.eq(reg)
        for name in SWITCH_COUNTERS:
            reg = Signal(32, name=f"ctr_{name}")
            m.d.sync += reg.eq(reg + sum(getattr(u, f"c_{name}") for u in units))
            m.d.comb += getattr(self, f"stat_{name}").eq(reg)
        return m
