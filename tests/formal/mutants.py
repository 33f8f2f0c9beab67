"""Deliberately broken shell components: one mutation per property, each one its own test-only subclass.

A mutation overrides signals after the production ``elaborate`` (a later ``m.d.comb``
statement wins in Amaranth) or builds a block with a wrong internal parameter. The property
it breaks is named with it; tests/formal/test_formal_mutations.py checks that SymbiYosys finds
a counterexample for exactly that property's name (others may fail too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from amaranth.hdl import Signal

from hbmforge.generators.formal.engines import (CacheHarness, CheckedPortTx, CheckedSwitch, CheckedTileCache,
                                                SwitchHarness, small_cache_geometry, small_switch_geometry)
from hbmforge.generators.formal.props import replaced
from hbmforge.generators.formal.shell import (CheckedAxiPort, CheckedBurstReader, CheckedBurstWriter,
                                              ControlHarness, PortHarness)
from hbmforge.generators.shell import dma
from hbmforge.generators.shell.control import ControlSlave

#: the port every port mutant is built on: one reader, one writer (AxiPort passes both straight through)
PORT = dict(data_width=32, addr_width=16, id_width=2, readers={"a": 0}, writer="o", max_burst_beats=4,
            max_outstanding=2)
SHIFT = 2


def _flip(m) -> Signal:
    flip = Signal(name="mutant_flip")
    m.d.sync += flip.eq(~flip)
    return flip


def _patched(name: str, factory):
    return replaced(dma, **{name: factory(getattr(dma, name))})


class _Port(CheckedAxiPort):
    """A port whose elaborate ends with ``self.mutate(m, reader_bus, writer_bus, flip)``."""

    mutate: Callable = None

    def elaborate(self, platform):
        m = super().elaborate(platform)
        rd = self._reader_blocks["a"].bus
        wr = self._writer_block.bus
        type(self).mutate(self, m, rd, wr, _flip(m))
        return m


def _port(mutate=None, *, reader_class=CheckedBurstReader, writer_class=CheckedBurstWriter):
    cls = type("MutantPort", (_Port,), {"mutate": mutate or (lambda self, m, rd, wr, flip: None)})
    return PortHarness(cls(reader_class=reader_class, writer_class=writer_class, **PORT),
                       max_outstanding=PORT["max_outstanding"])


# -- readers/writers with a broken inside ------------------------------------------------------
class OverIssuingReader(CheckedBurstReader):
    """Issues one burst more than the outstanding limit it was built for."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._max_outstanding += 1


class OverIssuingWriter(CheckedBurstWriter):
    def __init__(self, **kw):
        super().__init__(**kw)
        self._max_outstanding += 1


class ShortFifoReader(CheckedBurstReader):
    """Its data FIFO holds fewer words than the credits it hands out."""

    def elaborate(self, platform):
        with _patched("StepFIFOBuffered", lambda orig: lambda *, width, depth: orig(width=width, depth=depth - 3)):
            return super().elaborate(platform)


class ShortLengthQueueWriter(CheckedBurstWriter):
    """Its W-length queue is two entries shorter than its burst tracker (one less still fits: a
    length leaves the queue when its W burst starts, before the tracker's entry retires at B)."""

    def elaborate(self, platform):
        def factory(orig):
            return lambda *, width, depth: orig(width=width, depth=max(0, depth - 2) if width == 8 else depth)
        with _patched("StepFIFO", factory):
            return super().elaborate(platform)


def _writer_override(target: str, value_of):
    class W(CheckedBurstWriter):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            fifo_name, member = target.split(".")
            sig = getattr(m.submodules[fifo_name], member) if fifo_name != "self" else getattr(self, member).valid
            m.d.comb += sig.eq(value_of(m))
            return m
    return W


class DroppingReader(CheckedBurstReader):
    """Withdraws a data word while the consumer stalls."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.data.valid.eq(m.submodules.fifo.r_rdy & _flip(m))
        return m


# -- control slaves ------------------------------------------------------------------------------
def _control(layout, mutate):
    class C(ControlSlave):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            mutate(self, m, _flip(m))
            return m
    return ControlHarness(control=C(layout))


@dataclass(frozen=True)
class Mutant:
    prop: str                 # the property it must break
    what: str
    build: Callable           # (layout) -> harness
    depth: int = 10           # BMC steps that reach the failure


def _p(prop, what, mutate=None, depth=10, **classes):
    return Mutant(prop, what, lambda layout: _port(mutate, **classes), depth)


def _c(prop, what, mutate):
    return Mutant(prop, what, lambda layout: _control(layout, mutate))


PORT_MUTANTS = [
    _p("ar.valid_held", "ARVALID withdrawn every other cycle",
       lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.arvalid.eq(rd.arvalid & f))),
    _p("ar.stable", "ARADDR moves while stalled", lambda s, m, rd, wr, f: m.d.comb.__iadd__(
        s.bus.araddr.eq(rd.araddr + (f << (SHIFT + 4))))),
    _p("ar.incr", "FIXED bursts", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.arburst.eq(0))),
    _p("ar.size", "half-width beats", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.arsize.eq(SHIFT - 1))),
    _p("ar.max_len", "one beat too many", lambda s, m, rd, wr, f: m.d.comb.__iadd__(
        s.bus.arlen.eq(rd.arlen + PORT["max_burst_beats"]))),
    _p("ar.aligned", "byte address", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.araddr.eq(rd.araddr | 1))),
    _p("ar.no_4k_cross", "bursts start 4 bytes before a page end",
       lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.araddr.eq(rd.araddr | 0xFFC))),
    _p("ar.known_id", "a foreign ARID", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.arid.eq(3))),
    _p("r.ready", "R back-pressured", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.rready.eq(f))),
    _p("ar.outstanding", "reader issues one burst past its limit", depth=14, reader_class=OverIssuingReader),
    # the reader's registered room flag (088f4ae) issues an AR at most every third cycle and its
    # first a cycle later: the short FIFO fills, and the first word is offered, later than they did
    # (at depths 14 and 10 these two mutants passed; found by the slow suite in session 46)
    _p("rd.fifo_room", "reader FIFO smaller than its credits", depth=20, reader_class=ShortFifoReader),
    _p("rd.data.held", "reader withdraws a word", depth=14, reader_class=DroppingReader),
    _p("aw.valid_held", "AWVALID withdrawn every other cycle",
       lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.awvalid.eq(wr.awvalid & f))),
    _p("aw.stable", "AWADDR moves while stalled", lambda s, m, rd, wr, f: m.d.comb.__iadd__(
        s.bus.awaddr.eq(wr.awaddr + (f << (SHIFT + 4))))),
    _p("aw.incr", "WRAP bursts", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.awburst.eq(2))),
    _p("aw.size", "half-width beats", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.awsize.eq(SHIFT - 1))),
    _p("aw.max_len", "one beat too many", lambda s, m, rd, wr, f: m.d.comb.__iadd__(
        s.bus.awlen.eq(wr.awlen + PORT["max_burst_beats"]))),
    _p("aw.aligned", "byte address", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.awaddr.eq(wr.awaddr | 2))),
    _p("aw.no_4k_cross", "bursts start 4 bytes before a page end",
       lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.awaddr.eq(wr.awaddr | 0xFFC))),
    _p("aw.outstanding", "writer issues one burst past its limit", depth=14, writer_class=OverIssuingWriter),
    _p("w.valid_held", "WVALID withdrawn every other cycle",
       lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.wvalid.eq(wr.wvalid & f))),
    _p("w.stable", "WDATA moves while stalled", lambda s, m, rd, wr, f: m.d.comb.__iadd__(
        s.bus.wdata.eq(wr.wdata ^ f))),
    _p("w.full_strobes", "a byte left out", lambda s, m, rd, wr, f: m.d.comb.__iadd__(
        s.bus.wstrb.eq(wr.wstrb & 0b1110))),
    _p("w.last_count", "WLAST on every beat", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.wlast.eq(1))),
    _p("w.has_address", "no AW at all", lambda s, m, rd, wr, f: m.d.comb.__iadd__(s.bus.awvalid.eq(0))),
    _p("wr.wlen_room", "W-length queue shorter than the tracker", depth=14, writer_class=ShortLengthQueueWriter),
    _p("wr.track_room", "tracker pushed every cycle",
       writer_class=_writer_override("track.w_en", lambda m: 1)),
    _p("wr.track_no_underflow", "tracker popped every cycle",
       writer_class=_writer_override("track.r_en", lambda m: 1)),
    _p("wr.wlen_no_underflow", "W lengths popped every cycle",
       writer_class=_writer_override("wlen.r_en", lambda m: 1)),
    _p("wr.fifo_no_underflow", "data popped every cycle",
       writer_class=_writer_override("fifo.r_en", lambda m: 1)),
    _p("wr.done.held", "done withdrawn while stalled",
       writer_class=_writer_override("self.done", _flip)),
]

CONTROL_MUTANTS = [
    _c("b.valid_held", "BVALID toggles", lambda s, m, f: m.d.comb.__iadd__(s.bus.bvalid.eq(f))),
    _c("r.valid_held", "RVALID toggles", lambda s, m, f: m.d.comb.__iadd__(s.bus.rvalid.eq(f))),
    _c("r.stable", "RDATA moves while waiting", lambda s, m, f: m.d.comb.__iadd__(s.bus.rdata.eq(f))),
    _c("b.okay", "SLVERR on writes", lambda s, m, f: m.d.comb.__iadd__(s.bus.bresp.eq(2))),
    _c("r.okay", "SLVERR on reads", lambda s, m, f: m.d.comb.__iadd__(s.bus.rresp.eq(2))),
    _c("b.after_write", "B without a write", lambda s, m, f: m.d.comb.__iadd__(s.bus.bvalid.eq(1))),
    _c("r.after_read", "R without a read", lambda s, m, f: m.d.comb.__iadd__(s.bus.rvalid.eq(1))),
    _c("aw.in_flight", "AW always ready", lambda s, m, f: m.d.comb.__iadd__(s.bus.awready.eq(1))),
    _c("w.in_flight", "W always ready", lambda s, m, f: m.d.comb.__iadd__(s.bus.wready.eq(1))),
    _c("ar.one_in_flight", "AR always ready", lambda s, m, f: m.d.comb.__iadd__(s.bus.arready.eq(1))),
    _c("aw.accounted", "AW ready while a write is held", lambda s, m, f: m.d.comb.__iadd__(s.bus.awready.eq(f))),
    _c("w.accounted", "W ready while a write is held", lambda s, m, f: m.d.comb.__iadd__(s.bus.wready.eq(f))),
    _c("ar.accounted", "AR ready while a read waits", lambda s, m, f: m.d.comb.__iadd__(s.bus.arready.eq(f))),
    _c("ap.start_idle", "start every cycle", lambda s, m, f: m.d.comb.__iadd__(s.start.eq(1))),
    _c("ap.start_pulse", "start held two cycles", lambda s, m, f: m.d.comb.__iadd__(
        s.start.eq(~s.busy | f))),
    _c("ap.busy_after_start", "never busy", lambda s, m, f: m.d.comb.__iadd__(s.busy.eq(0))),
    _c("ap.busy_until_done", "busy drops early", lambda s, m, f: m.d.comb.__iadd__(s.busy.eq(f))),
    _c("ap.idle_after_done", "busy forever", lambda s, m, f: m.d.comb.__iadd__(s.busy.eq(1))),
]

#: one per property group, run in CI (the whole list under -m slow)
CI_MUTANTS = ("ar.no_4k_cross", "ar.stable", "w.last_count", "wr.track_room", "b.valid_held", "ap.start_idle",
              "sw.rx1.pop_valid", "cache.st_cmd.in_line")


# -- the switch and the tile cache ---------------------------------------------------------------
class LyingHeaderRoomTx(CheckedPortTx):
    """Says its header FIFO has room when it is full."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += [room.eq(1) for room in self.hdr_room]
        return m


class LyingWordRoomTx(CheckedPortTx):
    """Counts its word FIFO as empty whatever it holds."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += [free.eq(self._geom.tx_packets * self._geom.packet_words) for free in self.data_free]
        return m


#: the transmit-port mutants' switch: one-beat headers and one-word packets reach a full FIFO sooner
SHORT_PACKETS = dict(data_width=128, packet_words=1)


def _switch(mutate=None, *, tx_class=CheckedPortTx, short: bool = False):
    class S(CheckedSwitch):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            if mutate is not None:
                mutate(self, m, _flip(m))
            return m
    return SwitchHarness(switch=S(small_switch_geometry(**(SHORT_PACKETS if short else {})), tx_class=tx_class))


def _s(prop, what, mutate=None, depth=10, **kw):
    return Mutant(prop, what, lambda layout: _switch(mutate, **kw), depth)


def _link_mutants(i: int) -> list[Mutant]:
    def out(s):
        return getattr(s, f"m_axis_p{i}")
    return [
        _s(f"sw.m_axis_p{i}.held", f"link {i}: TVALID toggles every cycle",
           lambda s, m, f: m.d.comb.__iadd__(out(s).tvalid.eq(f)), depth=4),
        _s(f"sw.m_axis_p{i}.framed", f"link {i}: TVALID stuck high, no TLAST",
           lambda s, m, f: m.d.comb.__iadd__([out(s).tvalid.eq(1), out(s).tlast.eq(0)]), depth=8),
        _s(f"sw.rx{i}.pop_valid", f"port {i}'s receive buffer popped every cycle",
           lambda s, m, f: m.d.comb.__iadd__(m.submodules[f"rx{i}"].pop.eq(1)), depth=3),
    ]


SWITCH_MUTANTS = [
    *_link_mutants(0), *_link_mutants(1),
    _s("sw.tx.header_room", "a transmit port claims header room when full", depth=8, tx_class=LyingHeaderRoomTx,
       short=True),
    _s("sw.tx.word_room", "a transmit port never counts its words", depth=12, tx_class=LyingWordRoomTx, short=True),
]


def _cache(mutate):
    class C(CheckedTileCache):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            mutate(self, m, _flip(m))
            return m
    return CacheHarness(cache=C(small_cache_geometry(), data_width=32))


def _k(prop, what, mutate, depth=6):
    return Mutant(prop, what, lambda layout: _cache(mutate), depth)


def _stream_mutant(name):
    return _k(f"cache.{name}.held", f"{name} valid toggles every cycle",
              lambda s, m, f: m.d.comb.__iadd__(getattr(s, name).valid.eq(f)), depth=4)


def _command_mutant(name):
    return _k(f"cache.{name}.words", f"{name} offered every cycle at a byte address",
              lambda s, m, f: m.d.comb.__iadd__([getattr(s, name).valid.eq(1), getattr(s, name).payload.addr.eq(2)]),
              depth=3)


CACHE_MUTANTS = [
    *(_stream_mutant(n) for n in ("up_data", "up_wdone", "bk_cmd", "bk_wcmd", "bk_wdata", "st_cmd", "st_wcmd",
                                 "st_wdata")),
    *(_command_mutant(n) for n in ("bk_cmd", "bk_wcmd", "st_cmd", "st_wcmd")),
    _k("cache.st_cmd.in_line", "a store read of two lines", lambda s, m, f: m.d.comb.__iadd__(
        [s.st_cmd.valid.eq(1), s.st_cmd.payload.addr.eq(0), s.st_cmd.payload.bytes.eq(2 * s.geometry.line_bytes)]),
        depth=3),
    *(_k(f"cache.{n}.room", f"{n} written every cycle", lambda s, m, f, n=n: m.d.comb.__iadd__(
        m.submodules[n].w_en.eq(1)), depth=11) for n in ("rd_order", "bk_order", "st_cmdq", "uw_route")),
    *(_k(f"cache.{w}.job{i}.taken", f"{w} offered a job every cycle", lambda s, m, f, w=w, i=i: m.d.comb.__iadd__(
        getattr(m.submodules[w], f"job{i}").valid.eq(1)), depth=11)
      for w in ("st_writer", "bk_writer") for i in (0, 1)),
]
