"""AXI4 manager properties on one port (docs/architecture.md §1), and the memory's rules assumed.

Asserted of the manager (the kernel's ``m_axi_<port>``), per address channel ``ar``/``aw``:

* ``<ch>.valid_held``: VALID, once high, stays high until READY;
* ``<ch>.stable``: the address, length, size, burst type and ID do not change while stalled;
* ``<ch>.incr``, ``<ch>.size``: INCR bursts of full-width beats only;
* ``<ch>.max_len``: at most ``max_burst_beats`` beats; ``<ch>.aligned``: word-aligned address;
* ``<ch>.no_4k_cross``: the burst ends at or before the next 4 KiB boundary;
* ``ar.outstanding`` / ``aw.outstanding``: bursts in flight (AR accepted, RLAST not yet seen; AW
  accepted, B not yet seen) never exceed the port's limit;

and of the write data channel: ``w.valid_held``, ``w.stable`` (data, strobes, WLAST),
``w.full_strobes``, ``w.has_address`` (a W beat belongs to an AW already presented), and
``w.last_count`` (WLAST exactly on beat ``awlen + 1``, checked against a queue of the lengths
of the AWs whose data is still due). ``r.ready`` asserts the shell's promise that R is never
back-pressured (credits, docs/architecture.md §1).

Assumed of the memory (``mem.*``): it answers only bursts in flight, with RLAST exactly on the
last beat of the burst of that ID (one length queue per read ID), and B only for bursts whose
data is complete; it holds R and B stable while they wait.
"""
from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, Value

from ..axi import BURST_INCR
from .props import Properties

__all__ = ["LengthQueue", "axi4_manager_properties", "stream_properties"]

_PAGE = 4096


class LengthQueue:
    """A small FIFO of burst lengths for a checker (registers; ``depth`` entries).

    ``push``/``pop`` are driven by the caller (comb); ``head`` is the oldest entry,
    ``count`` the number held. ``overflow`` rises if a push finds it full without a pop.
    """

    def __init__(self, m: Module, *, depth: int, width: int = 8, name: str = "q"):
        self.depth = depth
        self.entries = Array(Signal(width, name=f"{name}_e{i}") for i in range(depth))
        self.rd = Signal(range(depth), name=f"{name}_rd")
        self.wr = Signal(range(depth), name=f"{name}_wr")
        self.count = Signal(range(depth + 1), name=f"{name}_count")
        self.push = Signal(name=f"{name}_push")
        self.pop = Signal(name=f"{name}_pop")
        self.data = Signal(width, name=f"{name}_data")
        self.head = Signal(width, name=f"{name}_head")
        m.d.comb += self.head.eq(self.entries[self.rd])
        nxt = lambda p: Mux(p == depth - 1, 0, p + 1)  # noqa: E731
        with m.If(self.push):
            m.d.sync += [self.entries[self.wr].eq(self.data), self.wr.eq(nxt(self.wr))]
        with m.If(self.pop):
            m.d.sync += self.rd.eq(nxt(self.rd))
        m.d.sync += self.count.eq(self.count + self.push - self.pop)


def _channel_properties(p: Properties, bus, ch: str, *, shift: int, max_burst_beats: int) -> None:
    m = p.m
    valid, ready = getattr(bus, f"{ch}valid"), getattr(bus, f"{ch}ready")
    fields = [getattr(bus, f"{ch}{f}") for f in ("addr", "len", "size", "burst", "id")]
    stalled = p.past(valid & ~ready, name=f"{ch}_stalled")
    p.assert_(f"{ch}.valid_held", ~stalled | valid, after_first=True)
    pasts = [p.past(f, name=f"{ch}_past_{i}") for i, f in enumerate(fields)]
    same = 1
    for f, old in zip(fields, pasts):
        same = same & (f == old)
    p.assert_(f"{ch}.stable", ~stalled | same, after_first=True)
    addr, length = getattr(bus, f"{ch}addr"), getattr(bus, f"{ch}len")
    p.assert_(f"{ch}.incr", ~valid | (getattr(bus, f"{ch}burst") == BURST_INCR))
    p.assert_(f"{ch}.size", ~valid | (getattr(bus, f"{ch}size") == shift))
    p.assert_(f"{ch}.max_len", ~valid | (length < max_burst_beats))
    if shift:
        p.assert_(f"{ch}.aligned", ~valid | (addr[:shift] == 0))
    end = Signal(14, name=f"{ch}_end")         # page offset + bytes of the burst
    m.d.comb += end.eq(addr[:12] + ((length + 1) << shift))
    p.assert_(f"{ch}.no_4k_cross", ~valid | (end <= _PAGE))
    p.cover(f"{ch}.burst_to_page_end", valid & ready & (end == _PAGE))


def axi4_manager_properties(p: Properties, bus, *, data_width: int, max_burst_beats: int,
                            read_ids: dict[int, int] | None, write_limit: int | None,
                            rready_always: bool = True) -> None:
    """Add the AXI4 manager properties of ``bus`` (module doc) to ``p``.

    ``read_ids`` maps each ARID the port issues to its outstanding limit (None: no reads);
    ``write_limit`` is the outstanding AW limit (None: no writes).
    """
    m = p.m
    shift = (data_width // 8).bit_length() - 1
    if read_ids:
        _channel_properties(p, bus, "ar", shift=shift, max_burst_beats=max_burst_beats)
        ar_hs = bus.arvalid & bus.arready
        r_hs = bus.rvalid & bus.rready
        total_limit = sum(read_ids.values())
        outstanding = Signal(range(total_limit + 2), name="rd_outstanding")
        m.d.sync += outstanding.eq(outstanding + ar_hs - (r_hs & bus.rlast))
        p.assert_("ar.outstanding", outstanding <= total_limit)
        p.assert_("ar.known_id", ~bus.arvalid | _one_of(bus.arid, read_ids))
        if rready_always:
            p.assert_("r.ready", bus.rready)
        # the memory: per ID, R beats only for an accepted burst, RLAST on its last beat
        any_due = 0
        for arid, limit in read_ids.items():
            q = LengthQueue(m, depth=limit + 1, name=f"rq{arid}")
            beat = Signal(8, name=f"r{arid}_beat")
            mine = r_hs & (bus.rid == arid)
            m.d.comb += [q.data.eq(bus.arlen), q.push.eq(ar_hs & (bus.arid == arid)),
                         q.pop.eq(mine & bus.rlast)]
            p.assume(f"mem.r{arid}.only_in_flight", ~(bus.rvalid & (bus.rid == arid)) | (q.count != 0))
            p.assume(f"mem.r{arid}.last", ~(bus.rvalid & (bus.rid == arid)) | (bus.rlast == (beat == q.head)))
            with m.If(mine):
                m.d.sync += beat.eq(Mux(bus.rlast, 0, beat + 1))
            any_due = any_due | (q.count != 0)
        p.assume("mem.r.known_id", ~bus.rvalid | _one_of(bus.rid, read_ids))
        p.cover("ar.two_in_flight", outstanding >= 2)
    if write_limit is not None:
        _channel_properties(p, bus, "aw", shift=shift, max_burst_beats=max_burst_beats)
        aw_hs = bus.awvalid & bus.awready
        w_hs = bus.wvalid & bus.wready
        b_hs = bus.bvalid & bus.bready
        w_stalled = p.past(bus.wvalid & ~bus.wready, name="w_stalled")
        p.assert_("w.valid_held", ~w_stalled | bus.wvalid, after_first=True)
        w_old = [p.past(s, name=f"w_past_{n}") for n, s in (("data", bus.wdata), ("strb", bus.wstrb),
                                                           ("last", bus.wlast))]
        p.assert_("w.stable", ~w_stalled | ((bus.wdata == w_old[0]) & (bus.wstrb == w_old[1])
                                            & (bus.wlast == w_old[2])), after_first=True)
        p.assert_("w.full_strobes", ~bus.wvalid | (bus.wstrb == (1 << len(bus.wstrb)) - 1))
        # lengths of the AWs accepted whose W burst is not complete; W beats with an empty queue
        # belong to the AW presented now (a writer may send data before AWREADY). Such a burst
        # can finish before its AW is accepted: ``early_done`` counts those.
        q = LengthQueue(m, depth=write_limit + 2, name="wq")
        w_beat = Signal(8, name="w_beat")
        head_len = Signal(8, name="w_head_len")
        early_done = Signal(range(write_limit + 3), name="w_early_done")
        m.d.comb += head_len.eq(Mux(q.count != 0, q.head, bus.awlen))
        p.assert_("w.has_address", ~bus.wvalid | (q.count != 0) | (bus.awvalid & (early_done == 0)))
        p.assert_("w.last_count", ~bus.wvalid | (bus.wlast == (w_beat == head_len)))
        with m.If(w_hs):
            m.d.sync += w_beat.eq(Mux(bus.wlast, 0, w_beat + 1))
        w_done = w_hs & bus.wlast
        late_aw = Signal(name="w_late_aw")          # AW accepted after its data finished
        done_with_aw = Signal(name="w_done_with_aw")  # data finishes as its AW is accepted
        early = Signal(name="w_early")               # data finishes, its AW not accepted yet
        m.d.comb += [
            late_aw.eq(aw_hs & (early_done != 0)),
            done_with_aw.eq(w_done & (q.count == 0) & aw_hs),
            early.eq(w_done & (q.count == 0) & ~aw_hs),
            q.data.eq(bus.awlen),
            q.push.eq(aw_hs & ~late_aw & ~done_with_aw),
            q.pop.eq(w_done & (q.count != 0)),
        ]
        m.d.sync += early_done.eq(early_done + early - late_aw)
        # B: one per AW whose data is complete
        data_done = Signal(range(write_limit + 3), name="w_bursts_done")   # accepted AW + full W, no B
        completes = q.pop + late_aw + done_with_aw
        m.d.sync += data_done.eq(data_done + completes - b_hs)
        outstanding = Signal(range(write_limit + 3), name="wr_outstanding")
        m.d.sync += outstanding.eq(outstanding + aw_hs - b_hs)
        p.assert_("aw.outstanding", outstanding <= write_limit)
        p.assume("mem.b.only_after_data", ~bus.bvalid | (data_done != 0))
        b_waiting = p.past(bus.bvalid & ~bus.bready, name="b_waiting")
        b_resp = p.past(bus.bresp, name="b_resp_past")
        p.assume("mem.b.held", ~b_waiting | (bus.bvalid & (bus.bresp == b_resp)), after_first=True)
        p.cover("w.burst_done", w_hs & bus.wlast)


def _one_of(value, choices) -> object:
    out = 0
    for c in choices:
        out = out | (value == c)
    return out


def stream_properties(p: Properties, stream, name: str, *, producer_checked: bool) -> None:
    """amaranth.lib.stream rules on ``stream``: payload and valid held until ready.

    ``producer_checked``: the module under proof drives the stream (assert), else its
    environment does (assume).
    """
    stalled = p.past(stream.valid & ~stream.ready, name=f"{name.replace('.', '_')}_stalled")
    payload = p.past(stream.payload, name=f"{name.replace('.', '_')}_payload")
    rule = ~stalled | (stream.valid & (Value.cast(stream.payload) == payload))
    (p.assert_ if producer_checked else p.assume)(f"{name}.held", rule, after_first=True)
