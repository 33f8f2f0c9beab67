"""Testbench models for the shell: an AXI4 memory, an AXI4-Lite host and stream helpers.

Everything here runs inside ``amaranth.sim`` testbenches (Amaranth 0.5 async
API). The memory model adds random latency and random back-pressure on every
channel, may interleave read data of different IDs, and records every AXI
rule it sees broken (4 KiB crossing, burst length, size, alignment, IDs,
WLAST placement, VALID dropped or payload changed before its handshake).
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from sim_helpers import rejects

RESP_OKAY, RESP_SLVERR = 0, 2


class SparseMemory:
    """Byte-addressed memory of 4 KiB pages, zero where never written."""

    def __init__(self):
        self._pages: dict[int, bytearray] = {}

    def write(self, addr: int, data: bytes):
        data = bytes(data)
        i = 0
        while i < len(data):
            page, off = divmod(addr + i, 4096)
            n = min(4096 - off, len(data) - i)
            buf = self._pages.setdefault(page, bytearray(4096))
            buf[off:off + n] = data[i:i + n]
            i += n

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            page, off = divmod(addr + len(out), 4096)
            k = min(4096 - off, n - len(out))
            buf = self._pages.get(page)
            out += buf[off:off + k] if buf is not None else bytes(k)
        return bytes(out)

    def write_u64s(self, addr: int, values):
        self.write(addr, b"".join(int(v).to_bytes(8, "little") for v in values))


@dataclass
class _ReadBurst:
    ready_at: int
    addr: int
    beats: int
    resp: int
    sent: int = 0


@dataclass
class PortStats:
    ar_bursts: int = 0
    r_beats: int = 0
    aw_bursts: int = 0
    w_beats: int = 0
    b_resps: int = 0
    max_reads_in_flight: dict = field(default_factory=dict)     # per ID: bursts
    max_read_beats_in_flight: dict = field(default_factory=dict)
    first_r_cycle: int | None = None
    last_r_cycle: int | None = None
    last_b_cycle: int | None = None
    ar_log: list = field(default_factory=list)                  # (cycle, id, addr, beats)
    aw_log: list = field(default_factory=list)


class AxiMemoryPort:
    """AXI4 subordinate for one manager port, over a (possibly shared) :class:`SparseMemory`.

    ``stall`` is the probability, per channel and cycle, that a READY is low
    or that the next R/B beat is held back. Latencies are drawn uniformly
    from the given (min, max) ranges per burst.
    """

    def __init__(self, bus, mem: SparseMemory, *, data_width: int, max_burst_beats: int,
                 rng: random.Random | None = None, read_latency=(2, 12), write_latency=(2, 12),
                 stall: float = 0.25, arids=None, awids=None, error_ranges=(), interleave=True,
                 name="port"):
        self.bus, self.mem = bus, mem
        self.B = data_width // 8
        self.size = self.B.bit_length() - 1
        self.max_burst_beats = max_burst_beats
        self.rng = rng or random.Random(1)
        self.read_latency, self.write_latency = read_latency, write_latency
        self.stall = stall
        self.arids = None if arids is None else set(arids)
        self.awids = None if awids is None else set(awids)
        self.error_ranges = list(error_ranges)
        self.interleave = interleave
        self.name = name
        self.violations: list[str] = []
        self.stats = PortStats()
        self.now = 0

    # -- helpers ---------------------------------------------------------------------
    def _violation(self, text):
        if len(self.violations) < 50:
            self.violations.append(f"{self.name} cycle {self.now}: {text}")

    def _resp_for(self, addr, nbytes):
        for lo, hi in self.error_ranges:
            if addr < hi and lo < addr + nbytes:
                return RESP_SLVERR
        return RESP_OKAY

    def _check_burst(self, kind, ident, addr, length, size, burst, allowed):
        beats = length + 1
        if burst != 1:
            self._violation(f"{kind} burst type {burst} (INCR=1 required)")
        if size != self.size:
            self._violation(f"{kind} size {size}, expected {self.size} (full-width beats)")
        if addr % self.B:
            self._violation(f"{kind} address {addr:#x} not word aligned")
        if beats > self.max_burst_beats:
            self._violation(f"{kind} burst of {beats} beats > max {self.max_burst_beats}")
        if (addr % 4096) + beats * self.B > 4096:
            self._violation(f"{kind} burst at {addr:#x} of {beats} beats crosses 4 KiB")
        if allowed is not None and ident not in allowed:
            self._violation(f"{kind} ID {ident} not in {sorted(allowed)}")

    def _stalled(self):
        return self.rng.random() < self.stall

    # -- the model -------------------------------------------------------------------
    async def run(self, ctx):
        bus = self.bus
        reads: dict[int, deque] = {}
        r_cur = None                     # (id, burst) being presented
        aw_q: deque = deque()
        w_bursts: deque = deque()
        w_cur: list = []
        b_q: deque = deque()
        b_cur = None
        ar_pending = aw_pending = None   # payload seen with VALID and no READY
        w_pending = None
        sample_sigs = (bus.arvalid, bus.araddr, bus.arlen, bus.arsize, bus.arburst, bus.arid,
                       bus.rready, bus.awvalid, bus.awaddr, bus.awlen, bus.awsize, bus.awburst,
                       bus.awid, bus.wvalid, bus.wdata, bus.wstrb, bus.wlast, bus.bready)
        while True:
            arready = not self._stalled()
            awready = not self._stalled()
            wready = not self._stalled()
            if r_cur is None and not self._stalled():
                ready = [i for i, q in reads.items() if q and q[0].ready_at <= self.now]
                if ready:
                    if self.interleave:
                        ident = self.rng.choice(ready)
                    else:
                        ident = min(ready, key=lambda i: reads[i][0].ready_at)
                    r_cur = (ident, reads[ident][0])
            if b_cur is None and b_q and b_q[0][0] <= self.now and not self._stalled():
                b_cur = b_q.popleft()
            ctx.set(bus.arready, arready)
            ctx.set(bus.awready, awready)
            ctx.set(bus.wready, wready)
            if r_cur is not None:
                ident, bu = r_cur
                addr = bu.addr + bu.sent * self.B
                ctx.set(bus.rvalid, 1)
                ctx.set(bus.rid, ident)
                ctx.set(bus.rdata, int.from_bytes(self.mem.read(addr, self.B), "little"))
                ctx.set(bus.rresp, bu.resp)
                ctx.set(bus.rlast, bu.sent == bu.beats - 1)
            else:
                ctx.set(bus.rvalid, 0)
            if b_cur is not None:
                ctx.set(bus.bvalid, 1)
                ctx.set(bus.bid, b_cur[1])
                ctx.set(bus.bresp, b_cur[2])
            else:
                ctx.set(bus.bvalid, 0)

            (_, _, arvalid, araddr, arlen, arsize, arburst, arid, rready, awvalid, awaddr, awlen,
             awsize, awburst, awid, wvalid, wdata, wstrb, wlast, bready) = \
                await ctx.tick().sample(*sample_sigs)

            # AR
            payload = (araddr, arlen, arsize, arburst, arid)
            if ar_pending is not None and (not arvalid or payload != ar_pending):
                self._violation("AR changed or dropped before its handshake")
            ar_pending = None
            if arvalid:
                if arready:
                    self._check_burst("AR", arid, araddr, arlen, arsize, arburst, self.arids)
                    lat = self.rng.randint(*self.read_latency)
                    beats = arlen + 1
                    reads.setdefault(arid, deque()).append(
                        _ReadBurst(self.now + lat, araddr, beats, self._resp_for(araddr, beats * self.B)))
                    st = self.stats
                    st.ar_bursts += 1
                    st.ar_log.append((self.now, arid, araddr, beats))
                    q = reads[arid]
                    st.max_reads_in_flight[arid] = max(st.max_reads_in_flight.get(arid, 0), len(q))
                    inflight = sum(b.beats - b.sent for b in q)
                    st.max_read_beats_in_flight[arid] = max(
                        st.max_read_beats_in_flight.get(arid, 0), inflight)
                else:
                    ar_pending = payload
            # R
            if r_cur is not None and rready:
                ident, bu = r_cur
                bu.sent += 1
                self.stats.r_beats += 1
                if self.stats.first_r_cycle is None:
                    self.stats.first_r_cycle = self.now
                self.stats.last_r_cycle = self.now
                if bu.sent == bu.beats:
                    reads[ident].popleft()
                r_cur = None
            # AW
            payload = (awaddr, awlen, awsize, awburst, awid)
            if aw_pending is not None and (not awvalid or payload != aw_pending):
                self._violation("AW changed or dropped before its handshake")
            aw_pending = None
            if awvalid:
                if awready:
                    self._check_burst("AW", awid, awaddr, awlen, awsize, awburst, self.awids)
                    aw_q.append((awaddr, awlen + 1, awid))
                    self.stats.aw_bursts += 1
                    self.stats.aw_log.append((self.now, awid, awaddr, awlen + 1))
                else:
                    aw_pending = payload
            # W
            payload = (wdata, wstrb, wlast)
            if w_pending is not None and (not wvalid or payload != w_pending):
                self._violation("W changed or dropped before its handshake")
            w_pending = None
            if wvalid:
                if wready:
                    w_cur.append((wdata, wstrb))
                    self.stats.w_beats += 1
                    if wlast:
                        w_bursts.append(w_cur)
                        w_cur = []
                    elif len(w_cur) >= self.max_burst_beats:
                        self._violation(f"W burst of more than {self.max_burst_beats} beats without WLAST")
                        w_bursts.append(w_cur)
                        w_cur = []
                else:
                    w_pending = payload
            while aw_q and w_bursts:
                addr, beats, ident = aw_q.popleft()
                data = w_bursts.popleft()
                if len(data) != beats:
                    self._violation(f"W burst of {len(data)} beats (WLAST) for AW of {beats} at {addr:#x}")
                for i, (word, strb) in enumerate(data[:beats]):
                    if strb != (1 << self.B) - 1:
                        self._violation(f"partial WSTRB {strb:#x}")
                    raw = word.to_bytes(self.B, "little")
                    a = addr + i * self.B
                    old = bytearray(self.mem.read(a, self.B))
                    for j in range(self.B):
                        if strb >> j & 1:
                            old[j] = raw[j]
                    self.mem.write(a, bytes(old))
                lat = self.rng.randint(*self.write_latency)
                b_q.append((self.now + lat, ident, self._resp_for(addr, beats * self.B)))
            # B
            if b_cur is not None and bready:
                self.stats.b_resps += 1
                self.stats.last_b_cycle = self.now
                b_cur = None
            self.now += 1


class AxiLiteHost:
    """AXI4-Lite manager for the control slave: AW/W in random order, random BREADY/RREADY."""

    def __init__(self, bus, rng: random.Random | None = None, stall: float = 0.3):
        self.bus = bus
        self.rng = rng or random.Random(2)
        self.stall = stall

    async def _gap(self, ctx):
        while self.rng.random() < self.stall:
            await ctx.tick()

    async def write(self, ctx, addr: int, data: int, strb: int = 0xF):
        bus = self.bus
        await self._gap(ctx)
        order = self.rng.choice(["aw", "w", "both"])
        aw_done = w_done = False
        if order in ("aw", "both"):
            ctx.set(bus.awvalid, 1)
            ctx.set(bus.awaddr, addr)
        if order in ("w", "both"):
            ctx.set(bus.wvalid, 1)
            ctx.set(bus.wdata, data & 0xFFFF_FFFF)
            ctx.set(bus.wstrb, strb)
        while not (aw_done and w_done):
            _, _, awv, awr, wv, wr = await ctx.tick().sample(bus.awvalid, bus.awready,
                                                             bus.wvalid, bus.wready)
            if awv and awr:
                aw_done = True
                ctx.set(bus.awvalid, 0)
            if wv and wr:
                w_done = True
                ctx.set(bus.wvalid, 0)
            if not aw_done and not awv and self.rng.random() < 0.5:
                ctx.set(bus.awvalid, 1)
                ctx.set(bus.awaddr, addr)
            if not w_done and not wv and self.rng.random() < 0.5:
                ctx.set(bus.wvalid, 1)
                ctx.set(bus.wdata, data & 0xFFFF_FFFF)
                ctx.set(bus.wstrb, strb)
        while True:
            ready = self.rng.random() >= self.stall
            ctx.set(bus.bready, ready)
            _, _, bv, bresp = await ctx.tick().sample(bus.bvalid, bus.bresp)
            if bv and ready:
                break
        ctx.set(bus.bready, 0)
        assert bresp == 0, f"write {addr:#x}: BRESP {bresp}"

    async def read(self, ctx, addr: int) -> int:
        bus = self.bus
        await self._gap(ctx)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.araddr, addr)
        await ctx.tick().until(bus.arready)
        ctx.set(bus.arvalid, 0)
        while True:
            ready = self.rng.random() >= self.stall
            ctx.set(bus.rready, ready)
            _, _, rv, rdata, rresp = await ctx.tick().sample(bus.rvalid, bus.rdata, bus.rresp)
            if rv and ready:
                break
        ctx.set(bus.rready, 0)
        assert rresp == 0, f"read {addr:#x}: RRESP {rresp}"
        return rdata

    async def write64(self, ctx, addr, value):
        await self.write(ctx, addr, value & 0xFFFF_FFFF)
        await self.write(ctx, addr + 4, value >> 32)

    async def read64(self, ctx, addr):
        lo = await self.read(ctx, addr)
        hi = await self.read(ctx, addr + 4)
        return lo | hi << 32


async def stream_send(ctx, s, items, rng=None, stall=0.0, set_payload=None):
    """Send ``items`` on stream ``s`` (VALID held until READY), with random idle cycles."""
    rng = rng or random.Random(3)
    for item in items:
        while rng.random() < stall:
            ctx.set(s.valid, 0)
            await ctx.tick()
        if set_payload is not None:
            set_payload(ctx, s.payload, item)
        else:
            ctx.set(s.payload, item)
        ctx.set(s.valid, 1)
        await ctx.tick().until(s.ready)
    ctx.set(s.valid, 0)


async def stream_recv(ctx, s, count, rng=None, stall=0.0, out=None, stamps=None):
    """Receive ``count`` payloads from stream ``s`` with random READY; returns the list."""
    rng = rng or random.Random(4)
    out = [] if out is None else out
    cycle = 0
    while len(out) < count:
        ready = rng.random() >= stall
        ctx.set(s.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(s.valid, s.payload)
        if valid and ready:
            out.append(payload)
            if stamps is not None:
                stamps.append(cycle)
        cycle += 1
    ctx.set(s.ready, 0)
    return out


def set_dma_command(ctx, payload, item):
    addr, nbytes = item
    ctx.set(payload.addr, addr)
    ctx.set(payload.bytes, nbytes)


def assert_rejects(cls, kwargs, exc, match):
    """``cls(**kwargs)`` raises ``exc`` matching ``match`` (without an UnusedElaboratable warning)."""
    rejects(lambda: cls(**kwargs), exc, match)
