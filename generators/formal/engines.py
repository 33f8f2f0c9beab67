"""Formal harnesses of engine-side protocols: the aggregation switch and the tile cache.

**Switch** (:class:`~hbmforge.generators.network.switch.AggregationSwitch`), every input free
except that each ``s_axis_p<i>`` link keeps the AXI4-Stream rules (``env.*``; any packet,
good or bad, may arrive on any link at any time):

* ``sw.m_axis_p<i>.held``: each output link keeps TVALID, TDATA and TLAST until TREADY;
* ``sw.m_axis_p<i>.framed``: a packet is at most ``header_beats + packet_words`` beats long;
* ``sw.tx.header_room``/``sw.tx.word_room`` (in every transmit port): its header and word
  FIFOs are never written full: the output bus grants a packet only when every destination
  has room for its header and all its words, so a granted unit never waits;
* ``sw.rx<i>.pop_valid``: a unit pops only a receive port that holds a packet.

**Tile cache** (:class:`~hbmforge.generators.memory.cache.TileCache`), its engine side, the
backing memory and the HBM store free but legal (``env.*``: the stream rules; word-aligned
engine commands; CONFIGURE/PREFETCH/FLUSH/INVALIDATE only as the family's descriptor checks
pass them; memories that return exactly the words asked for and acknowledge a write only
after its data):

* ``cache.<stream>.held``: every stream it drives (``up_data``, ``up_wdone``, ``bk_*``,
  ``st_*``) keeps valid and payload until ready;
* ``cache.<cmd>.words``: every DMA command it issues is word-aligned, whole words;
* ``cache.st_cmd.in_line``: a store read never spans two lines of the store;
* ``cache.<fifo>.room``: its order, route and store-command FIFOs are never written full;
* ``cache.<writer>.job<i>.taken``: a write job offered to a writer is always taken (the
  cache checks the writer's room before it decides, so no job is ever dropped).

Both are bounded proofs (BMC): the depth is stated with each result
(:mod:`.cases`). Dataflow of a harness::

    free inputs (assumed: legal partners) --> [Checked* component] --> outputs (asserted)
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Elaboratable, Module, ResetSignal, Signal, Value, signed

from ..memory.cache import TileCache
from ..network import switch as switch_module
from ..network.switch import AggregationSwitch
from ..network.tx import PortTx
from .axi4 import stream_properties
from .props import Properties, replaced
from .shell import free_inputs

__all__ = ["CheckedPortTx", "CheckedSwitch", "SelfCheckedSwitch", "SwitchHarness", "switch_link_properties",
           "CheckedTileCache", "SelfCheckedTileCache", "CacheHarness", "cache_properties",
           "small_switch_geometry", "small_cache_geometry", "SMALL_CACHE_WIDTH"]

#: the data width of the "small" cache harness (a 4-byte word)
SMALL_CACHE_WIDTH = 32


def small_switch_geometry(*, ports: int = 2, data_width: int = 64, packet_words: int = 2):
    """The smallest switch with every feature: ``ports`` links, 2 slots, 1 job, 2-packet buffers."""
    from hbmforge.engines.network import SwitchGeometry

    return SwitchGeometry(ports=ports, data_width=data_width, packet_words=packet_words, slots=2, jobs=1,
                          rx_packets=2, tx_packets=2)


def small_cache_geometry(replacement: str = "lru", write_policy: str = "write_back"):
    """A 2-way, 2-set cache of 2-word lines on 32-bit words, 2 fills in flight: every path of
    the cache (hits, misses, write-backs, bypasses, the walks) with little state."""
    from hbmforge.engines.memory import CacheGeometry

    return CacheGeometry(SMALL_CACHE_WIDTH // 8, 8, 2, 2, replacement, write_policy, 2)


# -- the switch ----------------------------------------------------------------------------------
class CheckedPortTx(PortTx):
    """A transmit port whose FIFOs are checked: never written full."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self.properties = Properties(m)
        buses = range(self._geom.out_buses)
        for prop, fifos in (("sw.tx.header_room", [m.submodules[f"hdrs{b}"] for b in buses] + [m.submodules.order]),
                            ("sw.tx.word_room", [m.submodules[f"words{b}"] for b in buses])):
            p.assert_(prop, Cat(*(~fifo.w_en | fifo.w_rdy for fifo in fifos)).all())
        return m


class CheckedSwitch(AggregationSwitch):
    """The switch built from ``tx_class`` ports (checked by default), its receive pops checked."""

    def __init__(self, geom, *, tx_class=CheckedPortTx):
        super().__init__(geom)
        self._tx_class = tx_class
        self.properties: Properties | None = None

    def elaborate(self, platform):
        with replaced(switch_module, PortTx=self._tx_class):
            m = super().elaborate(platform)
        p = self.properties = Properties(m)
        for i in range(self.geom.ports):
            rx = m.submodules[f"rx{i}"]
            p.assert_(f"sw.rx{i}.pop_valid", ~rx.pop | rx.head_valid)
        return m


def _axis_stream_rules(p: Properties, axis, name: str, *, checked: bool) -> None:
    stalled = p.past(axis.tvalid & ~axis.tready, name=f"{name}_stalled")
    data = p.past(axis.tdata, name=f"{name}_data")
    last = p.past(axis.tlast, name=f"{name}_last")
    rule = ~stalled | (axis.tvalid & (axis.tdata == data) & (axis.tlast == last))
    (p.assert_ if checked else p.assume)(f"{'sw' if checked else 'env'}.{name}.held", rule, after_first=True)


class SwitchHarness(Elaboratable):
    """An aggregation switch (a :class:`CheckedSwitch` of ``geom``, or ``switch``) with its link
    properties (module doc)."""

    def __init__(self, geom=None, *, switch: AggregationSwitch | None = None):
        self.switch = switch if switch is not None else CheckedSwitch(geom or small_switch_geometry())
        self.geom = self.switch.geom
        self.properties: Properties | None = None

    @property
    def ports(self):
        return free_inputs(self.switch)

    def elaborate(self, platform):
        m = Module()
        m.submodules.switch = self.switch
        p = self.properties = Properties(m)
        p.assume("env.no_reset", ~ResetSignal())
        switch_link_properties(p, self.switch)
        return m


def switch_link_properties(p: Properties, sw: AggregationSwitch, *, env: bool = True) -> None:
    """The link properties of ``sw`` (module doc) into ``p``; ``env``: assume the input links'
    stream rules too (a simulation bench that drives them checks itself with them)."""
    m = p.m
    g = sw.geom
    limit = g.header_beats + g.packet_words
    for i in range(g.ports):
        if env:
            _axis_stream_rules(p, getattr(sw, f"s_axis_p{i}"), f"s_axis_p{i}", checked=False)
        out = getattr(sw, f"m_axis_p{i}")
        _axis_stream_rules(p, out, f"m_axis_p{i}", checked=True)
        beats = Signal(range(limit + 2), name=f"tx_beats{i}")
        with m.If(out.tvalid & out.tready):
            m.d.sync += beats.eq(beats + 1)
            with m.If(out.tlast):
                m.d.sync += beats.eq(0)
        p.assert_(f"sw.m_axis_p{i}.framed", ~out.tvalid | (beats < limit))
        p.cover(f"sw.m_axis_p{i}.packet", out.tvalid & out.tready & out.tlast)


class SelfCheckedSwitch(CheckedSwitch):
    """A :class:`CheckedSwitch` that carries its link properties itself: drop it into an
    amaranth.sim bench in place of the production switch and every cycle is checked."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = Properties(m)
        switch_link_properties(p, self)
        self.properties.merge(p)
        return m


# -- the tile cache ------------------------------------------------------------------------------
_OUT_STREAMS = ("up_data", "up_wdone", "bk_cmd", "bk_wcmd", "bk_wdata", "st_cmd", "st_wcmd", "st_wdata")
_IN_STREAMS = ("up_cmd", "up_wcmd", "up_wdata", "ctl", "bk_data", "bk_wdone", "st_data", "st_wdone")
#: FIFOs whose writes the cache gates by their room itself
_GATED_FIFOS = ("rd_order", "bk_order", "st_cmdq", "uw_route")


class CheckedTileCache(TileCache):
    """A tile cache whose gated FIFOs and writer jobs are checked (module doc)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self.properties = Properties(m)
        for name in _GATED_FIFOS:
            fifo = m.submodules[name]
            p.assert_(f"cache.{name}.room", ~fifo.w_en | fifo.w_rdy)
        for name in ("st_writer", "bk_writer"):
            for i in (0, 1):
                job = getattr(m.submodules[name], f"job{i}")
                p.assert_(f"cache.{name}.job{i}.taken", ~job.valid | job.ready)
        return m


def _checked_descriptors(geometry, word_bytes: int):
    """The memory family's CACHE descriptor checks for ``geometry`` (a layout-shaped adapter)."""
    from hbmforge.engines.memory import cache_checks

    params = SimpleNamespace(line_bytes=geometry.line_bytes, ways=geometry.ways, sets=geometry.sets,
                             replacement=geometry.replacement, write_policy=geometry.write_policy,
                             mshrs=geometry.mshrs)
    layout = SimpleNamespace(word_bytes=word_bytes, kernel="formal",
                             config=SimpleNamespace(engine=lambda kind: SimpleNamespace(cache=params)))
    return cache_checks(layout)


def _memory_reads(p: Properties, cmd, data, shift: int, name: str) -> None:
    """The memory behind ``cmd``/``data`` returns exactly the words asked for (after the command)."""
    m = p.m
    owed = Signal(34, name=f"{name}_owed")
    words = Value.cast(cmd.payload.bytes) >> shift
    m.d.sync += owed.eq(owed + Value.cast(cmd.valid & cmd.ready).as_unsigned() * words
                        - (data.valid & data.ready))
    p.assume(f"env.{name}.only_asked", ~data.valid | (owed != 0))


def _memory_writes(p: Properties, cmd, data, done, shift: int, name: str) -> None:
    """The memory behind ``cmd``/``data``/``done`` acknowledges only accepted commands whose data
    is complete (the writer has one command's data in progress at a time: while words are owed,
    one of the accepted commands is not complete), without error."""
    m = p.m
    due = Signal(8, name=f"{name}_due")
    owed = Signal(signed(35), name=f"{name}_owed")
    words = Value.cast(cmd.payload.bytes) >> shift
    m.d.sync += [due.eq(due + (cmd.valid & cmd.ready) - (done.valid & done.ready)),
                 owed.eq(owed + Value.cast(cmd.valid & cmd.ready).as_unsigned() * words
                         - (data.valid & data.ready))]
    p.assume(f"env.{name}.done_after_data", ~done.valid | (due > (owed > 0)))
    p.assume(f"env.{name}.no_error", ~done.valid | ~done.payload.error)


class CacheHarness(Elaboratable):
    """A :class:`CheckedTileCache` (or ``cache``) with its stream and command properties (module doc)."""

    def __init__(self, geometry=None, *, data_width: int = SMALL_CACHE_WIDTH, cache: TileCache | None = None):
        if cache is None:
            geometry = geometry or small_cache_geometry()
            cache = CheckedTileCache(geometry, data_width=data_width)
        self.cache = cache
        self.geometry, self.data_width = cache.geometry, data_width
        self.properties: Properties | None = None

    @property
    def ports(self):
        return free_inputs(self.cache)

    def elaborate(self, platform):
        m = Module()
        m.submodules.cache = self.cache
        p = self.properties = Properties(m)
        p.assume("env.no_reset", ~ResetSignal())
        cache_properties(p, self.cache, data_width=self.data_width)
        return m


def cache_properties(p: Properties, c: TileCache, *, data_width: int, env: bool = True) -> None:
    """The stream and command properties of cache ``c`` (module doc) into ``p``; ``env``: the
    environment's rules too (assumed)."""
    from ..engine import RtlOps

    m = p.m
    shift = (data_width // 8).bit_length() - 1
    if env:
        for name in _IN_STREAMS:
            stream_properties(p, getattr(c, name), f"env.{name}", producer_checked=False)
        for name in ("up_cmd", "up_wcmd"):
            cmd = getattr(c, name)
            p.assume(f"env.{name}.words", ~cmd.valid | ((cmd.payload.addr[:shift] == 0)
                                                        & (cmd.payload.bytes[:shift] == 0)))
        ctl = c.ctl.payload
        fields = {"action": Value.cast(ctl.action), "addr": ctl.addr, "bytes": ctl.bytes, "store_addr": ctl.store}
        bad = RtlOps.any_(*(chk.fails(fields, RtlOps) for chk in _checked_descriptors(c.geometry, 1 << shift)))
        p.assume("env.ctl.checked", ~c.ctl.valid | ~bad)
        _memory_reads(p, c.bk_cmd, c.bk_data, shift, "bk")
        _memory_reads(p, c.st_cmd, c.st_data, shift, "st")
        _memory_writes(p, c.bk_wcmd, c.bk_wdata, c.bk_wdone, shift, "bk_w")
        _memory_writes(p, c.st_wcmd, c.st_wdata, c.st_wdone, shift, "st_w")
    for name in _OUT_STREAMS:
        stream_properties(p, getattr(c, name), f"cache.{name}", producer_checked=True)
    for name in ("bk_cmd", "bk_wcmd", "st_cmd", "st_wcmd"):
        cmd = getattr(c, name)
        p.assert_(f"cache.{name}.words", ~cmd.valid | ((cmd.payload.addr[:shift] == 0)
                                                       & (cmd.payload.bytes[:shift] == 0)))
    line = c.geometry.line_bytes
    st = c.st_cmd
    end = Signal(Value.cast(st.payload.bytes).shape().width + 1, name="st_end")
    m.d.comb += end.eq((st.payload.addr & (line - 1)) + st.payload.bytes)
    p.assert_("cache.st_cmd.in_line", ~st.valid | (end <= line))
    p.cover("cache.st_read", st.valid & st.ready)
    p.cover("cache.up_word", c.up_data.valid & c.up_data.ready)
    p.cover("cache.up_write_done", c.up_wdone.valid & c.up_wdone.ready)


class SelfCheckedTileCache(CheckedTileCache):
    """A :class:`CheckedTileCache` that carries the harness's cache properties itself (for an
    amaranth.sim bench; the environment's rules are not checked there)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = Properties(m)
        cache_properties(p, self, data_width=self._W, env=False)
        self.properties.merge(p)
        return m
