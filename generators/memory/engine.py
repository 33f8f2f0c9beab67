"""The memory engine: the tile cache and the oblivious map behind one job interface.

Dataflow::

    job (CACHE) -> CONFIGURE / PREFETCH / FLUSH / INVALIDATE -> cache.ctl -> done
                   STATS -> cache.ctl (waits until the cache is quiet)
                         -> out: 16 counters, then a tag word per line (u64 LE) -> done
    job (OMAP)  -> omap unit: HBM through src/out, host bins through the backing port -> done, fault
    the other engines' w_cmd[port] ... (via_*) -> cache.up_* (transparent reads and writes)
    cache.bk_* -> w<port> (host/DDR)      cache.st_* -> w<store> (HBM, kept by the cache)

With a cache, ``w<port>`` and ``w<store>`` are resident: wired to this engine at all times,
so lines fill in the background (a PREFETCH job is done once its lines are looked up). An
OMAP job takes the backing port from the cache once the cache is quiet. The CACHE_* registers
count each run (cumulative counters minus their value at the run's start).
"""
# No `from __future__ import annotations`: data layouts are built from real values.
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring

from hbmforge.encodings import CacheAction, ErrorCode, Opcode
from hbmforge.engines.memory import CACHE_COUNTERS, cache_geometry, omap_geometry
from hbmforge.layout import DesignLayout

from ..skid import slice_stream
from .cache import TileCache
from .omap import ObliviousMapUnit
from .signature import memory_signature

__all__ = ["MemoryEngine"]


class MemoryEngine(wiring.Component):
    """The memory engine of a :class:`~hbmforge.layout.DesignLayout` with a ``memory`` engine."""

    def __init__(self, layout: DesignLayout):
        if not isinstance(layout, DesignLayout):
            raise TypeError(f"layout must be a DesignLayout, got {type(layout).__name__}")
        cfg = layout.config.engine("memory")
        if cfg is None:
            raise ValueError(f"config {layout.config.name!r} has no memory engine")
        self._layout = layout
        self._cache_geom = cache_geometry(layout)
        self._omap_geom = omap_geometry(layout)
        self._port = cfg.port
        self._store = cfg.exclusive_ports(layout.config)[0] if cfg.cache is not None else None
        super().__init__(memory_signature(layout))

    @property
    def layout(self) -> DesignLayout:
        return self._layout

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        W = lay.config.data_width
        WB = W // 8
        P, S = self._port, self._store
        ch = self.signature.channels
        # the job record is taken at the handshake: the command processor loads the next
        # descriptor into its register while this one runs
        job = Signal(self.signature.job_layout)

        cache = omap = None
        if self._cache_geom is not None:
            m.submodules.cache = cache = TileCache(self._cache_geom, data_width=W)
        if self._omap_geom is not None:
            m.submodules.omap = omap = ObliviousMapUnit(self._omap_geom)

        # unused stream channels of this engine stay idle
        used = {P} | ({S} if S is not None else set())
        for i in range(ch.stream_readers):
            if i not in used:
                m.d.comb += [self.w_cmd[i].valid.eq(0), self.w_data[i].ready.eq(0)]
        for i in range(ch.stream_writers):
            if i not in used:
                m.d.comb += [self.sw_cmd[i].valid.eq(0), self.sw_data[i].valid.eq(0), self.sw_done[i].ready.eq(0)]

        omap_owns = Signal()            # the backing port follows the oblivious map
        if cache is not None:
            # the other engines' traffic of the backing port goes through the cache
            wiring.connect(m, wiring.flipped(self.via_cmd[0]), cache.up_cmd)
            wiring.connect(m, cache.up_data, wiring.flipped(self.via_data[0]))
            wiring.connect(m, wiring.flipped(self.via_wcmd[0]), cache.up_wcmd)
            wiring.connect(m, wiring.flipped(self.via_wdata[0]), cache.up_wdata)
            wiring.connect(m, cache.up_wdone, wiring.flipped(self.via_wdone[0]))
            wiring.connect(m, cache.st_cmd, wiring.flipped(self.w_cmd[S]))
            wiring.connect(m, wiring.flipped(self.w_data[S]), cache.st_data)
            wiring.connect(m, cache.st_wcmd, wiring.flipped(self.sw_cmd[S]))
            wiring.connect(m, cache.st_wdata, wiring.flipped(self.sw_data[S]))
            wiring.connect(m, wiring.flipped(self.sw_done[S]), cache.st_wdone)

        # the backing port: the cache's, or the map's while an OMAP job runs
        def backing(src_cmd, src_data, src_wcmd, src_wdata, src_wdone, cond):
            with m.If(cond):
                m.d.comb += [self.w_cmd[P].valid.eq(src_cmd.valid), self.w_cmd[P].payload.eq(src_cmd.payload),
                             src_cmd.ready.eq(self.w_cmd[P].ready),
                             src_data.valid.eq(self.w_data[P].valid), src_data.payload.eq(self.w_data[P].payload),
                             self.w_data[P].ready.eq(src_data.ready),
                             self.sw_cmd[P].valid.eq(src_wcmd.valid), self.sw_cmd[P].payload.eq(src_wcmd.payload),
                             src_wcmd.ready.eq(self.sw_cmd[P].ready),
                             self.sw_data[P].valid.eq(src_wdata.valid), self.sw_data[P].payload.eq(src_wdata.payload),
                             src_wdata.ready.eq(self.sw_data[P].ready),
                             src_wdone.valid.eq(self.sw_done[P].valid), src_wdone.payload.eq(self.sw_done[P].payload),
                             self.sw_done[P].ready.eq(src_wdone.ready)]
        if cache is not None:
            backing(cache.bk_cmd, cache.bk_data, cache.bk_wcmd, cache.bk_wdata, cache.bk_wdone, ~omap_owns)
        if omap is not None:
            backing(omap.h_cmd, omap.h_data, omap.h_wcmd, omap.h_wdata, omap.h_wdone,
                    omap_owns if cache is not None else Const(1, 1))
            # HBM state through the data port
            m.d.comb += [self.src_cmd.valid.eq(omap.rd_cmd.valid), self.src_cmd.payload.eq(omap.rd_cmd.payload),
                         omap.rd_cmd.ready.eq(self.src_cmd.ready),
                         omap.rd_data.valid.eq(self.src_data.valid), omap.rd_data.payload.eq(self.src_data.payload),
                         self.src_data.ready.eq(omap.rd_data.ready)]
        else:
            m.d.comb += [self.src_cmd.valid.eq(0), self.src_data.ready.eq(0)]

        # -- per-run counters for the CACHE_* registers ---------------------------------------
        if cache is not None:
            for c in CACHE_COUNTERS:
                base = Signal(64, name=f"base_{c}")
                with m.If(self.clear):
                    m.d.sync += base.eq(getattr(cache, c))
                # registered: the control block's read mux starts at flip-flops (the subtract in
                # front of it was a 3.7 ns path into s_axi_control_rdata)
                m.d.sync += getattr(self, f"cache_{c}").eq(getattr(cache, c) - base)

        # -- jobs -------------------------------------------------------------------------------
        fault = Signal(ErrorCode)
        stats_words = self._cache_geom.stats_bytes // WB if cache is not None else 0
        per_word = max(1, WB // 8)
        # u64 index within STATS, as wide as the block needs (32 bits made k's compares carry
        # chains: 3.4 ns into k_tag)
        k = Signal(range(max(2, stats_words * per_word + 1)))
        word = Signal(W)
        lane = Signal(range(per_word + 1))
        sent = Signal(32)
        out_valid = Signal()
        tag_wait = Signal(2)
        counters = [getattr(cache, c) for c in CACHE_COUNTERS] if cache is not None else []
        # the data port's write command, data and acknowledgements through register slices (their
        # valid/ready came from this state machine and the map's: 4.2 and 3.4 ns paths into the
        # port in the Yosys estimate)
        out_cmd = self.out_cmd.signature.create()
        out_data = self.out_data.signature.create()
        slice_stream(m, "out_cmd_slice", out_cmd, self.out_cmd)
        slice_stream(m, "out_data_slice", out_data, self.out_data)
        out_done = self.out_done.signature.flip().create()          # and its acknowledgements
        slice_stream(m, "out_done_slice", self.out_done, out_done)
        m.d.comb += [out_cmd.payload.addr.eq(job.addr), out_data.payload.eq(word),
                     out_data.valid.eq(out_valid)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.job.ready.eq(1)
                with m.If(self.job.valid):
                    m.d.sync += [fault.eq(ErrorCode.NONE), job.eq(self.job.payload)]
                    with m.If(self.job.payload.op == Opcode.OMAP):
                        m.next = "OMAP_WAIT" if cache is not None else "OMAP"
                    with m.Else():
                        m.next = "CTL" if cache is not None else "DONE"
            if cache is not None:
                with m.State("CTL"):
                    m.d.comb += [cache.ctl.valid.eq(1), cache.ctl.payload.action.eq(job.action),
                                 cache.ctl.payload.addr.eq(job.addr), cache.ctl.payload.bytes.eq(job.bytes),
                                 cache.ctl.payload.store.eq(job.store_addr)]
                    with m.If(cache.ctl.ready):
                        m.next = "CTL_W"
                with m.State("CTL_W"):
                    with m.If(cache.ctl_done):
                        with m.If(job.action == CacheAction.STATS):
                            m.d.sync += [k.eq(0), lane.eq(0), sent.eq(0), word.eq(0)]
                            m.next = "STATS_CMD"
                        with m.Else():
                            m.next = "DONE"
                with m.State("STATS_CMD"):
                    m.d.comb += [out_cmd.valid.eq(1), out_cmd.payload.bytes.eq(stats_words * WB)]
                    with m.If(out_cmd.ready):
                        m.next = "STATS"
                with m.State("STATS"):          # u64 k: a counter (k < 16) or tag word k - 16
                    lines = self._cache_geom.lines
                    tag_addr = Signal(range(max(lines, 2)))      # registered: k's subtract and compare
                    m.d.sync += tag_addr.eq(Mux(k >= 16, k - 16, 0)[:max(1, (lines - 1).bit_length())]
                                            if lines > 1 else 0)
                    m.d.comb += cache.tag_addr.eq(tag_addr)
                    value = Signal(64)
                    k_cnt = Signal()                # k < the counters, registered
                    k_tag = Signal()                # k a tag word, registered
                    m.d.sync += [k_cnt.eq(k < len(counters)), k_tag.eq((k >= 16) & (k < 16 + lines))]
                    with m.If(k_cnt):
                        with m.Switch(k[:4]):
                            for i, c in enumerate(counters):
                                with m.Case(i):
                                    m.d.comb += value.eq(c)
                    with m.If(k_tag):
                        m.d.comb += value.eq(cache.tag_word)
                    # value registered (the counter or tag word mux and k's compares were a 4.6 ns
                    # path into word): u64 k is taken three cycles after k is set (its tag address
                    # and compares are registered, a tag word follows its address by a cycle, then
                    # value)
                    value_r = Signal(64)
                    m.d.sync += value_r.eq(value)
                    with m.If(out_valid):
                        with m.If(out_data.ready):
                            m.d.sync += [out_valid.eq(0), sent.eq(sent + 1), word.eq(0)]
                            with m.If(sent == stats_words - 1):
                                m.next = "STATS_DONE"
                    with m.Elif(tag_wait != 3):
                        m.d.sync += tag_wait.eq(tag_wait + 1)
                    with m.Else():
                        m.d.sync += [tag_wait.eq(0), k.eq(k + 1), lane.eq(lane + 1)]
                        if per_word > 1:
                            m.d.sync += word.word_select(lane[:max(1, (per_word - 1).bit_length())], 64).eq(value_r)
                        else:
                            m.d.sync += word.eq(value_r)
                        with m.If(lane == per_word - 1):
                            m.d.sync += [out_valid.eq(1), lane.eq(0)]
                with m.State("STATS_DONE"):
                    m.d.comb += out_done.ready.eq(1)
                    with m.If(out_done.valid):
                        m.next = "DONE"
                with m.State("OMAP_WAIT"):       # the backing port passes to the map once the cache is quiet
                    with m.If(cache.idle):
                        m.d.sync += omap_owns.eq(1)
                        m.next = "OMAP"
            if omap is not None:
                with m.State("OMAP"):
                    m.d.comb += [omap.job.valid.eq(1), omap.job.payload.action.eq(job.action),
                                 omap.job.payload.ctrl_addr.eq(job.ctrl_addr), omap.job.payload.src_addr.eq(job.src_addr),
                                 omap.job.payload.dst_addr.eq(job.dst_addr), omap.job.payload.count.eq(job.count)]
                    with m.If(omap.job.ready):
                        m.next = "OMAP_RUN"
                with m.State("OMAP_RUN"):
                    wiring.connect(m, omap.wr_cmd, wiring.flipped(out_cmd))
                    wiring.connect(m, omap.wr_data, wiring.flipped(out_data))
                    wiring.connect(m, out_done, omap.wr_done)
                    m.d.comb += omap.done.ready.eq(1)
                    with m.If(omap.done.valid):
                        m.d.sync += [fault.eq(omap.fault), omap_owns.eq(0)]
                        m.next = "DONE"
            else:
                with m.State("OMAP"):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.error.eq(0), self.fault.eq(fault)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        m.d.comb += [self.busy.eq(~self.job.ready), self.mac_inc.eq(0),
                     self.stall.eq(omap.stall if omap is not None else 0)]
        return m
